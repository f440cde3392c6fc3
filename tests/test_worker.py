"""Worker behaviour: graceful stop, sharding, tenancy of waits, per-step commits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

import flows_core as flows
from flows_core._sharding import fnv1a_32, shard_key
from flows_core.store import ClaimRequest, WorkflowTaskClaim
from flows_memory import MemoryStore, TestEnvironment


def test_fnv1a_32_matches_reference_vectors() -> None:
    assert fnv1a_32("") == 0x811C9DC5
    assert fnv1a_32("a") == 0xE40C292C
    assert fnv1a_32("foobar") == 0xBF9CF968
    assert flows.HashSharder().shards == 9
    assert shard_key("order", 4) == "order-shard-4"


def test_sharders_spread_or_group() -> None:
    by_id = flows.HashSharder(9)
    shards = {by_id.shard_for("wf", f"id-{i}", "t") for i in range(200)}
    assert shards == set(range(9))
    by_tenant = flows.TenantSharder(9)
    assert {by_tenant.shard_for("wf", f"id-{i}", "acme") for i in range(50)} == {
        fnv1a_32("acme") % 9
    }
    with pytest.raises(flows.InvalidArgument):
        flows.HashSharder(0)


async def test_changing_shard_count_strands_nothing() -> None:
    @flows.workflow("resharded")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        return await ctx.wait_for_signal("go", str)

    store = MemoryStore()
    old = flows.Engine(store, sharder=flows.HashSharder(3))
    runs = [await old.start(wf, None) for _ in range(12)]
    new = flows.Engine(store, sharder=flows.HashSharder(16))
    worker = flows.Worker(store, workflows=[wf], poll_interval=0.02)
    task = asyncio.ensure_future(worker.run())
    try:
        for run in runs:
            await new.signal(run.workflow_id, "go", "ok")
        for run in runs:
            assert await new.wait_for_result(run.workflow_id, timeout=5) == "ok"
            info = await store.get_workflow("default", run.workflow_id)
            assert info.shard_key.startswith("resharded-shard-")
            assert int(info.shard_key.rsplit("-", 1)[1]) < 3
    finally:
        await worker.stop()
        await task


async def test_stop_lets_short_work_finish_within_grace() -> None:
    done: list[int] = []

    @flows.activity("short-job")
    async def short_job(n: int) -> int:
        await asyncio.sleep(0.2)
        done.append(n)
        return n

    @flows.workflow("short-wf")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        return await ctx.execute(short_job, n)

    store = MemoryStore()
    engine = flows.Engine(store)
    worker = flows.Worker(store, workflows=[wf], activities=[short_job], poll_interval=0.02)
    task = asyncio.ensure_future(worker.run())
    run = await engine.start(wf, 7)
    await asyncio.sleep(0.05)
    await worker.stop(grace_period=2.0)
    await task
    assert done == [7]
    assert await engine.wait_for_result(run.workflow_id, timeout=1) == 7


async def test_stop_releases_leases_of_work_past_the_grace_period() -> None:
    started = asyncio.Event()

    @flows.activity("stuck-job")
    async def stuck_job(n: int) -> int:
        started.set()
        await asyncio.sleep(30)
        return n

    @flows.activity("stuck-job")
    async def quick_job(n: int) -> int:
        return n + 1

    def make(act: flows.Activity[int, int]) -> flows.Workflow[int, int]:
        @flows.workflow("stuck-wf")
        async def wf(ctx: flows.WorkflowContext, n: int) -> int:
            return await ctx.execute(act, n)

        return wf

    store = MemoryStore()
    engine = flows.Engine(store)
    first = flows.Worker(
        store,
        workflows=[make(stuck_job)],
        activities=[stuck_job],
        poll_interval=0.02,
        lease=timedelta(minutes=10),
    )
    task = asyncio.ensure_future(first.run())
    run = await engine.start(make(stuck_job), 1)
    await asyncio.wait_for(started.wait(), 5)
    await first.stop(grace_period=0.1)
    await task
    # the lease (10 minutes) was released, not left to expire: a new worker takes it now
    second = flows.Worker(
        store, workflows=[make(quick_job)], activities=[quick_job], poll_interval=0.02
    )
    task2 = asyncio.ensure_future(second.run())
    try:
        assert await engine.wait_for_result(run.workflow_id, timeout=5) == 2
    finally:
        await second.stop()
        await task2


async def test_finished_steps_are_committed_before_the_next_inline_step() -> None:
    """One commit per step: a crash during step 3 does not repeat steps 1 and 2."""
    calls: list[int] = []
    env: TestEnvironment

    @flows.activity("counted")
    async def counted(n: int) -> int:
        calls.append(n)
        if n == 2 and calls.count(2) == 1:
            await env.workers[0].stop(grace_period=0)  # the worker dies mid-step
            await asyncio.sleep(10)
        return n

    @flows.workflow("three-steps")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[int]:
        return [await ctx.execute(counted, i) for i in range(3)]

    env = TestEnvironment(workflows=[wf], activities=[counted], workers=1)
    async with env:
        run = await env.engine.start(wf, None)
        await asyncio.sleep(0.2)
        history = await env.engine.history(run.workflow_id)
        recorded = [e.seq for e in history if isinstance(e, flows.events.ActivityCompleted)]
        assert recorded == [1, 2]  # steps 0 and 1 were committed before step 2 started
        rescuer = flows.Worker(env.store, workflows=[wf], activities=[counted], poll_interval=0.02)
        task = asyncio.ensure_future(rescuer.run())
        try:
            assert await env.result(run) == [0, 1, 2]
        finally:
            await rescuer.stop()
            await task
    assert calls == [0, 1, 2, 2]


async def test_other_tenant_cannot_wait_for_result() -> None:
    @flows.workflow("private")
    async def wf(ctx: flows.WorkflowContext, _: None) -> int:
        return 1

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None, tenant_id="a")
        assert await env.result(run) == 1
        with pytest.raises(flows.WorkflowNotFound):
            await env.engine.wait_for_result(run.workflow_id, tenant_id="b", timeout=1)
        assert await env.engine.list(tenant_id="b") == []


async def test_workflow_code_blocking_the_loop_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """time.sleep in workflow code: the watchdog logs the workflow id and the stack of
    the blocked code while it blocks (default threshold 2 s), and the workflow task fails
    as a counted attempt; the next attempt (which does not block) completes it."""
    runs: list[int] = []

    @flows.workflow("sleeps-in-code")
    async def wf(ctx: flows.WorkflowContext, _: None) -> int:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            time.sleep(3)  # noqa: ASYNC251 - the mistake under test
        return len(runs)

    store = MemoryStore()
    engine = flows.Engine(store)
    worker = flows.Worker(
        store, workflows=[wf], poll_interval=0.02, workflow_task_backoff=timedelta(0)
    )
    task = asyncio.ensure_future(worker.run())
    try:
        with caplog.at_level(logging.WARNING, logger="flows.worker"):
            run = await engine.start(wf, None)
            assert await engine.wait_for_result(run.workflow_id, timeout=20) == 2
    finally:
        await worker.stop()
        await task
    blocked = [r for r in caplog.records if "held the event loop" in r.getMessage()]
    watchdog = [r for r in blocked if "Stack of the blocked code" in r.getMessage()]
    assert len(watchdog) == 1
    assert run.workflow_id in watchdog[0].getMessage()
    assert "in wf" in watchdog[0].getMessage(), "the stack names the user's function"
    assert "time.sleep(3)" in watchdog[0].getMessage()
    assert worker.counters["workflow_task_failures"] == 1
    assert runs == [1, 2], "the code ran once per counted attempt"


async def test_a_cancelled_error_from_workflow_code_is_a_counted_attempt() -> None:
    """CancelledError raised by workflow code is not the worker stopping: it is taken for
    a bug in the workflow code, so the workflow parks at once (one counted attempt, the
    code ran once) and the worker keeps running."""
    runs: list[int] = []

    @flows.workflow("raises-cancelled")
    async def wf(ctx: flows.WorkflowContext, _: None) -> int:
        runs.append(1)
        raise asyncio.CancelledError()

    store = MemoryStore()
    engine = flows.Engine(store)
    worker = flows.Worker(
        store,
        workflows=[wf],
        poll_interval=0.02,
        max_workflow_task_attempts=2,
        workflow_task_backoff=timedelta(0),
    )
    task = asyncio.ensure_future(worker.run())
    try:
        run = await engine.start(wf, None)
        for _ in range(500):
            record = await store.get_workflow("default", run.workflow_id)
            if record.status != flows.WorkflowStatus.RUNNING:
                break
            await asyncio.sleep(0.01)
    finally:
        await worker.stop()
        await task
    assert record.status == flows.WorkflowStatus.PARKED
    assert record.error is not None
    assert record.error.type == "WorkflowCodeError"
    assert "CancelledError" in record.error.message
    assert record.error.attempts == len(runs) == 1
    assert worker.running is False


async def test_eager_starts_go_only_to_workers_sharing_the_object_and_the_store() -> None:
    @flows.workflow("eager-one")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return x

    store, other = MemoryStore(), MemoryStore()
    eager = flows.EagerStarts()
    here = flows.Worker(store, workflows=[wf], poll_interval=0.02, eager=eager)
    elsewhere = flows.Worker(other, workflows=[wf], poll_interval=0.02, eager=eager)
    tasks = [asyncio.ensure_future(w.run()) for w in (here, elsewhere)]
    try:
        for _ in range(200):
            if len(eager.workers) == 2:
                break
            await asyncio.sleep(0.005)
        runs = [await flows.Engine(store, eager=eager).start(wf, i) for i in range(3)]
        queued = await flows.Engine(store).start(wf, 9)
        assert [await r.result(timeout=5) for r in runs] == [0, 1, 2]
        assert await queued.result(timeout=5) == 9
    finally:
        for w in (here, elsewhere):
            await w.stop()
        await asyncio.gather(*tasks)
    assert here.counters["eager_starts"] == 3
    assert elsewhere.counters["eager_starts"] == 0
    assert eager.workers == [], "a stopped worker is no longer listed"


class _FlakyClaims:
    """A MemoryStore whose first claims fail as PostgreSQL's adapter reports an outage."""

    def __init__(self, store: MemoryStore, failures: int, error: Exception) -> None:
        self._store = store
        self.failures = failures
        self.error = error

    @property
    def clock(self) -> flows.Clock:
        return self._store.clock

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def claim(self, request: object) -> object:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await self._store.claim(request)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [flows.StoreUnavailable("connection refused"), flows.StoreError("deadlock"), OSError("reset")],
)
async def test_a_store_outage_during_polls_is_waited_out(error: Exception) -> None:
    @flows.workflow("outlasts-outage")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return x

    memory = MemoryStore()
    store = _FlakyClaims(memory, 3, error)
    engine = flows.Engine(memory)
    worker = flows.Worker(store, workflows=[wf], poll_interval=0.02)  # type: ignore[arg-type]
    task = asyncio.ensure_future(worker.run())
    try:
        run = await engine.start(wf, 7)
        assert await run.result(timeout=10) == 7
    finally:
        await worker.stop()
        await task
    assert store.failures == 0
    assert worker.counters["store_errors"] == 3


async def test_work_cut_at_shutdown_is_a_counted_attempt() -> None:
    """A workflow task still running its inline activity when the grace period ends is
    recorded as a failed attempt (claimable at once), not given back uncounted."""
    started = asyncio.Event()

    @flows.activity("cut-job")
    async def cut_job(n: int) -> int:
        started.set()
        await asyncio.sleep(30)
        return n

    @flows.workflow("cut-wf")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        return await ctx.execute(cut_job, n)

    store = MemoryStore()
    worker = flows.Worker(store, workflows=[wf], activities=[cut_job], poll_interval=0.02)
    task = asyncio.ensure_future(worker.run())
    run = await flows.Engine(store).start(wf, 1)
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(grace_period=0.05)
    await task
    assert worker.counters["workflow_task_failures"] == 1
    request = ClaimRequest(
        owner="next",
        workflow_types=[("cut-wf", 1)],
        activity_names=[],
        limit=1,
        lease=timedelta(seconds=30),
    )
    [claim] = await store.claim(request)
    assert isinstance(claim, WorkflowTaskClaim)
    assert claim.lease.workflow_id == run.workflow_id
    assert claim.attempt == 2, "the cut claim counted"


async def test_a_store_error_while_idle_is_backed_off_not_fatal() -> None:
    """Found by the Citus chaos run: the idle wait reads the store (next_due); a failure
    there ended Worker.run() and with it the worker process."""

    class FailingOnce(MemoryStore):
        failures = 0

        async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
            if not self.failures:
                self.failures += 1
                raise flows.StoreUnavailable("a node is down")
            return await super().next_due(shard_keys)

    @flows.workflow("after-an-idle-failure")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return x + 1

    store = FailingOnce()
    worker = flows.Worker(store, workflows=[wf], poll_interval=0.02)
    running = asyncio.ensure_future(worker.run())
    try:
        for _ in range(200):
            if store.failures:
                break
            await asyncio.sleep(0.01)
        run = await flows.Engine(store).start(wf, 1)
        assert await run.result(timeout=10) == 2
        assert not running.done(), "the worker kept running"
        assert worker.counters["store_errors"] == 1
    finally:
        await worker.stop()
        await running


async def test_due_timers_on_memory_do_not_wait_for_the_poll_interval() -> None:
    """A hang check, not a speed test (as on PostgreSQL and Citus): with a 30 s poll
    interval on the wall clock, due and zero-length timers fire without a poll's wait
    (they cost one each: next_due saw future timers only, and a wake-up sent while no
    worker waited was lost)."""
    from datetime import UTC

    @flows.workflow("memory-due-timers")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        await ctx.sleep(0)
        await ctx.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))
        await ctx.sleep(0.001)
        return "woke"

    store = MemoryStore(clock=flows.SystemClock())
    worker = flows.Worker(store, workflows=[wf], poll_interval=30)
    running = asyncio.ensure_future(worker.run())
    try:
        run = await flows.Engine(store).start(wf, None)
        assert await run.result(timeout=10) == "woke"
    finally:
        await worker.stop()
        await running


async def test_cancelling_worker_run_from_outside_ends_it_even_inside_user_code() -> None:
    """An application that cancels the task running Worker.run (a TaskGroup, a shutdown)
    while an activity runs in it: the cancel is the worker's own and ends run(); it was
    taken for a CancelledError of user code, counted as a failed attempt and swallowed,
    and run() went on forever."""
    entered = asyncio.Event()

    @flows.activity("blocks-until-cancelled")
    async def blocks(_: None) -> None:
        entered.set()
        await asyncio.Event().wait()

    @flows.workflow("runs-a-blocking-activity")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await ctx.execute(blocks, None)

    store = MemoryStore()
    worker = flows.Worker(store, workflows=[wf], activities=[blocks], grace_period=0.05)
    running = asyncio.ensure_future(worker.run())
    await flows.Engine(store).start(wf, None)
    await asyncio.wait_for(entered.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)
    assert worker.running is False


class _SwallowsOneCancel(MemoryStore):
    """A store whose idle read loses one cancellation of its caller, as CPython 3.11's
    ``asyncio.wait_for`` does when its inner future completes at the same moment
    (bpo-42130): drivers and pools wait with it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.swallowed = 0

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.swallowed += 1  # the library returns a result instead of raising
        return await super().next_due(shard_keys)


async def test_a_cancel_of_worker_run_swallowed_by_the_store_still_ends_it() -> None:
    """The contract suite's simulated kill hung now and then: the cancel of Worker.run
    reached a driver wait that returned its result instead, and run() went on polling
    for good. run() now checks its task's pending cancel requests at every turn."""
    @flows.workflow("never-started")
    async def idle(ctx: flows.WorkflowContext, _: None) -> None:
        return None

    store = _SwallowsOneCancel()
    worker = flows.Worker(store, workflows=[idle], poll_interval=0.01, grace_period=0.05)
    running = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(store.entered.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)
    assert store.swallowed == 1
    assert worker.running is False
