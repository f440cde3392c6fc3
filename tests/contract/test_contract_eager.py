"""Eager workflow start: an OPTIONAL store capability (``flows_core.store.EagerStart``).

``start_workflow_leased`` starts a workflow with its first workflow task already leased,
as if ``claim`` had just leased it; the Engine uses it to hand a new workflow to a Worker
of the same process that serves it and has a free slot. Stores without the capability
(the tests below skip for them) are started the ordinary way, which the end-to-end tests
check too: an Engine and a Worker must work with or without it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core._errors import LeaseLost, WorkflowAlreadyExists
from flows_core.events import SignalReceived, WorkflowCompleted
from flows_core.store import (
    NewWorkflow,
    Store,
    WorkflowStatus,
    WorkflowTaskClaim,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants
from tests.contract.kit import Kit, StoreProxy, canon, raw
from tests.contract.test_contract_engine import checked_history, result, running, worker

LONG = timedelta(seconds=30)
SHORT = timedelta(seconds=0.3)


def _start_leased(store: Store) -> Any:
    start = getattr(store, "start_workflow_leased", None)
    if start is None:
        pytest.skip("this store has no eager start (an optional capability)")
    return start


async def _leased(
    kit: Kit, new: NewWorkflow, *, owner: str = "worker-a", lease: timedelta = LONG
) -> WorkflowTaskClaim:
    claim = await _start_leased(kit.store)(new, owner=owner, lease=lease)
    assert isinstance(claim, WorkflowTaskClaim)
    return claim


async def test_leased_start_is_a_claim_nobody_else_gets(adapter: Adapter) -> None:
    kit = Kit(adapter)
    new = kit.new()
    before = kit.now()
    claim = await _leased(kit, new)
    assert claim.attempt == 1
    assert canon(claim.history) == canon([new.started])
    wf = claim.workflow
    assert (wf.tenant_id, wf.workflow_id, wf.name, wf.version, wf.shard_key) == (
        new.tenant_id,
        new.workflow_id,
        new.name,
        new.version,
        new.shard_key,
    )
    assert wf.status == WorkflowStatus.RUNNING
    assert (wf.history_length, wf.next_seq, wf.inbox_length) == (1, 1, 0)
    assert not wf.cancel_requested
    assert bytes(wf.input) == bytes(new.input)
    lease = claim.lease
    assert (lease.tenant_id, lease.workflow_id, lease.shard_key) == (
        new.tenant_id,
        new.workflow_id,
        new.shard_key,
    )
    assert lease.expires_at > before
    # leased: not claimable, not pending
    assert await kit.claim(owner="worker-b") == []
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert not record.workflow_task_pending
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon([new.started])
    # the lease commits like a claimed one
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw(5), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output=5,
        )
    )
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.COMPLETED
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert_history_invariants(history)
    assert len(history) == 2


async def test_leased_start_of_a_taken_id_writes_nothing(adapter: Adapter) -> None:
    kit = Kit(adapter)
    new = kit.new()
    claim = await _leased(kit, new)
    with pytest.raises(WorkflowAlreadyExists):
        await _leased(kit, kit.new(new.workflow_id), owner="worker-b")
    with pytest.raises(WorkflowAlreadyExists):
        await kit.store.start_workflow(kit.new(new.workflow_id))
    # the first lease still holds and is the only task
    assert await kit.claim(owner="worker-b") == []
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    other = await kit.start()
    with pytest.raises(WorkflowAlreadyExists):
        await _leased(kit, kit.new(other.workflow_id))
    assert [c.lease.workflow_id for c in await kit.claim()] == [other.workflow_id]
    assert len(await kit.store.get_history(kit.tenant, new.workflow_id)) == 1


async def test_expired_leased_start_is_claimed_again_as_attempt_two(adapter: Adapter) -> None:
    """The eager claimant died: the task comes back when the lease expires, counted as
    a second attempt (dead-letter accounting), and the zombie cannot write."""
    kit = Kit(adapter)
    new = kit.new()
    zombie = await _leased(kit, new, lease=SHORT)
    await adapter.pass_time(0.5)
    claim = await kit.claim_wf(owner="worker-b")
    assert claim.lease.workflow_id == new.workflow_id
    assert claim.attempt == 2
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(kit.commit(zombie, []))
    await kit.store.commit_workflow_task(kit.commit(claim, []))


async def test_released_leased_start_is_claimable_uncounted(adapter: Adapter) -> None:
    kit = Kit(adapter)
    new = kit.new()
    claim = await _leased(kit, new)
    await kit.store.release(claim.lease)
    again = await kit.claim_wf(owner="worker-b")
    assert again.lease.workflow_id == new.workflow_id
    assert again.attempt == 1


async def test_signal_to_a_leased_start_waits_for_the_next_task(adapter: Adapter) -> None:
    kit = Kit(adapter)
    new = kit.new()
    claim = await _leased(kit, new)
    signal = kit.signal("go", 1)
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, signal)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.inbox_length == 1
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    # the inbox was not empty: the task stays, pending, and its claim shows the signal
    again = await kit.claim_wf(owner="worker-b")
    assert isinstance(again.history[-1], SignalReceived)
    assert again.history[-1].signal_id == signal.signal_id


# -- end to end: Engine + Worker --


@flows.activity("eager-inc")
async def inc(x: int) -> int:
    return x + 1


@flows.workflow("eager-three")
async def three(ctx: flows.WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await ctx.execute(inc, x)
    return x


@flows.workflow("eager-gate")
async def gate(ctx: flows.WorkflowContext, x: int) -> int:
    await ctx.wait_for_signal("go", int)
    return x


async def _until_running(w: flows.Worker) -> None:
    for _ in range(500):
        if w.running:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("worker did not start")


async def test_engine_hands_new_workflows_to_a_local_worker(adapter: Adapter) -> None:
    store = adapter.store
    eager = getattr(store, "start_workflow_leased", None) is not None
    eager = flows.EagerStarts()
    engine = flows.Engine(store, eager=eager)
    w = worker(store, workflows=[three], activities=[inc], concurrency=4, eager=eager)
    async with running(w):
        await _until_running(w)
        runs = [await engine.start(three, i) for i in range(12)]
        assert [await result(r) for r in runs] == [i + 3 for i in range(12)]
        for r in runs:
            await checked_history(store, r)
    # with the capability, starts went to the worker directly (the first at least: a
    # slot was free); without it, every workflow came through the queue
    if eager:
        assert w.counters["eager_starts"] >= 1
    else:
        assert w.counters["eager_starts"] == 0
    assert w.counters["workflow_tasks"] >= 12


async def test_engine_without_eager_start_uses_the_queue(adapter: Adapter) -> None:
    """Without an EagerStarts shared with the worker, starts go through the queue."""
    store = adapter.store
    engine = flows.Engine(store)
    w = worker(store, workflows=[three], activities=[inc], eager=flows.EagerStarts())
    async with running(w):
        await _until_running(w)
        runs = [await engine.start(three, i) for i in range(3)]
        assert [await result(r) for r in runs] == [3, 4, 5]
    assert w.counters["eager_starts"] == 0


async def test_a_full_worker_leaves_new_workflows_to_the_queue(adapter: Adapter) -> None:
    """A worker takes eager starts only for what it runs, up to its free slots plus its
    backlog; the rest go through the queue, and everything completes."""
    store = adapter.store
    eager = flows.EagerStarts()
    engine = flows.Engine(store, eager=eager)
    w = worker(store, workflows=[three], activities=[inc], concurrency=1, eager=eager)
    w.backlog = 1
    async with running(w):
        await _until_running(w)
        new, _ = engine.planner.start(three, 0, None, None)
        assert w.reserve_slot(new)
        assert w.reserve_slot(new)
        assert not w.reserve_slot(new), "one slot and one backlog place, both promised"
        w.unreserve_slot()
        w.unreserve_slot()
        not_served, _ = engine.planner.start(gate, 0, None, None)
        assert not w.reserve_slot(not_served), "a workflow type the worker does not run"
        runs = [await engine.start(three, i) for i in range(6)]
        assert [await result(r) for r in runs] == [i + 3 for i in range(6)]
        for r in runs:
            await checked_history(store, r)
    assert w.counters["eager_starts"] <= 6


async def test_a_stopped_worker_takes_no_eager_start(adapter: Adapter) -> None:
    store = adapter.store
    eager = flows.EagerStarts()
    engine = flows.Engine(store, eager=eager)
    w = worker(store, workflows=[gate], activities=[inc], eager=eager)
    async with running(w):
        await _until_running(w)
    new, _ = engine.planner.start(gate, 1, None, None)
    assert not w.reserve_slot(new)
    run = await engine.start(gate, 2)  # no running worker: the ordinary start
    record = await store.get_workflow(run.tenant_id, run.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.workflow_task_pending
    assert w.counters["eager_starts"] == 0


_gates: dict[int, asyncio.Event] = {}


@flows.activity("eager-block")
async def block(key: int) -> int:
    await _gates[key].wait()
    return key


@flows.workflow("eager-blocked")
async def blocked(ctx: flows.WorkflowContext, key: int) -> int:
    return await ctx.execute(block, key)


async def test_an_eager_start_waiting_too_long_for_a_slot_goes_back_to_the_queue(
    adapter: Adapter,
) -> None:
    """An eagerly started task waits in the worker's backlog while its slots are busy;
    after ``backlog_wait`` it is given back (released, uncounted), so any worker can
    take it, and it still completes once the slot frees."""
    store = adapter.store
    if getattr(store, "start_workflow_leased", None) is None:
        pytest.skip("this store has no eager start (an optional capability)")
    eager = flows.EagerStarts()
    engine = flows.Engine(store, eager=eager)
    w = worker(
        store,
        workflows=[blocked],
        activities=[block],
        eager=eager,
        concurrency=1,
        lease=timedelta(seconds=3),
    )
    w.backlog = 1
    w.backlog_wait = 0.3
    key = id(adapter)
    _gates[key] = asyncio.Event()
    try:
        async with running(w):
            await _until_running(w)
            first = await engine.start(blocked, key)  # takes the one slot, and blocks
            for _ in range(200):
                if w.counters["inline_activities"]:
                    break
                await asyncio.sleep(0.01)
            second = await engine.start(blocked, key)  # waits in the backlog
            assert w.counters["eager_starts"] == 2
            for _ in range(300):  # given back after 0.3 s
                record = await store.get_workflow(second.tenant_id, second.workflow_id)
                if record.workflow_task_pending:
                    break
                await asyncio.sleep(0.01)
            assert record.workflow_task_pending, "the backlogged start went back to the queue"
            _gates[key].set()
            assert await result(first) == key
            assert await result(second) == key
            await checked_history(store, second)
    finally:
        _gates.pop(key, None)


class _CountingClaims(StoreProxy):
    """The adapter's store, counting the ``claim`` calls that returned tasks, and those."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.claims = 0
        self.claimed = 0

    async def claim(self, request: Any) -> Any:
        got = await self._store.claim(request)
        self.claims += bool(got)
        self.claimed += len(got)
        return got


async def test_a_claim_fills_the_backlog_beyond_free_slots(adapter: Adapter) -> None:
    """Queued workflows are claimed several per claim, beyond the free slots: the extra
    ones wait in the worker's backlog, leased, and run as slots free up."""
    store = _CountingClaims(adapter.store)
    engine = flows.Engine(store)
    runs = [await engine.start(three, i) for i in range(6)]
    w = worker(store, workflows=[three], activities=[inc], concurrency=1)
    w.backlog = 5
    async with running(w):
        assert [await result(r) for r in runs] == [i + 3 for i in range(6)]
        for r in runs:
            await checked_history(store, r)
    assert store.claimed == 6
    assert store.claims < 6, "one claim took several tasks"
