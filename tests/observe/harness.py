"""Drive observers where the Engine and the Worker call them, against a real store, one
call at a time (tests/observe/test_end_to_end.py runs the real Engine and Worker).

``ObservedClient.start`` is what ``Engine.start`` does; ``ObservedWorker`` claims tasks
from the store and runs them inside the observer's blocks the way the Worker's
workflow-task and activity runners do, committing through the public store protocol.
Histories are round-tripped through the stored JSON form (as PostgreSQL keeps them), so
the trace context really travels through a store, and a new ``ObservedWorker`` (a new
process after a crash) knows nothing but what the store gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

import msgspec
import uuid6

from flows_core._errors import ErrorInfo, LeaseLost
from flows_core._observe import (
    ActivityAttempt,
    AttemptOutcome,
    Observer,
    TaskOutcome,
    TraceContexts,
    WorkflowTask,
    trace_context_of,
    with_trace_context,
)
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    Event,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
    decode_events,
    encode_event,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    ActivityTaskSpec,
    ClaimRequest,
    NewWorkflow,
    Store,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

__all__ = ["ObservedClient", "ObservedWorker", "Step", "commit", "schedule", "stored_form"]

LEASE = timedelta(seconds=30)


def stored_form(history: Sequence[Event]) -> list[Event]:
    """``history`` as it comes back from a store that keeps JSON (PostgreSQL)."""
    return decode_events(b"[" + b",".join(encode_event(e) for e in history) + b"]")


class ObservedClient:
    """What ``Engine(observer=...).start`` does."""

    def __init__(self, store: Store, observer: Observer) -> None:
        self.store, self.observer = store, observer

    async def start(self, name: str, payload: Any = None, *, tenant_id: str = "default") -> str:
        workflow_id = str(uuid6.uuid7())
        started = WorkflowStarted(
            name=name,
            version=1,
            workflow_id=workflow_id,
            tenant_id=tenant_id,
            input=msgspec.Raw(msgspec.json.encode(payload)),
            seed=7,
            at=self.store.clock.now(),
        )
        new = NewWorkflow(
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            name=name,
            version=1,
            shard_key=f"{name}-shard-0",
            input=started.input,
            started=started,
        )
        with self.observer.workflow_start(name, tenant_id, workflow_id) as context:
            await self.store.start_workflow(with_trace_context(new, context))
        self.observer.workflow_started(name, tenant_id)
        return workflow_id


Step = Callable[[WorkflowTaskClaim], Awaitable[WorkflowTaskCommit | ErrorInfo]]
"""A workflow task's body: the commit to write, or the error that dead-letters it."""


class ObservedWorker:
    """A worker's task loop reduced to its observer calls."""

    def __init__(self, store: Store, observer: Observer, worker_id: str) -> None:
        self.store, self.observer, self.worker_id = store, observer, worker_id
        self.trace_contexts = TraceContexts()

    async def claim_workflow_task(self, name: str) -> WorkflowTaskClaim:
        [claim] = await self.store.claim(
            ClaimRequest(
                owner=self.worker_id,
                workflow_types=[(name, 1)],
                activity_names=[],
                limit=1,
                lease=LEASE,
            )
        )
        assert isinstance(claim, WorkflowTaskClaim)
        return msgspec.structs.replace(claim, history=stored_form(claim.history))

    async def claim_activity_task(self, activity: str) -> ActivityTaskClaim:
        [claim] = await self.store.claim(
            ClaimRequest(
                owner=self.worker_id,
                workflow_types=[],
                activity_names=[activity],
                limit=1,
                lease=LEASE,
            )
        )
        assert isinstance(claim, ActivityTaskClaim)
        return claim

    async def workflow_task(self, claim: WorkflowTaskClaim, step: Step) -> TaskOutcome:
        """Run ``step`` as a workflow task and write its commit (or park the workflow);
        returns the outcome observers saw. LeaseLost is handled as ``_process`` does."""
        wf = claim.workflow
        context = trace_context_of(claim.history)
        self.trace_contexts.remember(wf.tenant_id, wf.workflow_id, context)
        task = WorkflowTask(
            workflow_name=wf.name,
            workflow_id=wf.workflow_id,
            tenant_id=wf.tenant_id,
            attempt=claim.attempt,
            trace_context=context,
        )
        with contextlib.suppress(LeaseLost):
            try:
                with self.observer.workflow_task(task):
                    result = await step(claim)
                    if isinstance(result, ErrorInfo):
                        await self.store.park_workflow(claim.lease, result)
                        task.outcome = TaskOutcome.PARKED
                        self.observer.workflow_parked(wf.name, wf.tenant_id, result)
                    else:
                        await self.write(self.store.commit_workflow_task, result)
                        if result.status is not WorkflowStatus.RUNNING:
                            self.observer.workflow_finished(wf.name, wf.tenant_id, result.status)
            except LeaseLost:
                self.observer.lease_lost("workflow_task", wf.name)
                raise
        assert task.outcome is not None
        return task.outcome

    async def inline_activity(
        self, claim: WorkflowTaskClaim, name: str, seq: int, run: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run an activity inside the current workflow task, as the fast path does."""
        wf = claim.workflow
        attempt = ActivityAttempt(
            activity_name=name,
            workflow_name=wf.name,
            workflow_id=wf.workflow_id,
            tenant_id=wf.tenant_id,
            seq=seq,
            attempt=1,
            inline=True,
            trace_context=trace_context_of(claim.history),
        )
        with self.observer.activity_attempt(attempt):
            value = await run()
            attempt.record(None, retrying=False)
        return value

    async def queued_activity(
        self, claim: ActivityTaskClaim, run: Callable[[], Awaitable[Any]], *, max_attempts: int
    ) -> ActivityAttempt:
        """Run a claimed activity task and record its result or its retry."""
        lease = claim.lease
        context = None
        if self.observer.wants_trace_context:
            context = await self.trace_contexts.lookup(
                self.store, lease.tenant_id, lease.workflow_id
            )
        attempt = ActivityAttempt(
            activity_name=claim.activity_name,
            workflow_name=claim.workflow_name,
            workflow_id=lease.workflow_id,
            tenant_id=lease.tenant_id,
            seq=claim.seq,
            attempt=claim.attempt,
            inline=False,
            trace_context=context,
        )
        now = self.store.clock.now()
        with self.observer.activity_attempt(attempt):
            try:
                value = await run()
            except Exception as exc:
                error = ErrorInfo.from_exception(exc, attempts=claim.attempt)
                attempt.record(error, retrying=claim.attempt < max_attempts)
            else:
                attempt.record(None, retrying=False)
        if attempt.error is None:
            output = msgspec.Raw(msgspec.json.encode(value))
            event = ActivityCompleted(seq=claim.seq, output=output, attempt=claim.attempt, at=now)
            await self.write(self.store.complete_activity, ActivityResult(lease=lease, event=event))
        elif attempt.outcome is AttemptOutcome.RETRY:
            retry = ActivityRetry(
                lease=lease, next_attempt=claim.attempt + 1, visible_at=now, error=attempt.error
            )
            await self.write(self.store.retry_activity, retry)
        else:
            failed = ActivityFailedEvent(seq=claim.seq, error=attempt.error, at=now)
            await self.write(
                self.store.complete_activity, ActivityResult(lease=lease, event=failed)
            )
        return attempt

    async def write(self, call: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
        """``_write_fenced``: a store error is reported and the write tried once more."""
        try:
            return await call(request)
        except LeaseLost:
            raise
        except Exception:
            self.observer.store_error(call.__name__)
            return await call(request)


def schedule(claim: WorkflowTaskClaim, *names: str) -> list[ActivityScheduled]:
    """ActivityScheduled events for ``names``, from the workflow's next step on."""
    at = claim.history[-1].at
    return [
        ActivityScheduled(
            seq=claim.workflow.next_seq + i, name=n, input=msgspec.Raw(b"null"), at=at
        )
        for i, n in enumerate(names)
    ]


def commit(
    claim: WorkflowTaskClaim,
    events: list[Event],
    *,
    queued: Sequence[ActivityScheduled] = (),
    next_seq: int | None = None,
) -> WorkflowTaskCommit:
    """The commit of ``events`` (ending the workflow if the last one ends it)."""
    status, output, error = WorkflowStatus.RUNNING, None, None
    last = events[-1] if events else None
    if isinstance(last, WorkflowCompleted):
        status, output = WorkflowStatus.COMPLETED, last.output
    elif isinstance(last, WorkflowFailedEvent):
        status, error = WorkflowStatus.FAILED, last.error
    seqs = [e.seq for e in events if isinstance(e, ActivityScheduled)]
    if next_seq is None:
        next_seq = max(seqs) + 1 if seqs else claim.workflow.next_seq
    return WorkflowTaskCommit(
        lease=claim.lease,
        claimed_history_length=len(claim.history),
        expected_next_seq=claim.workflow.next_seq,
        next_seq=next_seq,
        events=events,
        status=status,
        output=output,
        error=error,
        activity_tasks=[
            ActivityTaskSpec(seq=e.seq, name=e.name, input=e.input, scheduled_at=e.at)
            for e in queued
        ],
    )


async def eventually(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    """Wait until ``await condition()`` (or ``condition()``) is true; fail after
    ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


class Faults:
    """A MemoryStore fault hook: fail the next ``count`` calls of one operation."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}

    def fail(self, op: str, count: int = 1) -> None:
        self.pending[op] = count

    def __call__(self, op: str, when: Literal["before", "after"]) -> None:
        if when == "before" and self.pending.get(op, 0) > 0:
            self.pending[op] -= 1
            raise ConnectionError(f"injected failure of {op}")
