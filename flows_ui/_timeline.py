"""A workflow's history as a timeline and a table of steps (pure; no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from flows_core import ErrorInfo
from flows_core.events import (
    DEADLINE_SEQ,
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    PatchMarker,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
    WorkflowTerminatedEvent,
    event_summary,
)

__all__ = ["MAX_INLINE_CHARS", "Step", "Timeline", "TimelineEntry", "build_timeline", "pretty"]

MAX_INLINE_CHARS = 200_000
"""Longer payloads are cut in the page (the raw JSON link has them whole)."""


def pretty(raw: msgspec.Raw | bytes | None, limit: int = MAX_INLINE_CHARS) -> str:
    """Indented JSON text of a stored payload, cut to ``limit`` characters."""
    if raw is None:
        return ""
    data = bytes(raw)
    try:
        text = msgspec.json.format(data, indent=2).decode("utf-8", "replace")
    except msgspec.DecodeError:
        text = data.decode("utf-8", "replace")
    if len(text) > limit:
        return text[:limit] + f"\n... ({len(text) - limit} more characters)"
    return text


@dataclass(frozen=True)
class TimelineEntry:
    """One history event, ready to render."""

    position: int
    at: datetime
    since_start: timedelta
    kind: str
    """A CSS class: workflow, activity, timer, signal, side-effect, cancel, failure."""
    label: str
    summary: str
    seq: int | None = None
    duration: timedelta | None = None
    """For a resolution (activity result, timer fired): time since its command."""
    attempts: int | None = None
    payload: str | None = None
    error: ErrorInfo | None = None


@dataclass
class Step:
    """One step of the workflow (by seq) with its outcome so far."""

    seq: int
    kind: str
    """activity, timer, signal wait, deadline, side effect."""
    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str = "pending"
    attempts: int | None = None
    detail: str = ""

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def open(self) -> bool:
        return self.ended_at is None


@dataclass
class Timeline:
    entries: list[TimelineEntry] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    started: WorkflowStarted | None = None

    @property
    def open_steps(self) -> list[Step]:
        return [s for s in self.steps if s.open]


_LABELS: dict[type, tuple[str, str]] = {
    WorkflowStarted: ("workflow", "Workflow started"),
    ActivityScheduled: ("activity", "Activity scheduled"),
    ActivityCompleted: ("activity", "Activity completed"),
    ActivityFailedEvent: ("failure", "Activity failed"),
    TimerStarted: ("timer", "Timer started"),
    TimerFired: ("timer", "Timer fired"),
    SignalWaitStarted: ("signal", "Waiting for signal"),
    SignalReceived: ("signal", "Signal received"),
    SideEffectRecorded: ("side-effect", "Side effect"),
    StepCancelled: ("cancel", "Step cancelled"),
    CancelRequested: ("cancel", "Cancel requested"),
    WorkflowCompleted: ("workflow", "Workflow completed"),
    WorkflowFailedEvent: ("failure", "Workflow failed"),
    WorkflowCancelledEvent: ("cancel", "Workflow cancelled"),
    WorkflowTerminatedEvent: ("failure", "Workflow terminated"),
    PatchMarker: ("side-effect", "Patch: new path"),
}


_ENDINGS = (WorkflowCompleted, WorkflowFailedEvent, WorkflowCancelledEvent, WorkflowTerminatedEvent)


class _Builder:
    def __init__(self) -> None:
        self.timeline = Timeline()
        self.steps: dict[int, Step] = {}
        self.open_waits: dict[str, deque[Step]] = {}
        self.buffered: dict[str, int] = {}

    def add(self, position: int, event: Event) -> None:
        start = self.timeline.started.at if self.timeline.started else event.at
        kind, label = _LABELS.get(type(event), ("workflow", type(event).__name__))
        seq: int | None = getattr(event, "seq", None)
        duration = attempts = payload = error = None
        match event:
            case WorkflowStarted():
                self.timeline.started = event
                start = event.at
                payload = pretty(event.input)
            case ActivityScheduled():
                payload = pretty(event.input)
                self._open(event.seq, "activity", event.name, event.at)
            case ActivityCompleted():
                attempts = event.attempt
                payload = pretty(event.output)
                duration = self._close(event.seq, event.at, "completed", attempts)
            case ActivityFailedEvent():
                attempts, error = event.error.attempts, event.error
                duration = self._close(event.seq, event.at, "failed", attempts, str(event.error))
            case TimerStarted() if event.seq == DEADLINE_SEQ:
                label = "Execution deadline set"
                self._open(event.seq, "deadline", "execution timeout", event.at)
                self.steps[event.seq].detail = f"until {_clock_time(event.fire_at)}"
            case TimerStarted():
                self._open(event.seq, "timer", f"until {_clock_time(event.fire_at)}", event.at)
            case TimerFired():
                step = self.steps.get(event.seq)
                if step is not None and step.kind == "signal wait":
                    label, kind = "Signal wait timed out", "signal"
                    self._forget_wait(step)
                    duration = self._close(event.seq, event.at, "timed out")
                else:
                    duration = self._close(event.seq, event.at, "fired")
            case SignalWaitStarted():
                step = self._open(event.seq, "signal wait", event.name, event.at)
                if self.buffered.get(event.name, 0):
                    self.buffered[event.name] -= 1
                    self._close(event.seq, event.at, "received (buffered)")
                else:
                    self.open_waits.setdefault(event.name, deque()).append(step)
            case SignalReceived():
                payload = pretty(event.payload)
                waits = self.open_waits.get(event.name)
                if waits:
                    step = waits.popleft()
                    duration = self._close(step.seq, event.at, "received")
                else:
                    self.buffered[event.name] = self.buffered.get(event.name, 0) + 1
            case SideEffectRecorded():
                self._open(event.seq, "side effect", f"{event.kind}()", event.at)
                self._close(event.seq, event.at, "recorded", detail=event.value)
            case StepCancelled():
                step = self.steps.get(event.seq)
                if step is not None:
                    self._forget_wait(step)
                duration = self._close(event.seq, event.at, "cancelled", detail=event.reason)
            case WorkflowCompleted():
                payload = pretty(event.output)
            case WorkflowFailedEvent():
                error = event.error
            case WorkflowCancelledEvent():
                error = event.error
                payload = pretty(event.output)
            case _:
                pass
        if isinstance(event, _ENDINGS):
            for step in self.timeline.open_steps:  # an ended workflow drops what it waited on
                self._forget_wait(step)
                self._close(step.seq, event.at, "dropped", detail="the workflow ended")
        self.timeline.entries.append(
            TimelineEntry(
                position=position,
                at=event.at,
                since_start=event.at - start,
                kind=kind,
                label=label,
                summary=event_summary(event),
                seq=seq,
                duration=duration,
                attempts=attempts,
                payload=payload,
                error=error,
            )
        )

    def _open(self, seq: int, kind: str, name: str, at: datetime) -> Step:
        step = Step(seq=seq, kind=kind, name=name, started_at=at)
        self.steps[seq] = step
        self.timeline.steps.append(step)
        return step

    def _close(
        self,
        seq: int,
        at: datetime,
        outcome: str,
        attempts: int | None = None,
        detail: str = "",
    ) -> timedelta | None:
        step = self.steps.get(seq)
        if step is None or not step.open:
            return None
        step.ended_at, step.outcome, step.attempts = at, outcome, attempts
        if detail:
            step.detail = detail
        return step.duration

    def _forget_wait(self, step: Step) -> None:
        waits = self.open_waits.get(step.name)
        if waits and step in waits:
            waits.remove(step)


def _clock_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def build_timeline(events: list[Event]) -> Timeline:
    """The timeline of ``events`` (a whole history, position = index + 1) and its steps.

    Activities get their attempts and durations (ActivityScheduled to its result), timers
    their wait, signal waits are matched to signals first-in first-out per name (the
    delivery rule of ``wait_for_signal``; a signal sent before the wait is buffered).
    """
    builder = _Builder()
    for position, event in enumerate(events, start=1):
        builder.add(position, event)
    return builder.timeline
