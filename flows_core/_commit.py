"""The commit plan: the pure step from a workflow task's events to the store writes
that record them (no I/O). The worker builds one per commit; replay produced the events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from ._errors import ErrorInfo
from .events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    Event,
    SignalWaitStarted,
    StepCancelled,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailedEvent,
    WorkflowStarted,
)
from .store import (
    ActivityTaskSpec,
    ContinueAsNew,
    Lease,
    OutboxMessage,
    TimerTaskSpec,
    WorkflowStatus,
    WorkflowTaskCommit,
)

if TYPE_CHECKING:
    from ._replay import WorkflowInstance

__all__ = ["AttemptOutcome", "build_commit", "next_run", "resolution", "retry_spec"]


@dataclass
class AttemptOutcome:
    """How one activity attempt ended: an output, or an error (to retry after
    ``retry_in``, or final when it is None)."""

    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    retry_in: timedelta | None = None
    recorded: list[Event] | None = None
    """Set when the output was already recorded, in a transactional activity's own
    transaction: the inbox events that write moved into the history (inline), or []."""


def resolution(
    seq: int, attempt: int, outcome: AttemptOutcome, now: datetime
) -> ActivityCompleted | ActivityFailedEvent | None:
    """The event recording an attempt's outcome; None when it is to be retried."""
    if outcome.output is not None:
        return ActivityCompleted(seq=seq, output=outcome.output, attempt=attempt, at=now)
    if outcome.retry_in is not None:
        return None
    assert outcome.error is not None
    return ActivityFailedEvent(seq=seq, error=outcome.error, at=now)


def retry_spec(
    scheduled: ActivityScheduled, attempt: int, outcome: AttemptOutcome, now: datetime
) -> ActivityTaskSpec:
    """The queued task of an inline step whose attempt ``attempt`` failed and is to be
    retried (``outcome.retry_in`` set)."""
    assert outcome.retry_in is not None
    return ActivityTaskSpec(
        seq=scheduled.seq,
        name=scheduled.name,
        input=scheduled.input,
        attempt=attempt + 1,
        visible_at=now + outcome.retry_in,
        last_error=outcome.error,
        scheduled_at=scheduled.at,
    )


def build_commit(
    lease: Lease,
    history_length: int,
    expected_next_seq: int,
    next_seq: int,
    events: list[Event],
    retries: dict[int, ActivityTaskSpec] | None = None,
    *,
    keep_lease: timedelta | None = None,
    outbox: list[OutboxMessage] | None = None,
    status_value: msgspec.Raw | None = None,
    continue_as_new: ContinueAsNew | None = None,
) -> WorkflowTaskCommit:
    """Turn the events a workflow task produced into the store writes that record them."""
    retries = retries or {}
    resolved = {e.seq for e in events if isinstance(e, ActivityCompleted | ActivityFailedEvent)}
    cancelled = {e.seq for e in events if isinstance(e, StepCancelled)}
    activity_tasks: list[ActivityTaskSpec] = []
    timers: list[TimerTaskSpec] = []
    new_seqs: set[int] = set()
    status = WorkflowStatus.RUNNING
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    for e in events:
        match e:
            case ActivityScheduled():
                new_seqs.add(e.seq)
                if e.seq in resolved or e.seq in cancelled:
                    continue
                activity_tasks.append(
                    retries.get(e.seq)
                    or ActivityTaskSpec(seq=e.seq, name=e.name, input=e.input, scheduled_at=e.at)
                )
            case TimerStarted():
                new_seqs.add(e.seq)
                if e.seq not in cancelled:
                    timers.append(TimerTaskSpec(seq=e.seq, fire_at=e.fire_at))
            case SignalWaitStarted():
                new_seqs.add(e.seq)
                if e.timeout_at is not None and e.seq not in cancelled:
                    timers.append(TimerTaskSpec(seq=e.seq, fire_at=e.timeout_at))
            case WorkflowCompleted():
                status, output = WorkflowStatus.COMPLETED, e.output
            case WorkflowFailedEvent():
                status, error = WorkflowStatus.FAILED, e.error
            case WorkflowCancelledEvent():
                status, output, error = WorkflowStatus.CANCELLED, e.output, e.error
            case _:
                pass
    return WorkflowTaskCommit(
        lease=lease,
        claimed_history_length=history_length,
        expected_next_seq=expected_next_seq,
        next_seq=next_seq,
        keep_lease=keep_lease,
        events=events,
        status=status,
        output=output,
        error=error,
        activity_tasks=activity_tasks,
        timers=timers,
        drop_seqs=sorted(cancelled - new_seqs),
        outbox=outbox or [],
        status_value=status_value,
        continue_as_new=continue_as_new,
    )


def next_run(instance: WorkflowInstance, run_number: int, last: Event) -> ContinueAsNew | None:
    """The run that follows run ``run_number`` when ``last``, the last event a workflow
    task commits, ends it by continue-as-new (else None): its WorkflowStarted (the next
    run number, a seed derived from this run's, so a retried task decides the same) and
    what this run received and did not consume."""
    started = instance.started
    if not isinstance(last, WorkflowContinuedAsNew) or started is None:
        return None
    seed = random.Random(f"{started.seed}:{run_number}").getrandbits(63)
    first = WorkflowStarted(
        name=started.name,
        version=started.version,
        workflow_id=started.workflow_id,
        tenant_id=started.tenant_id,
        input=last.input,
        seed=seed,
        at=last.at,
        trace_context=started.trace_context,
        run_number=run_number + 1,
        parent=started.parent,
    )
    return ContinueAsNew(started=first, carried=instance.unconsumed())
