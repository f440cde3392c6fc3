"""Rolling deploy (issue 17, item 4): old and new worker code side by side on one store.

The old code registers version 1 of a workflow, the new code versions 1 and 2 (v2 adds a
fraud check). Runs started while only old code exists are v1; an Engine of the new code
starts v2 (the highest version it registers), and such a run says it waits for a worker
that runs version 2 until one starts. With both workers up, the old one never takes a v2
task; once it stops, the new worker finishes the v1 runs on v1's code. Nothing parks.
Runs on every contract adapter (memory, PostgreSQL, Citus when available).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import flows_core as flows
from flows_core.events import ActivityScheduled, Event, SignalWaitStarted, WorkflowStarted
from flows_core.store import WorkflowStatus
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches

POLL = 0.02
TIMEOUT = 15.0
"""Real seconds for anything to happen."""


@dataclass
class Release:
    """The definitions of one deployed version of the application code."""

    name: str
    workflows: list[flows.Workflow[str, str]]
    activities: list[flows.Activity[str, str]]


def releases(name: str) -> tuple[Release, Release]:
    """The old release (``name`` v1) and the new one (``name`` v1 and v2)."""

    @flows.activity(f"{name}-reserve")
    async def reserve(order_id: str) -> str:
        return f"reserved-{order_id}"

    @flows.activity(f"{name}-fraud-check")
    async def fraud_check(order_id: str) -> str:
        return f"clean-{order_id}"

    @flows.activity(f"{name}-ship")
    async def ship(order_id: str) -> str:
        return f"shipped-{order_id}"

    @flows.workflow(name, version=1)
    async def order_v1(ctx: flows.WorkflowContext, order_id: str) -> str:
        reserved = await ctx.execute(reserve, order_id)
        go = await ctx.wait_for_signal("go", str)
        shipped = await ctx.execute(ship, order_id)
        return f"v1:{reserved}/{go}/{shipped}"

    @flows.workflow(name, version=2)
    async def order_v2(ctx: flows.WorkflowContext, order_id: str) -> str:
        reserved = await ctx.execute(reserve, order_id)
        checked = await ctx.execute(fraud_check, order_id)
        go = await ctx.wait_for_signal("go", str)
        shipped = await ctx.execute(ship, order_id)
        return f"v2:{reserved}/{checked}/{go}/{shipped}"

    old = Release(name, [order_v1], [reserve, ship])
    new = Release(name, [order_v1, order_v2], [reserve, fraud_check, ship])
    return old, new


def expected(version: int, name: str, order_id: str) -> tuple[str, list[str]]:
    """The output and the activity steps of a run of ``version``."""
    if version == 1:
        return (
            f"v1:reserved-{order_id}/go-{order_id}/shipped-{order_id}",
            [f"{name}-reserve", f"{name}-ship"],
        )
    return (
        f"v2:reserved-{order_id}/clean-{order_id}/go-{order_id}/shipped-{order_id}",
        [f"{name}-reserve", f"{name}-fraud-check", f"{name}-ship"],
    )


@contextlib.asynccontextmanager
async def running(worker: flows.Worker) -> AsyncIterator[flows.Worker]:
    task = asyncio.ensure_future(worker.run())
    try:
        yield worker
    finally:
        await worker.stop(grace_period=1.0)
        await asyncio.wait_for(task, TIMEOUT)


async def eventually(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str
) -> Any:
    """Poll ``read()`` (real time) until ``ok(value)``; return the value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        value = await read()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {TIMEOUT}s; last: {value!r}")
        await asyncio.sleep(0.01)


def waits_for_signal(history: list[Event]) -> bool:
    return isinstance(history[-1], SignalWaitStarted)


async def test_old_runs_finish_on_v1_new_runs_take_v2_nothing_parks(adapter: Adapter) -> None:
    store = adapter.store
    tenant = f"t-{adapter.ns}"
    old, new = releases(f"order-{adapter.ns}")
    old_engine = flows.Engine(store, workflows=old.workflows)
    new_engine = flows.Engine(store, workflows=new.workflows)
    old_worker = flows.Worker(
        store, workflows=old.workflows, activities=old.activities, poll_interval=POLL
    )
    new_worker = flows.Worker(
        store, workflows=new.workflows, activities=new.activities, poll_interval=POLL
    )
    versions: dict[str, int] = {}

    async def start(engine: flows.Engine, order_id: str, version: int) -> None:
        run = await engine.start(old.name, order_id, workflow_id=order_id, tenant_id=tenant)
        versions[run.workflow_id] = version

    async def history(wf_id: str) -> list[Event]:
        return await new_engine.history(wf_id, tenant_id=tenant)

    async def waiting(wf_id: str) -> str | None:
        return (await new_engine.query(wf_id, tenant_id=tenant)).waiting_reason

    old_run = asyncio.ensure_future(old_worker.run())
    try:
        # Only the old code is deployed: its runs are v1 and reach their signal wait.
        for i in range(3):
            await start(old_engine, f"old-{i}", 1)
        for wf_id in list(versions):
            await eventually(lambda w=wf_id: history(w), waits_for_signal, f"{wf_id} waiting")

        # The new code's Engine is deployed first: its run is v2, and no worker runs v2.
        # A v1 run started after it goes through, so the old worker polled past it.
        await start(new_engine, "early-v2", 2)
        await start(old_engine, "old-3", 1)
        await eventually(lambda: history("old-3"), waits_for_signal, "old-3 waiting")
        reason = await waiting("early-v2")
        assert reason == (
            f"waiting for a worker that runs {old.name!r} version 2; live workers run versions [1]"
        )
        early = await history("early-v2")
        assert len(early) == 1
        assert isinstance(early[0], WorkflowStarted)
        assert early[0].version == 2, "the old worker must not have run it"

        async with running(new_worker):
            await eventually(lambda: history("early-v2"), waits_for_signal, "early-v2 waiting")
            assert await waiting("early-v2") is None
            # Both deployed: each Engine starts the highest version it knows.
            for i in range(3):
                await start(new_engine, f"new-{i}", 2)
            await start(old_engine, "mixed-v1", 1)
            for wf_id in list(versions):
                await eventually(lambda w=wf_id: history(w), waits_for_signal, f"{wf_id} waiting")

            # The old code is retired; the new worker finishes the v1 runs too.
            await old_worker.stop(grace_period=1.0)
            await asyncio.wait_for(old_run, TIMEOUT)
            for wf_id in versions:
                assert await waiting(wf_id) is None, wf_id
                await new_engine.signal(wf_id, "go", f"go-{wf_id}", tenant_id=tenant)
            for wf_id, version in versions.items():
                output, _ = expected(version, old.name, wf_id)
                result = await new_engine.wait_for_result(
                    wf_id, tenant_id=tenant, timeout=TIMEOUT, type_=str
                )
                assert result == output, wf_id
    finally:
        if not old_run.done():
            await old_worker.stop(grace_period=1.0)
            await asyncio.wait_for(old_run, TIMEOUT)

    for wf_id, version in versions.items():
        events = await history(wf_id)
        assert_history_invariants(events)
        record = await store.get_workflow(tenant, wf_id)
        assert_record_matches(record, events)
        assert record.status == WorkflowStatus.COMPLETED, (wf_id, record)
        assert record.version == version, wf_id
        started = events[0]
        assert isinstance(started, WorkflowStarted)
        assert started.version == version
        _, steps = expected(version, old.name, wf_id)
        assert [e.name for e in events if isinstance(e, ActivityScheduled)] == steps, wf_id
    assert await new_engine.list(tenant_id=tenant, status=WorkflowStatus.PARKED) == []
    assert sorted(versions.values()) == [1, 1, 1, 1, 1, 2, 2, 2, 2]
