"""The one failure policy, on every adapter: each claim of a task that does not end in
its commit is a counted attempt, and no code runs again without one.

Each test is a trigger that once re-ran user code without limit; each asserts the
outcome and that the executions seen by the code equal the attempts counted (the
attempt numbers of ``flows.activity_info()``, ``ActivityFailed.attempts``,
``error.attempts`` of a dead letter).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core.events import ActivityFailedEvent
from flows_core.store import (
    ActivityRetry,
    ClaimRequest,
    Store,
    WorkflowStatus,
    WorkflowTaskCommit,
)
from tests.contract.adapters import Adapter
from tests.contract.kit import StoreProxy
from tests.contract.test_contract_engine import (
    checked_history,
    eventually,
    kill,
    result,
    running,
    worker,
)

AT_ONCE = flows.RetryPolicy(
    initial_interval=timedelta(0), max_interval=timedelta(0), max_attempts=2, jitter=0.0
)
"""Two attempts, the retry due at once (no clock to move on any adapter)."""

LONE_SURROGATE = os.fsdecode(b"/data/caf\xe9.csv")  # '/data/caf\udce9.csv'


class BadStr(Exception):
    """An exception whose str() and repr() raise, as a buggy library's may."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


def _recording_workflow(name: str, act: flows.Activity[int, int]) -> flows.Workflow[int, Any]:
    @flows.workflow(name)
    async def wf(ctx: flows.WorkflowContext, x: int) -> list[Any]:
        try:
            return [await ctx.execute(act, x)]
        except flows.ActivityFailed as exc:
            return [exc.error_type, exc.message, exc.attempts]

    return wf


async def _run_failing_activity(
    adapter: Adapter, raise_it: Any
) -> tuple[list[Any], list[int], flows.Run[Any]]:
    """Run a workflow whose activity (retry: AT_ONCE) calls ``raise_it()``; returns the
    workflow's output, the attempt numbers the activity saw, and the run."""
    seen: list[int] = []

    @flows.activity(f"fails-{adapter.ns}", retry=AT_ONCE)
    async def fails(x: int) -> int:
        seen.append(flows.activity_info().attempt)
        raise_it()
        return x

    wf = _recording_workflow(f"fails-wf-{adapter.ns}", fails)
    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf], activities=[fails])):
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        output = await result(run)
    return output, seen, run


async def test_an_exception_whose_str_raises_is_a_counted_attempt(adapter: Adapter) -> None:
    def raise_it() -> None:
        raise BadStr()

    output, seen, run = await _run_failing_activity(adapter, raise_it)
    error_type, message, attempts = output
    assert error_type == "BadStr"
    assert "str() and repr() of the exception raised" in message
    assert attempts == 2
    assert seen == [1, 2], "ran exactly once per counted attempt"
    await checked_history(adapter.store, run)


async def test_a_cancelled_error_out_of_an_activity_is_a_counted_attempt(
    adapter: Adapter,
) -> None:
    """Some client libraries let CancelledError escape: that is the attempt failing,
    not the worker being cancelled."""

    def raise_it() -> None:
        raise asyncio.CancelledError()

    output, seen, _run = await _run_failing_activity(adapter, raise_it)
    assert output[0] == "CancelledError"
    assert output[2] == 2
    assert seen == [1, 2]


async def test_a_lone_surrogate_in_an_error_is_stored(adapter: Adapter) -> None:
    """An f-string of an os.fsdecode path holds a lone surrogate, which PostgreSQL text
    cannot encode: the error is stored with U+FFFD instead (NUL likewise)."""

    def raise_it() -> None:
        raise OSError(f"cannot read {LONE_SURROGATE}\x00")

    output, seen, run = await _run_failing_activity(adapter, raise_it)
    error_type, message, attempts = output
    assert error_type == "OSError"
    assert message == "cannot read /data/caf\ufffd.csv\ufffd"
    assert (attempts, seen) == (2, [1, 2])
    await checked_history(adapter.store, run)


async def test_a_workflow_failing_with_a_lone_surrogate_ends_failed(adapter: Adapter) -> None:
    @flows.workflow(f"surrogate-wf-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        raise ValueError(f"bad path {LONE_SURROGATE}")

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf])):
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        with pytest.raises(flows.WorkflowFailed):
            await result(run)
    record = await adapter.store.get_workflow(run.tenant_id, run.workflow_id)
    assert record.status == WorkflowStatus.FAILED
    assert record.error is not None
    assert record.error.message == "bad path /data/caf\ufffd.csv"


async def test_an_enormous_error_message_is_cut_to_its_bound(adapter: Adapter) -> None:
    def raise_it() -> None:
        raise ValueError("x" * 1_000_000)

    output, seen, _run = await _run_failing_activity(adapter, raise_it)
    message = output[1]
    assert len(message) <= 8 * 1024
    assert message.startswith("xxxx")
    assert "characters left out" in message
    assert seen == [1, 2]


async def test_asyncio_timeout_in_workflow_code_does_not_rerun_the_activity_uncounted(
    adapter: Adapter,
) -> None:
    """``asyncio.timeout`` in workflow code cancels the task running it (the worker's).
    That cancellation is not the worker stopping: the workflow ends (or parks), and the
    activity ran once per counted attempt, never forever."""
    seen: list[int] = []

    @flows.activity(f"slow-{adapter.ns}", retry=AT_ONCE)
    async def slow(x: int) -> int:
        seen.append(flows.activity_info().attempt)
        await asyncio.sleep(0.3)
        return x

    @flows.workflow(f"timeout-wf-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        async with asyncio.timeout(0.05):
            return await ctx.execute(slow, x)

    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(
        adapter.store,
        workflows=[wf],
        activities=[slow],
        max_workflow_task_attempts=2,
        workflow_task_backoff=timedelta(0),
    )
    async with running(w):
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        record = await eventually(
            lambda: adapter.store.get_workflow(run.tenant_id, run.workflow_id),
            lambda r: r.status != WorkflowStatus.RUNNING,
        )
    assert record.status in (WorkflowStatus.COMPLETED, WorkflowStatus.PARKED)
    assert seen == list(range(1, len(seen) + 1)), "no attempt number ran twice"
    assert len(seen) <= 2


class FailingCommits(StoreProxy):
    """The adapter's real store, with every workflow-task commit refused (fault
    injection: the store is unavailable for exactly that write)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.commits = 0

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Any]:
        self.commits += 1
        raise flows.StoreUnavailable("injected: commit_workflow_task is down")


async def test_a_commit_that_always_fails_is_counted_and_parks(adapter: Adapter) -> None:
    runs: list[int] = []

    @flows.workflow(f"uncommittable-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        runs.append(x)
        return x

    store = FailingCommits(adapter.store)
    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(
        store,
        workflows=[wf],
        lease=timedelta(seconds=0.3),
        max_workflow_task_attempts=3,
        workflow_task_backoff=timedelta(0),
    )
    async with running(w):
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        record = await eventually(
            lambda: adapter.store.get_workflow(run.tenant_id, run.workflow_id),
            lambda r: r.status == WorkflowStatus.PARKED,
        )
    assert record.error is not None
    assert record.error.type == "StoreUnavailable"
    assert record.error.attempts == 3
    assert runs == [1, 1, 1], "the code ran once per counted attempt"
    assert store.commits >= 3
    assert w.counters["workflow_task_failures"] == 3


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_concurrency_bounds_inline_activities(adapter: Adapter, concurrency: int) -> None:
    """``Worker(concurrency=N)``: at most N activities run at once, the inline ones of a
    gather included."""
    now = 0
    most = 0

    @flows.activity(f"bounded-{adapter.ns}")
    async def bounded(x: int) -> int:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.01)
        now -= 1
        return x

    @flows.workflow(f"fan-out-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        values = await flows.gather(*[ctx.execute(bounded, i) for i in range(n)])
        return sum(values)

    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(adapter.store, workflows=[wf], activities=[bounded], concurrency=concurrency)
    async with running(w):
        run = await engine.start(wf, 20, tenant_id=f"t-{adapter.ns}")
        assert await result(run) == sum(range(20))
    assert w.counters["inline_activities"] == 20
    assert most == concurrency


async def test_waiting_reason_names_an_activity_no_live_worker_serves(adapter: Adapter) -> None:
    @flows.activity(f"unserved-{adapter.ns}")
    async def unserved(x: int) -> int:
        return x

    @flows.workflow(f"waits-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return await ctx.execute(unserved, x)

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf])):
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        info = await eventually(
            lambda: engine.query(run.workflow_id, tenant_id=run.tenant_id),
            lambda i: "activity" in (i.waiting_reason or ""),
        )
        assert info.waiting_reason == (
            f"waiting for a worker that runs activity {unserved.name!r} (step #1); "
            "no live worker serves it"
        )
        async with running(worker(adapter.store, activities=[unserved])):
            assert await result(run) == 1
            info = await engine.query(run.workflow_id, tenant_id=run.tenant_id)
            assert info.waiting_reason is None


async def test_an_activity_claimed_past_its_attempts_fails_without_running(
    adapter: Adapter,
) -> None:
    """A queued activity claimed with an attempt number beyond its retry policy (its
    earlier claimants crashed, as a store that counts such claims reports) is failed
    with ActivityTaskCrashed, not run again."""
    ran: list[int] = []

    @flows.activity(f"crashed-{adapter.ns}", retry=AT_ONCE)
    async def crashed(x: int) -> int:
        ran.append(x)
        return x

    wf = _recording_workflow(f"crashed-wf-{adapter.ns}", crashed)
    store = adapter.store
    engine = flows.Engine(store, workflows=[wf])
    async with running(worker(store, workflows=[wf])):  # the activity is queued
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        record = await store.get_workflow(run.tenant_id, run.workflow_id)
        request = ClaimRequest(
            owner="doomed",
            workflow_types=[],
            activity_names=[crashed.name],
            limit=1,
            lease=timedelta(seconds=30),
            shard_keys=[record.shard_key],
        )
        claims = await eventually(lambda: store.claim(request), bool)
        await store.retry_activity(
            ActivityRetry(
                lease=claims[0].lease,
                next_attempt=3,
                visible_at=store.clock.now(),
                error=flows.ErrorInfo(type="Crashed", message="lease expired", attempts=2),
            )
        )
        async with running(worker(store, activities=[crashed])):
            error_type, message, attempts = await result(run)
    assert error_type == "ActivityTaskCrashed"
    assert "claimed 2 times" in message
    assert attempts == 2
    assert ran == [], "not run past its retry policy"


async def test_a_worker_killed_in_a_queued_activity_costs_a_counted_attempt(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies inside a queued activity; once its lease runs out the next claimant
    runs attempt 2, not attempt 1 again. With max_attempts=2 and a second death, the
    third claim fails the step (ActivityTaskCrashed) without running it, and the
    workflow sees ActivityFailed: executions == counted attempts."""
    seen: list[int] = []
    entered = asyncio.Event()

    @flows.activity(f"dies-{adapter.ns}", retry=AT_ONCE)
    async def dies(x: int) -> int:
        seen.append(flows.activity_info().attempt)
        entered.set()
        await asyncio.Event().wait()  # the worker is killed in here
        return x

    wf = _recording_workflow(f"dies-wf-{adapter.ns}", dies)
    store = adapter.store
    engine = flows.Engine(store, workflows=[wf])
    lease = timedelta(seconds=0.5)
    async with running(worker(store, workflows=[wf])):  # the activity is queued
        run = await engine.start(wf, 1, tenant_id=f"t-{adapter.ns}")
        for attempt in (1, 2):
            entered.clear()
            doomed = worker(store, activities=[dies], lease=lease)
            doomed_task = asyncio.ensure_future(doomed.run())
            await asyncio.wait_for(entered.wait(), 10.0)
            assert seen[-1] == attempt
            await kill(doomed, doomed_task, monkeypatch)
            await adapter.pass_time(0.6)  # the dead worker's lease runs out
        async with running(worker(store, activities=[dies], lease=lease)):
            error_type, message, attempts = await result(run)
    assert error_type == "ActivityTaskCrashed"
    assert "claimed 2 times" in message
    assert attempts == 2
    assert seen == [1, 2], "ran exactly once per counted attempt"
    history = await checked_history(store, run)
    failed = [e for e in history if isinstance(e, ActivityFailedEvent)]
    assert len(failed) == 1
    assert failed[0].error.attempts == 2
