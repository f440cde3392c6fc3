"""Flow control (``flows_core.store.FlowLimits``): concurrency slots, rate tokens,
deferred tasks and their waiting reason, on every adapter; and the worker enforcing
``max_concurrent`` / ``concurrency_key`` / ``max_running`` / ``rate_limit`` end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import uuid6

import flows_core as flows
from flows_core._errors import InvalidArgument
from flows_core._limits import parse_rate
from flows_core.store import FlowLimits, SlotHolder, WorkflowStatus
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit
from tests.contract.test_contract_engine import result, running, worker

HOUR = timedelta(hours=1)


def limits_of(adapter: Adapter) -> FlowLimits:
    store = adapter.store
    assert isinstance(store, FlowLimits), f"{type(store).__name__} lacks FlowLimits"
    return store


def holder(expires_at: datetime, *, kind: str = "task", workflow_id: str = "w") -> SlotHolder:
    return SlotHolder(
        kind=kind,
        tenant_id="t",
        shard_key="s",
        workflow_id=workflow_id,
        task_id=str(uuid6.uuid7()),
        token=str(uuid6.uuid7()),
        expires_at=expires_at,
    )


@contextlib.asynccontextmanager
async def ticking(adapter: Adapter) -> AsyncIterator[None]:
    """Let store time pass while workers run: the virtual clock moves 0.2 s every few
    milliseconds (deferred tasks come back); real clocks run by themselves."""
    if adapter.virtual_clock is None:
        yield
        return

    async def tick() -> None:
        while True:
            await adapter.pass_time(0.2)
            await asyncio.sleep(0.003)

    ticker = asyncio.ensure_future(tick())
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


# -- definitions --


def test_limits_are_checked_when_defined() -> None:
    assert parse_rate("100/s", "x").count == 100
    assert parse_rate(" 5 / m", "x").per == timedelta(minutes=1)
    for bad in ("100", "0/s", "10/d", "ten/s", 10):
        with pytest.raises(InvalidArgument, match="rate_limit must look like"):
            flows.activity("a", rate_limit=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="max_concurrent must be an integer"):
        flows.activity("a", max_concurrent=0)
    with pytest.raises(InvalidArgument, match="concurrency_key must be a function"):
        flows.activity("a", concurrency_key="customer")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="rate_key but no rate_limit"):
        flows.activity("a", rate_key=lambda i: i)
    with pytest.raises(InvalidArgument, match="max_running must be an integer"):
        flows.workflow("w", max_running=-1)

    @flows.activity("keyed", concurrency_key=lambda i: i)
    async def keyed(i: int) -> int:
        return i

    assert keyed.limits is not None
    assert keyed.limits.max_concurrent == 1


# -- the store: slots --


async def test_slots_up_to_capacity_and_given_back(adapter: Adapter) -> None:
    api = limits_of(adapter)
    far = adapter.store.clock.now() + HOUR
    a, b, c = holder(far), holder(far), holder(far)
    assert (await api.acquire_slot("a:x", "c", 2, a)).acquired
    assert (await api.acquire_slot("a:x", "c", 2, b)).acquired
    assert (await api.acquire_slot("a:x", "c", 2, a)).acquired  # holds one already
    full = await api.acquire_slot("a:x", "c", 2, c)
    assert not full.acquired
    assert full.retry_at is not None
    assert abs((full.retry_at - far).total_seconds()) < 1
    # another key, another bucket: other slots
    assert (await api.acquire_slot("a:x", "c:k1", 2, c)).acquired
    await api.release_slot("a:x", "c:k1", c)
    await api.release_slot("a:x", "c", a)
    await api.release_slot("a:x", "c", a)  # silent: nothing held
    assert (await api.acquire_slot("a:x", "c", 2, c)).acquired
    assert not (await api.acquire_slot("a:x", "c", 2, a)).acquired
    # a raised capacity takes effect at once; a lowered one as slots free
    assert (await api.acquire_slot("a:x", "c", 3, a)).acquired
    await api.release_slot("a:x", "c", b)
    assert not (await api.acquire_slot("a:x", "c", 1, b)).acquired  # slot 0 is c's
    usage = {(u.bucket, u.limit_key): u for u in await api.limit_usage(["a:x"])}
    assert usage[("a:x", "c")].held == 2
    waiting = usage[("a:x", "c")].waiting
    assert waiting >= 1
    # wait=False (an inline attempt that would rather queue): not remembered as a waiter
    assert not (await api.acquire_slot("a:x", "c", 1, holder(far), wait=False)).acquired
    usage = {(u.bucket, u.limit_key): u for u in await api.limit_usage(["a:x"])}
    assert usage[("a:x", "c")].waiting == waiting


async def test_a_dead_holder_loses_its_slot_a_live_one_keeps_it(adapter: Adapter) -> None:
    api = limits_of(adapter)
    kit = Kit(adapter)
    past = adapter.store.clock.now() - timedelta(seconds=1)
    ghost = holder(past)  # its task does not exist: its lease is over
    assert (await api.acquire_slot("a:y", "c", 1, ghost)).acquired
    late = holder(adapter.store.clock.now() + HOUR)
    assert (await api.acquire_slot("a:y", "c", 1, late)).acquired
    # a workflow holder stays while its workflow runs, past its expiry; once the
    # workflow ended, the next claimant that finds its slot expired takes it over
    running_wf, ended_wf = await kit.start(), await kit.start()
    for new, bucket in ((running_wf, "w:z"), (ended_wf, "w:e")):
        wf_holder = SlotHolder(
            kind="workflow",
            tenant_id=new.tenant_id,
            shard_key=new.shard_key,
            workflow_id=new.workflow_id,
            task_id=str(uuid6.uuid7()),
            token="",
            expires_at=past,
        )
        assert (await api.acquire_slot(bucket, "c", 1, wf_holder)).acquired
    await adapter.store.terminate_workflow(
        ended_wf.tenant_id,
        ended_wf.workflow_id,
        flows.events.WorkflowTerminatedEvent(reason="done", at=kit.now()),
    )
    other = holder(adapter.store.clock.now() + HOUR)
    assert not (await api.acquire_slot("w:z", "c", 1, other)).acquired
    assert (await api.acquire_slot("w:e", "c", 1, other)).acquired


async def test_a_freed_slot_wakes_the_oldest_waiter(adapter: Adapter) -> None:
    api = limits_of(adapter)
    kit = Kit(adapter)
    for _ in range(3):
        await kit.start()
    first, second, third = await kit.claim(limit=3)
    holders = [
        SlotHolder(
            kind="task",
            tenant_id=c.lease.tenant_id,
            shard_key=c.lease.shard_key,
            workflow_id=c.lease.workflow_id,
            task_id=c.lease.task_id,
            token=c.lease.token,
            expires_at=c.lease.expires_at,
        )
        for c in (first, second, third)
    ]
    assert (await api.acquire_slot("a:w", "c", 1, holders[0])).acquired
    later = kit.now() + HOUR
    for c, h in ((second, holders[1]), (third, holders[2])):
        assert not (await api.acquire_slot("a:w", "c", 1, h)).acquired
        await api.defer_task(c.lease, later, "waiting for a concurrency slot of a:w")
    assert await kit.claim() == []  # both deferred
    reason = await api.waiting_reason(second.lease.tenant_id, second.lease.workflow_id)
    assert reason == "waiting for a concurrency slot of a:w"
    await api.release_slot("a:w", "c", holders[0])
    woken = await kit.claim()
    assert [c.lease.workflow_id for c in woken] == [second.lease.workflow_id]
    assert woken[0].attempt == 1  # the deferred claim was not counted
    assert await api.waiting_reason(second.lease.tenant_id, second.lease.workflow_id) is None


# -- the store: rate tokens --


async def test_rate_tokens_are_reserved_one_interval_apart(adapter: Adapter) -> None:
    api = limits_of(adapter)
    every = timedelta(minutes=10)
    horizon = timedelta(minutes=25)
    tasks = [str(uuid6.uuid7()) for _ in range(4)]
    before = adapter.store.clock.now()
    assert await api.take_rate_token("a:r", "r", every, tasks[0], horizon) is None
    second = await api.take_rate_token("a:r", "r", every, tasks[1], horizon)
    third = await api.take_rate_token("a:r", "r", every, tasks[2], horizon)
    assert second is not None
    assert third is not None
    assert third - second == every  # exact: each reservation follows the last
    assert before + every <= second <= adapter.store.clock.now() + every
    # asking again does not take a second token
    assert await api.take_rate_token("a:r", "r", every, tasks[1], horizon) == second
    # beyond the horizon: nothing reserved, look again later
    beyond = await api.take_rate_token("a:r", "r", every, tasks[3], horizon)
    assert beyond == third + every - horizon  # when its token would be within reach
    # another key has its own tokens
    assert await api.take_rate_token("a:r", "r:k", every, tasks[3], horizon) is None
    usage = {u.limit_key: u for u in await api.limit_usage(["a:r"])}
    assert usage["r"].waiting == 2
    assert usage["r"].next_token_at is not None


# -- end to end --


def _counting() -> tuple[dict[str, int], Any]:
    seen = {"now": 0, "max": 0, "runs": 0}

    async def body(i: int) -> int:
        seen["now"] += 1
        seen["runs"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        try:
            await asyncio.sleep(0.005)
        finally:
            seen["now"] -= 1
        return i * 10

    return seen, body


async def test_max_concurrent_holds_across_workers(adapter: Adapter) -> None:
    seen, body = _counting()
    act = flows.activity(f"limited-{adapter.ns}", max_concurrent=2)(body)

    @flows.workflow(f"fan-{adapter.ns}")
    async def fan(ctx: flows.WorkflowContext, n: int) -> list[int]:
        return list(await flows.gather(*(ctx.execute(act, i) for i in range(n))))

    engine = flows.Engine(adapter.store)
    workers = [worker(adapter.store, workflows=[fan], activities=[act], concurrency=6)]
    workers.append(worker(adapter.store, activities=[act], concurrency=6))
    async with ticking(adapter), running(*workers):
        run = await engine.start(fan, 10)
        assert await result(run) == [i * 10 for i in range(10)]
    assert seen["runs"] == 10
    assert 1 <= seen["max"] <= 2
    # with a slot, a step runs inline under its workflow task; without one, queued
    assert workers[0].counters["inline_activities"] >= 1
    assert sum(w.counters["activity_tasks"] for w in workers) >= 1


async def test_concurrency_key_limits_each_key(adapter: Adapter) -> None:
    per_key: dict[str, int] = {}
    most: dict[str, int] = {}

    async def charge(inp: dict[str, Any]) -> str:
        key = inp["customer"]
        per_key[key] = per_key.get(key, 0) + 1
        most[key] = max(most.get(key, 0), per_key[key])
        try:
            await asyncio.sleep(0.005)
        finally:
            per_key[key] -= 1
        return key

    act = flows.activity(f"charge-{adapter.ns}", concurrency_key=lambda i: i["customer"])(charge)

    @flows.workflow(f"charges-{adapter.ns}")
    async def charges(ctx: flows.WorkflowContext, n: int) -> int:
        steps = [ctx.execute(act, {"customer": f"c{i % 2}", "i": i}) for i in range(n)]
        return len(await flows.gather(*steps))

    engine = flows.Engine(adapter.store)
    async with (
        ticking(adapter),
        running(worker(adapter.store, workflows=[charges], activities=[act], concurrency=8)),
    ):
        assert await result(await engine.start(charges, 8)) == 8
    assert most == {"c0": 1, "c1": 1}


async def test_max_running_workflows_wait_and_say_why(adapter: Adapter) -> None:
    name = f"single-{adapter.ns}"

    @flows.workflow(name, max_running=1)
    async def single(ctx: flows.WorkflowContext, n: int) -> int:
        await ctx.wait_for_signal("go", int)
        return n

    engine = flows.Engine(adapter.store)
    async with ticking(adapter), running(worker(adapter.store, workflows=[single])):
        first = await engine.start(single, 1)
        second = await engine.start(single, 2)

        async def reasons() -> list[str | None]:
            infos = [await engine.query(r.workflow_id) for r in (first, second)]
            return [i.waiting_reason for i in infos]

        slot = f"waiting for a running slot of w:{name}"
        for _ in range(1000):
            found = await reasons()
            if slot in found:
                break
            await asyncio.sleep(0.01)
        assert found.count(slot) == 1, found
        waiting = [first, second][found.index(slot)]
        holder_run = first if waiting is second else second
        await engine.signal(holder_run.workflow_id, "go", 0)
        assert await result(holder_run) in (1, 2)
        await engine.signal(waiting.workflow_id, "go", 0)
        assert await result(waiting) in (1, 2)
        info = await engine.query(waiting.workflow_id)
        assert info.status == WorkflowStatus.COMPLETED
        assert info.waiting_reason is None


async def test_rate_limit_spaces_starts_on_the_virtual_clock(adapter: Adapter) -> None:
    if adapter.virtual_clock is None:
        pytest.skip("counts tokens against the virtual clock (the SQL stores: see above)")
    clock = adapter.virtual_clock
    starts: list[datetime] = []

    async def call(i: int) -> int:
        starts.append(clock.now())
        return i

    act = flows.activity(f"api-{adapter.ns}", rate_limit="4/s")(call)

    @flows.workflow(f"calls-{adapter.ns}")
    async def calls(ctx: flows.WorkflowContext, n: int) -> int:
        return len(await flows.gather(*(ctx.execute(act, i) for i in range(n))))

    engine = flows.Engine(adapter.store)
    async with (
        ticking(adapter),
        running(worker(adapter.store, workflows=[calls], activities=[act], concurrency=8)),
    ):
        assert await result(await engine.start(calls, 12)) == 12
    starts.sort()
    assert len(starts) == 12
    # each start used a token of its own, tokens 0.25 s apart, and a start comes within
    # one interval of its token: at most 4 + 1 starts in any second
    for i in range(len(starts) - 5):
        assert (starts[i + 5] - starts[i]).total_seconds() >= 1.0 - 1e-6, starts
    assert (starts[-1] - starts[0]).total_seconds() >= 11 * 0.25 - 0.25


# -- priorities --


async def test_higher_priority_is_claimed_first_and_ages_in(adapter: Adapter) -> None:
    order: list[str] = []

    @flows.workflow(f"prio-{adapter.ns}")
    async def prio(ctx: flows.WorkflowContext, label: str) -> str:
        order.append(label)
        return label

    engine = flows.Engine(adapter.store)
    for i in range(4):
        await engine.start(prio, f"plain-{i}")
    await engine.start(prio, "urgent", priority=5)
    await engine.start(prio, "less-urgent", priority=2)
    with pytest.raises(InvalidArgument, match="priority must be an integer from 0"):
        await engine.start(prio, "x", priority=-1)
    async with ticking(adapter), running(worker(adapter.store, workflows=[prio], concurrency=1)):
        for _ in range(2000):
            if len(order) == 6:
                break
            await asyncio.sleep(0.01)
    assert order == ["urgent", "less-urgent", "plain-0", "plain-1", "plain-2", "plain-3"]


async def test_a_priority_start_is_one_write_that_moves_only_its_own_task(
    adapter: Adapter,
) -> None:
    """The priority travels with the start (NewWorkflow.claim_ahead, one transaction); a
    start whose id is taken moves nothing, not the existing workflow's task either (else
    "plain", pushed 9 levels ahead, would run before "urgent")."""
    order: list[str] = []

    @flows.workflow(f"prio-once-{adapter.ns}")
    async def once(ctx: flows.WorkflowContext, label: str) -> str:
        order.append(label)
        return label

    engine = flows.Engine(adapter.store)
    plain = await engine.start(once, "plain", workflow_id=f"p-{adapter.ns}")
    await engine.start(once, "urgent", priority=7)
    with pytest.raises(flows.WorkflowAlreadyExists):
        await engine.start(once, "again", workflow_id=plain.workflow_id, priority=9)
    async with ticking(adapter), running(worker(adapter.store, workflows=[once], concurrency=1)):
        for _ in range(2000):
            if len(order) == 2:
                break
            await asyncio.sleep(0.01)
    assert order == ["urgent", "plain"]


async def test_priority_is_aging_not_starvation(adapter: Adapter) -> None:
    """A task that has waited longer than a newer one's priority offset goes first."""
    order: list[str] = []

    @flows.workflow(f"aging-{adapter.ns}")
    async def aging(ctx: flows.WorkflowContext, label: str) -> str:
        order.append(label)
        return label

    engine = flows.Engine(adapter.store)
    await engine.start(aging, "old")
    await adapter.pass_time(1.2)  # the old task has waited more than one level
    await engine.start(aging, "urgent-1", priority=1)
    async with ticking(adapter), running(worker(adapter.store, workflows=[aging], concurrency=1)):
        for _ in range(2000):
            if len(order) == 2:
                break
            await asyncio.sleep(0.01)
    assert order == ["old", "urgent-1"]


async def test_activity_priority_orders_queued_steps(adapter: Adapter) -> None:
    order: list[str] = []

    async def record(label: str) -> str:
        order.append(label)
        return label

    plain = flows.activity(f"plain-{adapter.ns}")(record)
    urgent = flows.activity(f"urgent-{adapter.ns}", priority=10)(record)

    @flows.workflow(f"steps-{adapter.ns}")
    async def steps(ctx: flows.WorkflowContext, n: int) -> int:
        calls = [ctx.execute(plain, f"plain-{i}") for i in range(n)]
        calls.append(ctx.execute(urgent, "urgent"))
        return len(await flows.gather(*calls))

    engine = flows.Engine(adapter.store)
    run = await engine.start(steps, 3)
    # the workflow's worker runs no activity: they are queued
    async with ticking(adapter), running(worker(adapter.store, workflows=[steps])):
        for _ in range(2000):
            if (await engine.query(run.workflow_id)).history_length >= 5:
                break
            await asyncio.sleep(0.01)
    async with (
        ticking(adapter),
        running(
            worker(adapter.store, workflows=[steps], activities=[plain, urgent], concurrency=1)
        ),
    ):
        assert await result(run) == 4
    assert order[0] == "urgent"
    assert sorted(order[1:]) == ["plain-0", "plain-1", "plain-2"]
