"""Invariants every recorded workflow history must satisfy, whatever the adapter.

Reused by the contract suite, the property tests and the crash tests::

    from tests.contract.checks import assert_history_invariants, assert_record_matches

    history = await store.get_history(tenant, workflow_id)
    assert_history_invariants(history)
    assert_record_matches(await store.get_workflow(tenant, workflow_id), history)

Vocabulary (see ``flows_core.events``):

* a *command event* records that the workflow took step ``seq``: ActivityScheduled,
  TimerStarted, SignalWaitStarted, SideEffectRecorded. Replay allocates seqs 1, 2, 3...
  in the order the code takes steps, and every allocated seq gets its command event in
  the same commit, so command seqs appear in strictly increasing order, without gaps;
* a *resolution event* records the outcome of a step: ActivityCompleted /
  ActivityFailed (of an ActivityScheduled), TimerFired (of a TimerStarted, or of the
  timeout of a SignalWaitStarted that has one);
* StepCancelled drops a pending step (its task or timer is deleted in the same commit);
* terminal events: WorkflowCompleted / WorkflowFailed / WorkflowCancelled /
  WorkflowTerminated (written by terminate_workflow, from outside);
* the execution deadline (``start(..., execution_timeout=)``): the reserved step #0, a
  TimerStarted with seq 0 that the first workflow task records before any step of the
  code, resolved by a TimerFired with seq 0 when the deadline passes; the workflow then
  ends FAILED with error type WorkflowTimeout;
* *inbox events* come from outside the workflow's own decisions: SignalReceived,
  CancelRequested, and resolutions written by complete_activity / fire_due_timers.

Ordering rule (Store protocol): inbox events enter the history only when a workflow
task is claimed, after everything committed so far; commits append the code's
decisions. So an inbox event may legitimately follow a StepCancelled of its seq (a
timer fired, or a queued activity finished, while the task that dropped the step
ran), but nothing follows the terminal event: inbox events that arrive too late stay
in the inbox.

The checks only read the list; positions are implicit (event ``i`` is at position
``i + 1``), so a gap-free history is one whose stored positions map onto list indexes.
Each failed check raises ``AssertionError`` with the offending position and a readable
dump of the history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from flows_core.events import (
    DEADLINE_SEQ,
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
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
from flows_core.store import TERMINAL_STATUSES, WorkflowRecord, WorkflowStatus

__all__ = [
    "COMMAND_TYPES",
    "INBOX_TYPES",
    "RESOLUTION_TYPES",
    "TERMINAL_TYPES",
    "assert_append_only",
    "assert_history_invariants",
    "assert_record_matches",
    "command_events",
    "format_history",
    "resolutions_of",
]

COMMAND_TYPES = (ActivityScheduled, TimerStarted, SignalWaitStarted, SideEffectRecorded)
RESOLUTION_TYPES = (ActivityCompleted, ActivityFailedEvent, TimerFired)
TERMINAL_TYPES = (
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowCancelledEvent,
    WorkflowTerminatedEvent,
)

# Which command kinds each resolution may resolve.
_RESOLVES: dict[type, tuple[type, ...]] = {
    ActivityCompleted: (ActivityScheduled,),
    ActivityFailedEvent: (ActivityScheduled,),
    TimerFired: (TimerStarted, SignalWaitStarted),
}

INBOX_TYPES = (SignalReceived, CancelRequested, *RESOLUTION_TYPES)

_STATUS_OF: dict[type, WorkflowStatus] = {
    WorkflowCompleted: WorkflowStatus.COMPLETED,
    WorkflowFailedEvent: WorkflowStatus.FAILED,
    WorkflowCancelledEvent: WorkflowStatus.CANCELLED,
    WorkflowTerminatedEvent: WorkflowStatus.TERMINATED,
}


def format_history(history: Sequence[Event]) -> str:
    """One numbered line per event (position: summary), for assertion messages."""
    return "\n".join(f"  {i:>3}: {event_summary(e)}" for i, e in enumerate(history, start=1))


def _fail(history: Sequence[Event], position: int | None, message: str) -> AssertionError:
    where = f" at position {position}" if position is not None else ""
    return AssertionError(f"history invariant broken{where}: {message}\n{format_history(history)}")


def command_events(history: Sequence[Event]) -> dict[int, Event]:
    """The command event of each seq (assumes no seq is scheduled twice)."""
    return {e.seq: e for e in history if isinstance(e, COMMAND_TYPES)}


def resolutions_of(history: Sequence[Event], seq: int) -> list[Event]:
    """Every resolution event (ActivityCompleted/Failed, TimerFired) recorded for ``seq``."""
    return [e for e in history if isinstance(e, RESOLUTION_TYPES) and e.seq == seq]


def assert_history_invariants(
    history: Sequence[Event], *, contiguous_seqs: bool = True, terminal_last: bool = True
) -> None:
    """Assert the structural guarantees of one workflow's history.

    1. It is not empty, starts with WorkflowStarted, and has no other WorkflowStarted.
    2. No seq is scheduled twice: each seq has at most one command event (of any kind).
    3. Command seqs are positive and strictly increasing along the history; with
       ``contiguous_seqs`` (the default) they are exactly 1..n (replay gives every
       allocated seq its command event in the same commit).
    4. Every resolution follows a command event with the same seq, of a kind it can
       resolve (activity result -> ActivityScheduled; TimerFired -> TimerStarted, or a
       SignalWaitStarted with a timeout), and each seq has at most one resolution: an
       activity result is recorded exactly once, a timer fires once.
    5. Every StepCancelled follows the command of its seq, at most once per seq. (A
       resolution may still follow it: it raced the task that dropped the step.)
    6. At most one CancelRequested; signal ids are unique (a signal is never duplicated).
    7. At most one terminal event, and it is the last one (the workflow never runs
       again). ``terminal_last=False`` tolerates inbox events after it (a store that
       appends what arrives straight to the history), never a command, StepCancelled
       or a second terminal.
    8. The execution deadline: a TimerStarted with seq 0 (DEADLINE_SEQ) only if
       WorkflowStarted has an execution_timeout, then exactly once, before every other
       command, firing at ``started.at + execution_timeout``; it is outside the step
       seqs of rule 3 and is never cancelled. A TimerFired with seq 0 only after it.
       A terminal WorkflowFailed with error type WorkflowTimeout only after that
       TimerFired, and every WorkflowTimeout history has it.
    """
    if not history:
        raise _fail(history, None, "history is empty (WorkflowStarted must be at position 1)")
    if not isinstance(history[0], WorkflowStarted):
        raise _fail(history, 1, f"first event is {type(history[0]).__name__}, not WorkflowStarted")

    commands: dict[int, Event] = {}
    resolved: dict[int, int] = {}  # seq -> position of its resolution
    cancelled: dict[int, int] = {}  # seq -> position of its StepCancelled
    last_seq = 0
    cancels = 0
    signal_ids: Counter[str] = Counter()
    terminal_at: int | None = None
    started = history[0]
    deadline_fired = False

    for pos, event in enumerate(history, start=1):
        if isinstance(event, TimerStarted) and event.seq == DEADLINE_SEQ:
            if started.execution_timeout is None:
                raise _fail(history, pos, "an execution deadline without execution_timeout")
            if commands:
                raise _fail(history, pos, "the execution deadline is not the first command")
            if event.fire_at != started.at + started.execution_timeout:
                raise _fail(history, pos, f"execution deadline at {event.fire_at}")
            commands[DEADLINE_SEQ] = event
            continue
        if isinstance(event, TimerFired) and event.seq == DEADLINE_SEQ:
            if DEADLINE_SEQ not in commands:
                raise _fail(history, pos, "the execution deadline fired but was never set")
            if deadline_fired:
                raise _fail(history, pos, "the execution deadline fired twice")
            deadline_fired = True
            if terminal_at is not None and terminal_last:
                raise _fail(history, pos, f"TimerFired after the terminal event at {terminal_at}")
            continue
        if isinstance(event, StepCancelled) and event.seq == DEADLINE_SEQ:
            raise _fail(history, pos, "the execution deadline was cancelled")
        if (
            isinstance(event, WorkflowFailedEvent)
            and event.error.type == "WorkflowTimeout"
            and not deadline_fired
        ):
            raise _fail(history, pos, "WorkflowTimeout before the execution deadline fired")
        if pos > 1 and isinstance(event, WorkflowStarted):
            raise _fail(history, pos, "a second WorkflowStarted")
        if terminal_at is not None and (terminal_last or not isinstance(event, INBOX_TYPES)):
            raise _fail(
                history,
                pos,
                f"{type(event).__name__} after the terminal event at position {terminal_at}",
            )
        if isinstance(event, COMMAND_TYPES):
            seq = event.seq
            if seq in commands:
                raise _fail(
                    history,
                    pos,
                    f"seq {seq} scheduled twice ({type(commands[seq]).__name__} then "
                    f"{type(event).__name__})",
                )
            if seq <= 0:
                raise _fail(history, pos, f"non-positive seq {seq}")
            if seq <= last_seq:
                raise _fail(history, pos, f"seq {seq} taken after seq {last_seq}")
            if contiguous_seqs and seq != last_seq + 1:
                raise _fail(history, pos, f"seq {seq} follows seq {last_seq}: a gap")
            commands[seq] = event
            last_seq = seq
        elif isinstance(event, RESOLUTION_TYPES):
            seq = event.seq
            command = commands.get(seq)
            if command is None:
                raise _fail(
                    history, pos, f"{type(event).__name__} for seq {seq}, which was never taken"
                )
            allowed = _RESOLVES[type(event)]
            if not isinstance(command, allowed):
                raise _fail(
                    history,
                    pos,
                    f"{type(event).__name__} cannot resolve seq {seq} ({type(command).__name__})",
                )
            if isinstance(command, SignalWaitStarted) and command.timeout_at is None:
                raise _fail(history, pos, f"TimerFired for seq {seq}, a wait with no timeout")
            if seq in resolved:
                raise _fail(
                    history,
                    pos,
                    f"seq {seq} resolved twice (first at position {resolved[seq]})",
                )
            if isinstance(event, ActivityCompleted) and event.attempt < 1:
                raise _fail(history, pos, f"activity attempt {event.attempt} < 1")
            resolved[seq] = pos
        elif isinstance(event, StepCancelled):
            if event.seq not in commands:
                raise _fail(history, pos, f"StepCancelled for seq {event.seq}, never taken")
            if event.seq in cancelled:
                raise _fail(history, pos, f"seq {event.seq} cancelled twice")
            cancelled[event.seq] = pos
        elif isinstance(event, CancelRequested):
            cancels += 1
            if cancels > 1:
                raise _fail(history, pos, "a second CancelRequested")
        elif isinstance(event, SignalReceived):
            signal_ids[event.signal_id] += 1
            if signal_ids[event.signal_id] > 1:
                raise _fail(history, pos, f"signal {event.signal_id} recorded twice")
        elif isinstance(event, TERMINAL_TYPES):
            terminal_at = pos


def assert_record_matches(record: WorkflowRecord, history: Sequence[Event]) -> None:
    """The cached row agrees with the history it is derived from.

    history_length, next_seq (one past the last command seq), status (terminal iff the
    history has the matching terminal event), output of a completed workflow,
    cancel_requested (iff a CancelRequested is in the history, or still in the inbox).
    """
    assert record.history_length == len(history), (
        f"row says {record.history_length} events, history has {len(history)}"
    )
    seqs = [e.seq for e in history if isinstance(e, COMMAND_TYPES) and e.seq != DEADLINE_SEQ]
    expected_next = (max(seqs) + 1) if seqs else 1
    assert record.next_seq == expected_next, (
        f"row next_seq {record.next_seq}, history's last command seq + 1 is {expected_next}"
    )
    terminals = [e for e in history if isinstance(e, TERMINAL_TYPES)]
    last = terminals[-1] if terminals else None
    if last is not None:
        assert record.status == _STATUS_OF[type(last)], (
            f"history ends with {type(last).__name__}, row status is {record.status}"
        )
        if isinstance(last, WorkflowCompleted):
            assert record.output is not None
            assert msgspec.json.decode(record.output) == msgspec.json.decode(last.output)
    else:
        assert record.status not in TERMINAL_STATUSES, (
            f"row status {record.status} but the history has no terminal event"
        )
    has_cancel = any(isinstance(e, CancelRequested) for e in history)
    if has_cancel or record.inbox_length == 0:
        assert record.cancel_requested == has_cancel, (
            f"row cancel_requested={record.cancel_requested}, "
            f"CancelRequested in history={has_cancel}, inbox empty"
        )


def assert_append_only(before: Sequence[Event], after: Sequence[Event]) -> None:
    """``after`` is ``before`` plus zero or more events.

    The history only ever grows (start, workflow-task claims moving the inbox in,
    commits), so this holds between any two reads.
    """
    assert len(after) >= len(before), f"history shrank from {len(before)} to {len(after)}"
    for pos, (old, new) in enumerate(zip(before, after, strict=False), start=1):
        assert msgspec.json.encode(old) == msgspec.json.encode(new), (
            f"event at position {pos} changed: {event_summary(old)!r} -> {event_summary(new)!r}"
        )
