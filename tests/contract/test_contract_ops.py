"""Operations on every store: retention (prune), stats, payload limits.

Each adapter gives every test a fresh store (a fresh schema on PostgreSQL), so a prune
here only sees this test's workflows.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import flows_core as flows
from flows_core._errors import ErrorInfo
from flows_core.events import Event, WorkflowCompleted, WorkflowFailedEvent, encode_event
from flows_core.store import WorkflowStatus, WorkflowTaskClaim
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit, raw
from tests.contract.test_contract_engine import result, running, worker

AGE = 0.3  # seconds a finished workflow must age before these tests prune it


async def claim_of(kit: Kit, workflow_id: str) -> WorkflowTaskClaim:
    claims = await kit.claim(limit=100)
    for other in claims:
        if other.lease.workflow_id != workflow_id:
            await kit.store.release(other.lease)
    claim = next(c for c in claims if c.lease.workflow_id == workflow_id)
    assert isinstance(claim, WorkflowTaskClaim)
    return claim


async def complete(kit: Kit, workflow_id: str) -> None:
    """Claim the workflow's task and commit COMPLETED."""
    claim = await claim_of(kit, workflow_id)
    events: list[Event] = [WorkflowCompleted(output=raw(1), at=kit.now())]
    await kit.store.commit_workflow_task(
        kit.commit(claim, events, status=WorkflowStatus.COMPLETED, output=1)
    )


# -- retention --


async def test_prune_deletes_only_old_finished_workflows(adapter: Adapter) -> None:
    kit = Kit(adapter)
    store = kit.store
    ids = [(await kit.start()).workflow_id for _ in range(4)]
    await complete(kit, ids[0])
    # a signal that arrives while the terminal decision is taken stays in the inbox
    claim = await claim_of(kit, ids[1])
    await store.signal_workflow(kit.tenant, ids[1], kit.signal("late"))
    error = ErrorInfo(type="Boom", message="x")
    await store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowFailedEvent(error=error, at=kit.now())],
            status=WorkflowStatus.FAILED,
            error=error,
        )
    )
    assert (await store.get_workflow(kit.tenant, ids[1])).inbox_length == 1
    # ids[2] stays running with a pending signal; ids[3] is parked (a dead letter)
    await store.signal_workflow(kit.tenant, ids[2], kit.signal("go"))
    parked = await claim_of(kit, ids[3])
    await store.park_workflow(parked.lease, ErrorInfo(type="NonDeterminismError", message="x"))

    assert await store.prune(timedelta(hours=1), 100) == 0, "nothing is old enough yet"
    await adapter.pass_time(AGE + 0.1)
    assert await store.prune(timedelta(seconds=AGE), 100) == 2
    for wid in ids[:2]:
        with pytest.raises(flows.WorkflowNotFound):
            await store.get_workflow(kit.tenant, wid)
        with pytest.raises(flows.WorkflowNotFound):
            await store.get_history(kit.tenant, wid)
    assert (await store.get_workflow(kit.tenant, ids[2])).status == WorkflowStatus.RUNNING
    assert (await store.get_workflow(kit.tenant, ids[3])).status == WorkflowStatus.PARKED
    assert len(await store.get_history(kit.tenant, ids[2])) >= 1
    assert await store.prune(timedelta(0), 100) == 0
    # the same id can be used again once pruned
    await kit.start(ids[0])


async def test_prune_works_in_bounded_batches(adapter: Adapter) -> None:
    kit = Kit(adapter)
    ids = [(await kit.start()).workflow_id for _ in range(5)]
    for wid in ids:
        await complete(kit, wid)
    await adapter.pass_time(0.05)
    assert [await kit.store.prune(timedelta(0), 2) for _ in range(4)] == [2, 2, 1, 0]
    assert await kit.store.prune(timedelta(0), 0) == 0


async def test_engine_prune_loops_until_done(adapter: Adapter) -> None:
    kit = Kit(adapter)
    ids = [(await kit.start()).workflow_id for _ in range(7)]
    for wid in ids:
        await complete(kit, wid)
    await adapter.pass_time(0.05)
    engine = flows.Engine(kit.store)
    assert await engine.prune(timedelta(0), batch=3, max_batches=1) == 3
    assert await engine.prune(timedelta(0), batch=3) == 4
    with pytest.raises(flows.InvalidArgument):
        await engine.prune(timedelta(seconds=-1))
    with pytest.raises(flows.InvalidArgument):
        await engine.prune(timedelta(0), batch=0)


@flows.activity("ops-double")
async def double(x: int) -> int:
    return 2 * x


@flows.workflow("ops-short")
async def short(ctx: flows.WorkflowContext, x: int) -> int:
    return await ctx.execute(double, x)


async def test_tables_stay_bounded_with_retention(adapter: Adapter) -> None:
    """5 rounds of 200 short workflows with pruning between rounds: the store never
    holds more than one round's workflows."""
    store = adapter.store
    engine = flows.Engine(store)
    w = worker(store, workflows=[short], activities=[double], concurrency=20)
    peak = 0
    async with running(w):
        for round_ in range(5):
            runs = [await engine.start(short, i, tenant_id=f"t{i % 3}") for i in range(200)]
            outputs = [await result(run) for run in runs]
            assert outputs == [2 * i for i in range(200)]
            stats = await store.stats()
            total = sum(stats.workflows.values())
            peak = max(peak, total)
            assert total == 200, (round_, stats.workflows)
            await adapter.pass_time(0.01)
            assert await engine.prune(timedelta(0), batch=64) == 200
            after = await store.stats()
            assert after.workflows == {}
            assert after.queue_depth == {}
            assert after.in_flight == 0
            row_counts = getattr(store, "row_counts", None)
            if row_counts is not None:
                assert row_counts() == {"workflows": 0, "history": 0, "inbox": 0, "tasks": 0}
    assert peak == 200


async def test_worker_background_pruner(adapter: Adapter) -> None:
    store = adapter.store
    engine = flows.Engine(store)
    # results are read before the pruner may delete them: retention 3 s, checked often
    w = worker(store, workflows=[short], activities=[double], retention=timedelta(seconds=3))
    w.retention_interval = 0.05
    async with running(w):
        runs = [await engine.start(short, i) for i in range(5)]
        await asyncio.gather(*(result(run) for run in runs))
        for _ in range(200):
            if not (await store.stats()).workflows:
                break
            await adapter.pass_time(0.05)
    assert (await store.stats()).workflows == {}
    assert w.counters["pruned"] == 5
    with pytest.raises(flows.InvalidArgument):
        flows.Worker(store, workflows=[short], retention=timedelta(seconds=-1))


# -- stats --


async def test_stats_queue_depth_in_flight_dead_letters(adapter: Adapter) -> None:
    kit = Kit(adapter)
    store = kit.store
    empty = await store.stats([kit.shard])
    assert empty.queue_depth == {}
    assert empty.oldest_pending_age is None
    assert empty.in_flight == 0
    assert empty.dead_letters == 0
    assert empty.workflows == {}
    ids = [(await kit.start()).workflow_id for _ in range(3)]
    await adapter.pass_time(0.05)
    s = await store.stats([kit.shard])
    assert s.queue_depth == {kit.shard: 3}
    assert s.oldest_pending_age is not None
    assert s.oldest_pending_age >= timedelta(0)
    assert s.in_flight == 0
    assert s.workflows == {"running": 3}
    assert (await store.stats(["no-such-shard"])).queue_depth == {}
    claim = next(c for c in await kit.claim(limit=1))
    s = await store.stats([kit.shard])
    assert s.queue_depth == {kit.shard: 2}
    assert s.in_flight == 1
    await store.park_workflow(claim.lease, ErrorInfo(type="NonDeterminismError", message="x"))
    s = await store.stats()
    assert s.dead_letters == 1
    assert s.in_flight == 0
    assert s.workflows == {"running": 2, "parked": 1}
    assert ids


async def test_worker_stats(adapter: Adapter) -> None:
    store = adapter.store
    engine = flows.Engine(store)
    w = worker(store, workflows=[short], activities=[double])
    before = await w.stats()
    assert before.in_flight == 0
    assert before.queue_depth == {}
    assert before.dead_letters == 0
    await engine.start(short, 1)
    pending = await w.stats()
    assert sum(pending.queue_depth.values()) == 1
    async with running(w):
        runs = [await engine.start(short, i) for i in range(3)]
        for run in runs:
            await result(run)
    after = await w.stats()
    assert after.counters["workflow_tasks"] >= 3
    assert after.workflows.get("completed", 0) >= 3


# -- payload limits --

BIG = "x" * 200  # over the 100-byte limits below


@flows.activity("ops-echo")
async def echo(s: str) -> str:
    return s


@flows.activity("ops-grow")
async def grow(n: int) -> str:
    return "y" * n


@flows.workflow("ops-payloads")
async def payloads(ctx: flows.WorkflowContext, mode: str) -> str:
    if mode == "activity-input":
        return await ctx.execute(echo, BIG)
    if mode == "activity-output":
        return await ctx.execute(grow, 200)
    if mode == "workflow-output":
        return BIG
    if mode == "signal":
        return await ctx.wait_for_signal("s", str)
    return "ok"


async def test_payload_limits_on_client_entry_points(adapter: Adapter) -> None:
    store = adapter.store
    engine = flows.Engine(store, max_payload_bytes=100)
    with pytest.raises(flows.PayloadTooLarge):
        await engine.start(payloads, BIG, tenant_id="limits")
    assert await engine.list(tenant_id="limits") == [], "nothing stored"
    run = await engine.start(payloads, "signal", tenant_id="limits")
    before = await store.get_workflow("limits", run.workflow_id)
    with pytest.raises(flows.PayloadTooLarge):
        await engine.signal(run.workflow_id, "s", BIG, tenant_id="limits")
    after = await store.get_workflow("limits", run.workflow_id)
    assert after.inbox_length == before.inbox_length == 0
    assert after.history_length == before.history_length
    await engine.signal(run.workflow_id, "s", "small", tenant_id="limits")
    # the default limit is 2 MiB
    default = flows.Engine(store)
    assert flows.DEFAULT_MAX_PAYLOAD_BYTES == 2 * 1024 * 1024
    with pytest.raises(flows.PayloadTooLarge):
        await default.start(payloads, "z" * flows.DEFAULT_MAX_PAYLOAD_BYTES, tenant_id="limits")
    assert len(await default.list(tenant_id="limits")) == 1


@pytest.mark.parametrize("mode", ["activity-input", "activity-output", "workflow-output"])
async def test_payload_limits_inside_the_worker(adapter: Adapter, mode: str) -> None:
    store = adapter.store
    engine = flows.Engine(store)
    w = worker(store, workflows=[payloads], activities=[echo, grow], max_payload_bytes=100)
    async with running(w):
        run = await engine.start(payloads, mode)
        with pytest.raises(flows.WorkflowFailed) as failed:
            await result(run)
    assert "PayloadTooLarge" in str(failed.value.cause)
    history = await store.get_history(run.tenant_id, run.workflow_id)
    encoded = b"".join(bytes(encode_event(e)) for e in history)
    assert BIG.encode() not in encoded, "nothing big stored"
    assert b"y" * 200 not in encoded, "nothing big stored"
    # the same workflow passes under the default limit
    w2 = worker(store, workflows=[payloads], activities=[echo, grow])
    async with running(w2):
        ok = await engine.start(payloads, mode)
        assert len(await result(ok)) == 200
