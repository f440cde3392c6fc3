"""End to end on each store: flows_core Engine + Worker, real asyncio, short polls.

These state the guarantees of DESIGN.md "What every adapter must pass" as runs: the
order example completes; an activity result is recorded exactly once even when a worker
is killed mid-activity (another finishes it once the lease expires); a terminal
workflow never runs again; no seq is scheduled twice; signals are consumed once, FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_cli.examples.order import (
    FakeServices,
    OrderIn,
    OrderOut,
    WarehouseConfirmation,
    new_activities,
    new_workflow,
)
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    Event,
    SignalWaitStarted,
    TimerFired,
    TimerStarted,
)
from flows_core.store import Store, WorkflowTaskCommit
from tests.contract.adapters import Adapter
from tests.contract.checks import (
    assert_history_invariants,
    assert_record_matches,
    resolutions_of,
)
from tests.contract.kit import StoreProxy

POLL = 0.02
TIMEOUT = 10.0  # real seconds for anything to finish


class FastTimers(StoreProxy):
    """The adapter's store, with every durable timer due at once when committed.

    The order example sleeps an hour; a real store runs on the wall clock, so this
    shim compresses time for timers only (TimerStarted keeps its recorded fire_at;
    the timer task fires at once). Everything else goes to the real store unchanged.
    """

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Any]:
        now = self._store.clock.now()
        timers = [msgspec.structs.replace(t, fire_at=min(t.fire_at, now)) for t in commit.timers]
        return await self._store.commit_workflow_task(
            msgspec.structs.replace(commit, timers=timers)
        )


@contextlib.asynccontextmanager
async def running(*workers: flows.Worker) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        yield tasks
    finally:
        for w in workers:
            await w.stop(grace_period=1.0)
        for t in tasks:
            if not t.done():
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


def worker(store: Any, **kw: Any) -> flows.Worker:
    kw.setdefault("poll_interval", POLL)
    kw.setdefault("concurrency", 4)
    return flows.Worker(store, **kw)


async def eventually(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = TIMEOUT
) -> Any:
    """Poll ``read()`` (real time) until ``ok(value)``; return the value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last: {value!r}")
        await asyncio.sleep(0.01)


async def result(run: flows.Run[Any]) -> Any:
    return await asyncio.wait_for(run.result(), TIMEOUT)


async def checked_history(store: Store, run: flows.Run[Any]) -> list[Event]:
    history = await store.get_history(run.tenant_id, run.workflow_id)
    assert_history_invariants(history)
    assert_record_matches(await store.get_workflow(run.tenant_id, run.workflow_id), history)
    return history


def kinds(history: list[Event], kind: type) -> list[Any]:
    return [e for e in history if isinstance(e, kind)]


# -- the order example --


async def test_order_example_ships(adapter: Adapter) -> None:
    store = FastTimers(adapter.store)
    svc = FakeServices()
    acts = new_activities(svc)
    order = new_workflow(acts)
    engine = flows.Engine(store, workflows=[order])  # type: ignore[arg-type]
    tenant = f"t-{adapter.ns}"
    async with running(worker(store, workflows=[order], activities=list(acts))):
        run = await engine.start(order, OrderIn("c1", ["book"], 100), tenant_id=tenant)
        await eventually(
            lambda: engine.history(run.workflow_id, tenant_id=tenant),
            lambda h: any(isinstance(e, SignalWaitStarted) for e in h),
        )
        await engine.signal(
            run.workflow_id, "warehouse-ready", WarehouseConfirmation("w7"), tenant_id=tenant
        )
        out = await result(run)
    assert isinstance(out, OrderOut)
    assert out.status == "shipped"
    assert out.charge_id == "ch-c1-100"
    assert out.tracking.startswith("track-")
    assert [c.split()[0] for c in svc.calls] == ["charge", "reserve", "ship"]
    history = await checked_history(adapter.store, run)
    assert len(kinds(history, ActivityScheduled)) == 3
    assert len(kinds(history, ActivityCompleted)) == 3
    assert len(kinds(history, TimerStarted)) == 1
    assert len(kinds(history, TimerFired)) == 1
    info = await engine.query(run.workflow_id, tenant_id=tenant)
    assert info.status == flows.WorkflowStatus.COMPLETED
    assert info.output["status"] == "shipped"


async def test_order_example_refunds_when_out_of_stock(adapter: Adapter) -> None:
    svc = FakeServices(out_of_stock={"gone"})
    acts = new_activities(svc)
    order = new_workflow(acts)
    engine = flows.Engine(adapter.store, workflows=[order])  # type: ignore[arg-type]
    tenant = f"t-{adapter.ns}"
    async with running(worker(adapter.store, workflows=[order], activities=list(acts))):
        run = await engine.start(order, OrderIn("c2", ["gone"], 50), tenant_id=tenant)
        out = await result(run)
    assert out.status == "refunded"
    assert [c.split()[0] for c in svc.calls] == ["charge", "reserve", "refund"]
    await checked_history(adapter.store, run)


async def test_order_example_cancelled_while_waiting_refunds_once(adapter: Adapter) -> None:
    svc = FakeServices()
    acts = new_activities(svc)
    order = new_workflow(acts)
    engine = flows.Engine(adapter.store, workflows=[order])  # type: ignore[arg-type]
    tenant = f"t-{adapter.ns}"
    async with running(worker(adapter.store, workflows=[order], activities=list(acts))):
        run = await engine.start(order, OrderIn("c3", ["a"], 70), tenant_id=tenant)
        await eventually(
            lambda: engine.history(run.workflow_id, tenant_id=tenant),
            lambda h: any(isinstance(e, SignalWaitStarted) for e in h),
        )
        outcome = await engine.cancel(run.workflow_id, reason="customer", tenant_id=tenant)
        assert outcome == flows.CancelOutcome.REQUESTED
        with pytest.raises(flows.WorkflowCancelled):
            await result(run)
    assert [c.split()[0] for c in svc.calls] == ["charge", "reserve", "refund"]
    await checked_history(adapter.store, run)


# -- crashes --


def blocking_first_call(name: str) -> tuple[flows.Activity[int, int], list[int], asyncio.Event]:
    """An activity whose first call hangs forever (a worker dies in it); later calls
    return ``2 * x``. Returns the activity, its call log, and an event set on entry."""
    calls: list[int] = []
    entered = asyncio.Event()

    @flows.activity(name)
    async def slow(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            entered.set()
            await asyncio.Event().wait()
        return 2 * x

    return slow, calls, entered


async def kill(w: flows.Worker, task: asyncio.Task[None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill a running worker as a crash would: its leases are NOT released."""
    with monkeypatch.context() as m:
        # a crash writes nothing: no release, and no record of the cut attempt
        for write in (
            "release",
            "retry_activity",
            "complete_activity",
            "fail_workflow_task",
            "park_workflow",
        ):
            m.setattr(w.store, write, _no_release)
        w.grace_period = 0.05
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _no_release(*_: Any) -> None:
    return None


async def test_worker_killed_in_an_inline_activity_is_finished_by_another(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = adapter.store
    slow, calls, entered = blocking_first_call(f"slow-{adapter.ns}")

    @flows.workflow(f"crashy-{adapter.ns}")
    async def crashy(ctx: flows.WorkflowContext, x: int) -> int:
        return await ctx.execute(slow, x) + 1

    engine = flows.Engine(store, workflows=[crashy])
    lease = timedelta(seconds=0.5)
    first = worker(store, workflows=[crashy], activities=[slow], lease=lease)
    first_task = asyncio.ensure_future(first.run())
    run = await engine.start(crashy, 20, tenant_id=f"t-{adapter.ns}")
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    await kill(first, first_task, monkeypatch)
    assert first.counters["commits"] == 0

    second = worker(store, workflows=[crashy], activities=[slow], lease=lease)
    async with running(second):
        await adapter.pass_time(0.6)  # the dead worker's lease expires
        assert await result(run) == 41
    assert calls == [20, 20], "run at least once more after the crash"
    history = await checked_history(store, run)
    assert len(kinds(history, ActivityScheduled)) == 1
    assert len(resolutions_of(history, 1)) == 1, "recorded exactly once"


async def test_activity_worker_killed_mid_activity_is_finished_by_another(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue path: the workflow's worker does not serve the activity."""
    store = adapter.store
    slow, calls, entered = blocking_first_call(f"slow-{adapter.ns}")

    @flows.workflow(f"queued-{adapter.ns}")
    async def queued(ctx: flows.WorkflowContext, x: int) -> int:
        a = await ctx.execute(slow, x)
        return a + 1

    engine = flows.Engine(store, workflows=[queued])
    lease = timedelta(seconds=0.5)
    decider = worker(store, workflows=[queued])
    doomed = worker(store, activities=[slow], lease=lease)
    async with running(decider):
        doomed_task = asyncio.ensure_future(doomed.run())
        run = await engine.start(queued, 5, tenant_id=f"t-{adapter.ns}")
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        await kill(doomed, doomed_task, monkeypatch)
        rescuer = worker(store, activities=[slow], lease=lease)
        async with running(rescuer):
            await adapter.pass_time(0.6)
            assert await result(run) == 11
    assert calls == [5, 5]
    history = await checked_history(store, run)
    assert len(kinds(history, ActivityScheduled)) == 1
    completed = resolutions_of(history, 1)
    assert len(completed) == 1, "recorded exactly once"
    assert isinstance(completed[0], ActivityCompleted)


# -- terminal, seqs, signals --


async def test_a_finished_workflow_never_runs_again(adapter: Adapter) -> None:
    store = adapter.store
    runs: list[int] = []

    @flows.activity(f"echo-{adapter.ns}")
    async def echo(x: int) -> int:
        return x

    @flows.workflow(f"once-{adapter.ns}")
    async def once(ctx: flows.WorkflowContext, x: int) -> int:
        runs.append(x)
        return await ctx.execute(echo, x)

    engine = flows.Engine(store, workflows=[once])
    tenant = f"t-{adapter.ns}"
    w = worker(store, workflows=[once], activities=[echo])
    async with running(w):
        run = await engine.start(once, 3, tenant_id=tenant)
        assert await result(run) == 3
        executions = len(runs)
        before = await checked_history(store, run)
        with pytest.raises(flows.WorkflowNotRunning):
            await engine.signal(run.workflow_id, "late", 1, tenant_id=tenant)
        assert await engine.cancel(run.workflow_id, tenant_id=tenant) == (
            flows.CancelOutcome.ALREADY_FINISHED
        )
        await adapter.pass_time(0.2)
        await asyncio.sleep(0.2)  # the worker keeps polling meanwhile
        commits = w.counters["commits"]
    assert len(runs) == executions, "the workflow code ran again after it finished"
    assert commits == w.counters["commits"]
    after = await checked_history(store, run)
    assert len(after) == len(before)
    assert (await store.get_workflow(tenant, run.workflow_id)).status == (
        flows.WorkflowStatus.COMPLETED
    )


async def test_two_workers_signals_fifo_no_seq_scheduled_twice(adapter: Adapter) -> None:
    store = adapter.store
    executed: list[int] = []

    @flows.activity(f"double-{adapter.ns}")
    async def double(x: int) -> int:
        executed.append(x)
        await asyncio.sleep(0.002)
        return 2 * x

    @flows.workflow(f"collector-{adapter.ns}")
    async def collector(ctx: flows.WorkflowContext, n: int) -> list[int]:
        got: list[int] = []
        for _ in range(n):
            value = await ctx.wait_for_signal("item", int)
            got.append(await ctx.execute(double, value))
        return got

    engine = flows.Engine(store, workflows=[collector])
    tenant = f"t-{adapter.ns}"
    n = 8
    workers = [worker(store, workflows=[collector], activities=[double]) for _ in range(2)]
    async with running(*workers):
        runs = [await engine.start(collector, n, tenant_id=tenant) for _ in range(2)]
        for i in range(n):
            for r in runs:
                await engine.signal(r.workflow_id, "item", i, tenant_id=tenant)
            await asyncio.sleep(0.003 * (i % 3))
        outs = [await result(r) for r in runs]
    for out in outs:
        assert out == [2 * i for i in range(n)], "signals consumed once each, in order"
    for r in runs:
        history = await checked_history(store, r)
        assert len(kinds(history, ActivityScheduled)) == n
        assert len(kinds(history, SignalWaitStarted)) == n
        assert len(kinds(history, ActivityCompleted)) == n
    assert sorted(executed) == sorted(list(range(n)) * 2), "each activity ran exactly once"
