"""History events: the append-only record every workflow is replayed from.

Events are frozen msgspec structs in a tagged union (tag field ``type``). Payloads
(inputs, outputs, signal bodies) are kept as raw JSON (``msgspec.Raw``) so they are
decoded only into the type the code asks for. Events that carry a ``seq`` belong to
the step with that sequence number: a *command event* records that the workflow took
the step (ActivityScheduled, TimerStarted, SignalWaitStarted, SideEffectRecorded,
StepCancelled); a *resolution event* records its outcome (ActivityCompleted,
ActivityFailed, TimerFired). SignalReceived and CancelRequested come from outside.
PatchMarker records that the code took the new path of a ``ctx.patched`` check; it
takes no sequence number.

These events are a promise to every stored history (tests/golden replays histories
recorded by earlier code): add fields only as optional, with a default; never rename or
remove an event tag or a field; a new event type comes only with a new feature.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from ._errors import ErrorInfo

__all__ = [
    "ActivityCompleted",
    "ActivityFailedEvent",
    "ActivityScheduled",
    "CancelRequested",
    "ChildCancelRequested",
    "ChildEndStatus",
    "ChildSignalRequested",
    "ChildStartRequested",
    "ChildWorkflowEnded",
    "DEADLINE_SEQ",
    "Event",
    "PatchMarker",
    "SideEffectRecorded",
    "SignalReceived",
    "SignalWaitStarted",
    "StepCancelled",
    "TimerFired",
    "TimerStarted",
    "WorkflowCancelledEvent",
    "WorkflowCompleted",
    "WorkflowContinuedAsNew",
    "WorkflowFailedEvent",
    "WorkflowStarted",
    "WorkflowTerminatedEvent",
    "decode_event",
    "decode_events",
    "ParentClosePolicy",
    "ParentRef",
    "encode_event",
    "event_summary",
]


class _Base(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    at: datetime


class ParentRef(msgspec.Struct, frozen=True, kw_only=True):
    """The parent of a child workflow: where its completion notice goes (the parent's
    own tenant, id and shard key) and the parent's step (``seq``) that awaits it."""

    workflow_id: str
    shard_key: str
    seq: int


class WorkflowStarted(_Base, tag="workflow_started", frozen=True, omit_defaults=True):
    name: str
    version: int
    workflow_id: str
    tenant_id: str
    input: msgspec.Raw
    seed: int
    rerun_of: str | None = None
    """The workflow this one re-runs (``Engine.rerun``), if any."""
    execution_timeout: timedelta | None = None
    """``start(..., execution_timeout=)``: at ``at + execution_timeout`` the workflow is
    ended FAILED with a ``WorkflowTimeout`` error. Replay records the deadline as the
    reserved timer step #0 (TimerStarted seq 0, never taken by the code); its TimerFired
    ends the workflow."""
    trace_context: dict[str, str] | None = None
    """The caller's trace context at the start (W3C ``traceparent``/``tracestate``,
    written by the Engine's observer, e.g. ``flows_observe.otel``): every workflow task
    and activity attempt is traced as a descendant of it, in any worker, after any
    crash. None when the start was not traced."""
    parent: ParentRef | None = None
    """Set on a child workflow (``ctx.start_child``): its end is reported to this parent."""
    run_number: int = 1
    """Which run of the workflow id this is: 1, then one more after every
    ``ctx.continue_as_new`` (the run it continues is ``run_number - 1``)."""


class ActivityScheduled(_Base, tag="activity_scheduled", frozen=True):
    seq: int
    name: str
    input: msgspec.Raw


DEADLINE_SEQ: Final = 0
"""The reserved step of the execution deadline (see WorkflowStarted.execution_timeout)."""


class ActivityCompleted(_Base, tag="activity_completed", frozen=True):
    seq: int
    output: msgspec.Raw
    attempt: int = 1


class ActivityFailedEvent(_Base, tag="activity_failed", frozen=True):
    seq: int
    error: ErrorInfo


class TimerStarted(_Base, tag="timer_started", frozen=True):
    seq: int
    fire_at: datetime


class TimerFired(_Base, tag="timer_fired", frozen=True):
    seq: int


class SignalWaitStarted(_Base, tag="signal_wait_started", frozen=True):
    seq: int
    name: str
    timeout_at: datetime | None = None


class SignalReceived(_Base, tag="signal_received", frozen=True):
    name: str
    payload: msgspec.Raw
    signal_id: str


SideEffectKind = Literal["now", "random", "uuid7"]


class SideEffectRecorded(_Base, tag="side_effect", frozen=True):
    seq: int
    kind: SideEffectKind
    value: str


class StepCancelled(_Base, tag="step_cancelled", frozen=True):
    """A pending step was dropped: its timer or task removed (cancel, or a signal won)."""

    seq: int
    reason: str


class PatchMarker(_Base, tag="patch_marker", frozen=True):
    """``ctx.patched(patch_id)`` took the new path: recorded the first time the run checks
    ``patch_id``, at ``position``, the sequence number the next step of the code takes.
    A run without it took the old path (or had not reached the check yet)."""

    patch_id: str
    position: int


ParentClosePolicy = Literal["terminate", "cancel", "abandon"]


class ChildStartRequested(_Base, tag="child_start_requested", frozen=True):
    """Command: the workflow starts child workflow ``workflow_id`` (``ctx.start_child``).
    The start travels through the sender's outbox; the child's end comes back as a
    ChildWorkflowEnded with this ``seq``."""

    seq: int
    name: str
    version: int
    workflow_id: str
    input: msgspec.Raw
    parent_close_policy: ParentClosePolicy = "terminate"


class ChildSignalRequested(_Base, tag="child_signal_requested", frozen=True):
    """Command: the workflow signals its child ``workflow_id`` (delivered once)."""

    seq: int
    workflow_id: str
    name: str
    payload: msgspec.Raw


class ChildCancelRequested(_Base, tag="child_cancel_requested", frozen=True):
    """Command: the workflow asks its child ``workflow_id`` to cancel."""

    seq: int
    workflow_id: str
    reason: str = ""


ChildEndStatus = Literal["completed", "failed", "cancelled", "terminated"]


class ChildWorkflowEnded(_Base, tag="child_workflow_ended", frozen=True):
    """Resolution of a ChildStartRequested: how the child ended (from its completion
    notice, or ``failed`` when it could not be started)."""

    seq: int
    workflow_id: str
    status: ChildEndStatus
    output: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    """The child's output (completed), else null."""
    error: ErrorInfo | None = None


class CancelRequested(_Base, tag="cancel_requested", frozen=True):
    reason: str = ""


class WorkflowCompleted(_Base, tag="workflow_completed", frozen=True):
    output: msgspec.Raw


class WorkflowFailedEvent(_Base, tag="workflow_failed", frozen=True):
    error: ErrorInfo


class WorkflowCancelledEvent(_Base, tag="workflow_cancelled", frozen=True):
    error: ErrorInfo | None = None
    output: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    """What the workflow returned after the cancel request, if it returned (else null)."""


class WorkflowContinuedAsNew(_Base, tag="workflow_continued_as_new", frozen=True):
    """``ctx.continue_as_new(input)``: this run ended here and the next run of the same
    workflow id starts with ``input`` and a fresh history (its WorkflowStarted has the
    next ``run_number``). The last event of a continued run."""

    input: msgspec.Raw


class WorkflowTerminatedEvent(_Base, tag="workflow_terminated", frozen=True):
    """``Engine.terminate``: the workflow was ended at once, from outside; no code of it
    ran for this, its pending tasks, timers and inbox were dropped."""

    reason: str = ""


Event = (
    WorkflowStarted
    | ActivityScheduled
    | ActivityCompleted
    | ActivityFailedEvent
    | TimerStarted
    | TimerFired
    | SignalWaitStarted
    | SignalReceived
    | SideEffectRecorded
    | StepCancelled
    | PatchMarker
    | CancelRequested
    | WorkflowCompleted
    | WorkflowFailedEvent
    | WorkflowCancelledEvent
    | WorkflowTerminatedEvent
    | ChildStartRequested
    | ChildSignalRequested
    | ChildCancelRequested
    | ChildWorkflowEnded
    | WorkflowContinuedAsNew
)

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Event)
_list_decoder: Final = msgspec.json.Decoder(list[Event])


def encode_event(event: Event) -> bytes:
    """Encode one event to JSON bytes (the stored form)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Decode one stored event."""
    event: Event = _decoder.decode(data)
    return event


def decode_events(data: bytes | str) -> list[Event]:
    """Decode a JSON array of stored events."""
    return _list_decoder.decode(data)


def _short(raw: msgspec.Raw | None, limit: int = 80) -> str:
    if raw is None:
        return ""
    text = bytes(raw).decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event_summary(event: Event) -> str:
    """One readable line describing an event, for timelines and logs."""
    match event:
        case WorkflowStarted():
            limit = f" timeout={event.execution_timeout}" if event.execution_timeout else ""
            run = f" (run {event.run_number})" if event.run_number != 1 else ""
            return f"started {event.name} v{event.version}{run} input={_short(event.input)}{limit}"
        case ActivityScheduled():
            return f"#{event.seq} activity {event.name} scheduled input={_short(event.input)}"
        case ActivityCompleted():
            return (
                f"#{event.seq} activity completed (attempt {event.attempt}) "
                f"output={_short(event.output)}"
            )
        case ActivityFailedEvent():
            return f"#{event.seq} activity failed after {event.error.attempts}: {event.error}"
        case TimerStarted() if event.seq == DEADLINE_SEQ:
            return f"execution deadline {event.fire_at.isoformat()}"
        case TimerStarted():
            return f"#{event.seq} timer until {event.fire_at.isoformat()}"
        case TimerFired() if event.seq == DEADLINE_SEQ:
            return "execution deadline reached"
        case TimerFired():
            return f"#{event.seq} timer fired"
        case SignalWaitStarted():
            until = f" until {event.timeout_at.isoformat()}" if event.timeout_at else ""
            return f"#{event.seq} waiting for signal {event.name!r}{until}"
        case SignalReceived():
            return f"signal {event.name!r} received payload={_short(event.payload)}"
        case SideEffectRecorded():
            return f"#{event.seq} {event.kind}() = {event.value}"
        case StepCancelled():
            return f"#{event.seq} step cancelled ({event.reason})"
        case PatchMarker():
            return f"#{event.position} patch {event.patch_id!r}: new path"
        case ChildStartRequested():
            return (
                f"#{event.seq} child {event.name} v{event.version} {event.workflow_id!r} "
                f"started input={_short(event.input)}"
            )
        case ChildSignalRequested():
            return f"#{event.seq} signal {event.name!r} to child {event.workflow_id!r}"
        case ChildCancelRequested():
            return f"#{event.seq} cancel child {event.workflow_id!r}"
        case ChildWorkflowEnded():
            what = _short(event.output) if event.status == "completed" else str(event.error)
            return f"#{event.seq} child {event.workflow_id!r} {event.status}: {what}"
        case CancelRequested():
            return f"cancel requested{': ' + event.reason if event.reason else ''}"
        case WorkflowCompleted():
            return f"completed output={_short(event.output)}"
        case WorkflowFailedEvent():
            return f"failed: {event.error}"
        case WorkflowCancelledEvent():
            return "cancelled" + (f": {event.error}" if event.error else "")
        case WorkflowContinuedAsNew():
            return f"continued as new input={_short(event.input)}"
        case WorkflowTerminatedEvent():
            return "terminated" + (f": {event.reason}" if event.reason else "")
