"""Where the Engine and the Worker call their observer: the trace context stamped into
every start (eager ones and reruns too), workflows ended by the Engine (terminate, cancel
of a dead letter) reported once, the Worker's calls, and a failed read of a queued
attempt's trace context."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import flows_core as flows
from flows_core._observe import (
    ActivityAttempt,
    AttemptOutcome,
    TaskKind,
    TaskOutcome,
    TraceContext,
    WorkflowTask,
)
from flows_core.events import WorkflowStarted
from flows_core.store import WorkflowStatus
from flows_memory import MemoryStore

from .harness import eventually

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Recorder(flows.Observer):
    """Records every call (a real observer: the hooks' own timing and settling run)."""

    wants_trace_context = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.tasks: list[WorkflowTask] = []
        self.attempts: list[ActivityAttempt] = []

    def inject(self) -> TraceContext | None:
        return {"traceparent": TRACEPARENT}

    def workflow_task_ended(self, task: WorkflowTask, seconds: float) -> None:
        self.tasks.append(task)

    def activity_attempt_ended(self, attempt: ActivityAttempt, seconds: float) -> None:
        self.attempts.append(attempt)

    def workflow_started(self, workflow_name: str, tenant_id: str) -> None:
        self.calls.append(("started", workflow_name, tenant_id))

    def workflow_finished(self, workflow_name: str, tenant_id: str, status: WorkflowStatus) -> None:
        self.calls.append(("finished", workflow_name, tenant_id, status))

    def workflow_parked(self, workflow_name: str, tenant_id: str, error: flows.ErrorInfo) -> None:
        self.calls.append(("parked", workflow_name, error.type))

    def lease_lost(self, kind: TaskKind, workflow_name: str) -> None:
        self.calls.append(("lease_lost", kind, workflow_name))

    def store_error(self, operation: str) -> None:
        self.calls.append(("store_error", operation))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


@flows.activity("wiring-echo")
async def echo(value: str) -> str:
    return value


@flows.workflow("wiring-waits")
async def waits(ctx: flows.WorkflowContext, _: None) -> str:
    return await ctx.wait_for_signal("go", str)


@flows.workflow("wiring-illegal")
async def illegal(ctx: flows.WorkflowContext, _: None) -> None:
    await asyncio.sleep(0)  # not a Flows step: parked at once


@flows.workflow("wiring-echo")
async def echoes(ctx: flows.WorkflowContext, value: str) -> str:
    return await ctx.execute(echo, value)


async def started_event(engine: flows.Engine, workflow_id: str) -> WorkflowStarted:
    first = (await engine.history(workflow_id))[0]
    assert isinstance(first, WorkflowStarted)
    return first


async def test_terminate_and_cancel_of_a_dead_letter_are_reported_once() -> None:
    store = MemoryStore()
    observer = Recorder()
    engine = flows.Engine(store, observer=observer)
    worker = flows.Worker(store, workflows=[waits, illegal], poll_interval=0.02)
    running = asyncio.ensure_future(worker.run())
    try:
        run = await engine.start(waits, None)
        parked = await engine.start(illegal, None)

        async def is_parked() -> bool:
            return (await engine.query(parked.workflow_id)).status == WorkflowStatus.PARKED

        await eventually(is_parked)
        assert await engine.terminate(run.workflow_id) == flows.TerminateOutcome.TERMINATED
        assert await engine.terminate(run.workflow_id) == flows.TerminateOutcome.ALREADY_FINISHED
        assert await engine.cancel(parked.workflow_id) == flows.CancelOutcome.CANCELLED
        assert await engine.cancel(parked.workflow_id) == flows.CancelOutcome.ALREADY_FINISHED
    finally:
        await worker.stop()
        await running
    assert observer.of("finished") == [
        ("finished", "wiring-waits", "default", WorkflowStatus.TERMINATED),
        ("finished", "wiring-illegal", "default", WorkflowStatus.CANCELLED),
    ]
    assert observer.of("started") == [
        ("started", "wiring-waits", "default"),
        ("started", "wiring-illegal", "default"),
    ]


async def test_starts_reruns_and_eager_starts_store_the_trace_context() -> None:
    store = MemoryStore()
    observer = Recorder()
    eager = flows.EagerStarts()
    engine = flows.Engine(store, observer=observer, eager=eager)
    worker = flows.Worker(
        store,
        workflows=[echoes],
        activities=[echo],
        poll_interval=0.02,
        eager=eager,
        observer=observer,
    )
    running = asyncio.ensure_future(worker.run())
    try:
        await eventually(lambda: worker.running)
        run = await engine.start(echoes, "hi")
        assert await run.result(timeout=20) == "hi"
        assert worker.counters["eager_starts"] == 1  # it went the eager way
        again = await engine.rerun(run.workflow_id)
        assert await again.result(timeout=20) == "hi"
    finally:
        await worker.stop()
        await running
    for workflow_id in (run.workflow_id, again.workflow_id):
        started = await started_event(engine, workflow_id)
        assert started.trace_context == {"traceparent": TRACEPARENT}
    assert observer.of("started") == [("started", "wiring-echo", "default")] * 2
    assert (
        observer.of("finished")
        == [("finished", "wiring-echo", "default", WorkflowStatus.COMPLETED)] * 2
    )
    # The worker handed the stored context to each task and to each inline attempt.
    assert observer.tasks
    assert all(t.trace_context == started.trace_context for t in observer.tasks)
    assert [(a.activity_name, a.inline, a.outcome) for a in observer.attempts] == [
        ("wiring-echo", True, AttemptOutcome.OK)
    ] * 2
    assert {t.outcome for t in observer.tasks} == {TaskOutcome.COMMITTED}


async def test_a_dead_letter_is_reported_by_the_worker() -> None:
    store = MemoryStore()
    observer = Recorder()
    engine = flows.Engine(store)
    worker = flows.Worker(store, workflows=[illegal], poll_interval=0.02, observer=observer)
    running = asyncio.ensure_future(worker.run())
    try:
        run = await engine.start(illegal, None)

        async def is_parked() -> bool:
            return (await engine.query(run.workflow_id)).status == WorkflowStatus.PARKED

        await eventually(is_parked)
    finally:
        await worker.stop()
        await running
    assert observer.of("parked") == [("parked", "wiring-illegal", "IllegalAwaitError")]
    assert [t.outcome for t in observer.tasks] == [TaskOutcome.PARKED]
    assert observer.of("started") == []  # that Engine had no observer


class HistoryFailsOnce(MemoryStore):
    """A MemoryStore whose next ``get_history`` fails (an outage during that read)."""

    failing = False

    async def get_history(self, tenant_id: str, workflow_id: str, *, tx: Any = None) -> Any:
        if self.failing:
            self.failing = False
            raise ConnectionError("injected failure of get_history")
        return await super().get_history(tenant_id, workflow_id, tx=tx)


async def test_a_queued_attempt_runs_untraced_when_its_context_cannot_be_read() -> None:
    store = HistoryFailsOnce()
    observer = Recorder()
    engine = flows.Engine(store, observer=observer)
    # The workflow's worker does not run the activity: it goes through the queue, to a
    # worker that never ran a task of this workflow (it must read the trace context).
    workflows = flows.Worker(store, workflows=[echoes], poll_interval=0.02)
    activities = flows.Worker(store, activities=[echo], poll_interval=0.02, observer=observer)
    store.failing = True
    runs = [asyncio.ensure_future(w.run()) for w in (workflows, activities)]
    try:
        run = await engine.start(echoes, "queued")
        assert await run.result(timeout=20) == "queued"
    finally:
        for w in (workflows, activities):
            await w.stop()
        await asyncio.gather(*runs)
    assert observer.of("store_error") == [("store_error", "get_history")]
    [attempt] = observer.attempts
    assert (attempt.inline, attempt.trace_context, attempt.outcome) == (
        False,
        None,
        AttemptOutcome.OK,
    )


def test_engine_and_worker_take_only_observers() -> None:
    store = MemoryStore()
    with pytest.raises(flows.InvalidArgument, match=r"observer must be a flows\.Observer"):
        flows.Engine(store, observer="prometheus")  # type: ignore[arg-type]
    with pytest.raises(flows.InvalidArgument, match=r"observer must be a flows\.Observer"):
        flows.Worker(store, workflows=[waits], observer=object())  # type: ignore[arg-type]
