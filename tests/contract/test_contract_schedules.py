"""Contract: durable schedules (``flows_core.store.ScheduleStore`` and ``Engine.schedule``)
on every adapter: rows, revisions, claims under a lease, the fenced advance, and exactly
one workflow per tick across several workers and a scheduler that dies mid-tick."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

import flows_core as flows
from flows_core._schedules import Scheduler, tick_workflow_id
from flows_core._sharding import key_for
from flows_core.store import (
    ScheduleAdvance,
    ScheduleRecord,
    ScheduleStore,
    WorkflowStatus,
)
from tests.contract.adapters import Adapter
from tests.contract.kit import StoreProxy, raw
from tests.contract.test_contract_engine import eventually, running, worker

SHORT = timedelta(seconds=0.3)
ZONE = ZoneInfo("Europe/Paris")


def schedules(adapter: Adapter) -> ScheduleStore:
    assert isinstance(adapter.store, ScheduleStore)
    return adapter.store


def make_workflow(adapter: Adapter) -> flows.Workflow[str, str]:
    @flows.workflow(f"tick-{adapter.ns}")
    async def ticked(ctx: flows.WorkflowContext, name: str) -> str:
        return f"ran {name}"

    return ticked


def row(adapter: Adapter, sid: str, *, due: datetime | None, **kw: Any) -> ScheduleRecord:
    engine = flows.Engine(adapter.store)
    tenant = f"t-{adapter.ns}"
    name = f"tick-{adapter.ns}"
    fields: dict[str, Any] = {
        "tenant_id": tenant,
        "schedule_id": sid,
        "shard_key": key_for(engine.planner.sharder, name, sid, tenant),
        "workflow_name": name,
        "workflow_version": 1,
        "input": raw({"n": 1}),
        "spec": raw({"every": "PT1S"}),
        "next_tick_at": due,
        "due_at": due,
    }
    fields.update(kw)
    return ScheduleRecord(**fields)


async def ticks_of(engine: flows.Engine, tenant: str, sid: str) -> list[str]:
    found = await engine.list(tenant_id=tenant, id_prefix=f"{sid}@", limit=1000)
    return sorted(w.workflow_id for w in found)


def contiguous(ids: list[str], sid: str, every: timedelta) -> bool:
    """Whether ``ids`` are the workflows of consecutive ticks, each once."""
    times = [datetime.strptime(i.split("@")[1], "%Y-%m-%dT%H:%M:%SZ") for i in ids]
    return len(set(ids)) == len(ids) and all(b - a == every for a, b in itertools.pairwise(times))


# -- the store --


async def test_put_get_list_delete_and_revisions(adapter: Adapter) -> None:
    store = schedules(adapter)
    tenant = f"t-{adapter.ns}"
    now = adapter.store.clock.now()
    first = row(adapter, "a", due=now + timedelta(hours=1))
    assert await store.put_schedule(first, expected_revision=None)
    assert not await store.put_schedule(first, expected_revision=None)  # taken
    got = await store.get_schedule(tenant, "a")
    assert got.revision == 1
    assert got.workflow_name == first.workflow_name
    assert msgspec.json.decode(got.input) == {"n": 1}
    assert got.due_at == first.due_at
    assert not got.paused
    changed = msgspec.structs.replace(got, paused=True, input=raw({"n": 2}))
    assert not await store.put_schedule(changed, expected_revision=7)  # stale revision
    assert await store.put_schedule(changed, expected_revision=1)
    got = await store.get_schedule(tenant, "a")
    assert got.revision == 2
    assert got.paused
    assert msgspec.json.decode(got.input) == {"n": 2}
    for sid in ("c", "b"):
        assert await store.put_schedule(row(adapter, sid, due=None), expected_revision=None)
    listed = await store.list_schedules(tenant, after=None, limit=10)
    assert [r.schedule_id for r in listed] == ["a", "b", "c"]
    page = await store.list_schedules(tenant, after=("a", tenant), limit=1)
    assert [r.schedule_id for r in page] == ["b"]
    assert await store.list_schedules(f"u-{adapter.ns}", after=None, limit=10) == []
    assert await store.delete_schedule(tenant, "b")
    assert not await store.delete_schedule(tenant, "b")
    with pytest.raises(flows.ScheduleNotFound):
        await store.get_schedule(tenant, "b")


async def test_claim_leases_and_the_advance_is_fenced(adapter: Adapter) -> None:
    store = schedules(adapter)
    tenant = f"t-{adapter.ns}"
    now = adapter.store.clock.now()
    put = row(adapter, "due", due=now - timedelta(seconds=5))
    keys = [put.shard_key]
    assert await store.put_schedule(put, expected_revision=None)
    assert await store.put_schedule(
        row(adapter, "later", due=now + timedelta(hours=1)), expected_revision=None
    )
    paused = row(adapter, "paused", due=now - timedelta(seconds=5), paused=True)
    assert await store.put_schedule(paused, expected_revision=None)
    all_keys = list({put.shard_key, paused.shard_key, *keys})
    claims = await store.claim_schedules(all_keys, limit=10, lease=SHORT)
    assert [c.schedule.schedule_id for c in claims if c.schedule.tenant_id == tenant] == ["due"]
    claim = next(c for c in claims if c.schedule.schedule_id == "due")
    assert await store.claim_schedules(all_keys, limit=10, lease=SHORT) == []  # leased
    due = await store.next_schedule_due(all_keys)
    assert due is not None
    assert due > now
    await adapter.pass_time(0.5)  # the lease runs out: claimable again, new token
    again = await store.claim_schedules(keys, limit=10, lease=timedelta(seconds=30))
    assert [c.schedule.schedule_id for c in again] == ["due"]
    later = now + timedelta(hours=2)
    advance = ScheduleAdvance(
        lease=claim.lease,
        revision=claim.schedule.revision,
        next_tick_at=later,
        due_at=later,
        trigger_at=None,
        last_tick_at=put.due_at,
        last_workflow_id="due@x",
        buffered_tick_at=None,
    )
    assert not await store.advance_schedule(advance)  # the first lease was taken over
    assert await store.advance_schedule(msgspec.structs.replace(advance, lease=again[0].lease))
    got = await store.get_schedule(tenant, "due")
    assert got.due_at == later
    assert got.last_workflow_id == "due@x"
    assert got.revision == 1
    assert await store.claim_schedules(keys, limit=10, lease=SHORT) == []


async def test_a_client_write_during_a_claim_keeps_its_plan(adapter: Adapter) -> None:
    """The scheduler's advance records what it fired, but a client's put meanwhile (a
    pause, an update, a trigger) keeps its next tick and due time."""
    store = schedules(adapter)
    tenant = f"t-{adapter.ns}"
    now = adapter.store.clock.now()
    put = row(adapter, "s", due=now - timedelta(seconds=1))
    assert await store.put_schedule(put, expected_revision=None)
    (claim,) = await store.claim_schedules([put.shard_key], limit=5, lease=timedelta(seconds=30))
    resumed_at = now + timedelta(days=1)
    client = msgspec.structs.replace(claim.schedule, due_at=resumed_at, next_tick_at=resumed_at)
    assert await store.put_schedule(client, expected_revision=claim.schedule.revision)
    assert await store.advance_schedule(
        ScheduleAdvance(
            lease=claim.lease,
            revision=claim.schedule.revision,
            next_tick_at=now + timedelta(seconds=1),
            due_at=now + timedelta(seconds=1),
            trigger_at=None,
            last_tick_at=put.due_at,
            last_workflow_id="s@fired",
            buffered_tick_at=None,
        )
    )
    got = await store.get_schedule(tenant, "s")
    assert got.due_at == resumed_at
    assert got.next_tick_at == resumed_at
    assert got.last_workflow_id == "s@fired"
    assert got.revision == 2


async def test_a_paused_schedule_is_claimed_only_for_a_trigger(adapter: Adapter) -> None:
    store = schedules(adapter)
    now = adapter.store.clock.now()
    put = row(adapter, "p", due=now - timedelta(seconds=1), paused=True)
    assert await store.put_schedule(put, expected_revision=None)
    assert await store.claim_schedules([put.shard_key], limit=5, lease=SHORT) == []
    assert await store.next_schedule_due([put.shard_key]) is None
    triggered = msgspec.structs.replace(put, trigger_at=now)
    assert await store.put_schedule(triggered, expected_revision=1)
    claims = await store.claim_schedules([put.shard_key], limit=5, lease=SHORT)
    assert [c.schedule.trigger_at for c in claims] == [now]


# -- the engine and the workers --


async def test_engine_schedule_api(adapter: Adapter) -> None:
    ticked = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[ticked])
    tenant = f"t-{adapter.ns}"
    with pytest.raises(flows.InvalidArgument, match=r"bad cron expression '61 \* \* \* \*'"):
        flows.ScheduleSpec(cron="61 * * * *")
    with pytest.raises(flows.InvalidArgument, match="unknown time zone 'Mars/Olympus'"):
        flows.ScheduleSpec(cron="0 3 * * *", timezone="Mars/Olympus")
    with pytest.raises(flows.InvalidArgument, match="exactly one of cron= or every="):
        flows.ScheduleSpec()
    spec = flows.ScheduleSpec(cron="0 3 * * *", timezone="Europe/Paris")
    made = await engine.schedule("nightly", ticked, "n", spec=spec, tenant_id=tenant)
    assert made.spec == spec
    assert made.input == "n"
    assert not made.paused
    nxt = made.next_fire_at
    assert nxt is not None
    assert nxt.astimezone(ZONE).hour == 3
    assert len(made.next_fire_times) == 5
    assert (await engine.schedule("nightly", ticked, "n", spec=spec, tenant_id=tenant)) == made
    paused = await engine.pause_schedule("nightly", tenant_id=tenant)
    assert paused.paused
    assert paused.next_fire_at is None
    resumed = await engine.resume_schedule("nightly", tenant_id=tenant)
    assert not resumed.paused
    assert resumed.next_fire_at == nxt
    hourly = flows.ScheduleSpec(cron="@hourly")
    updated = await engine.update_schedule("nightly", spec=hourly, tenant_id=tenant)
    assert updated.spec == hourly
    assert updated.input == "n"
    assert [s.schedule_id for s in await engine.list_schedules(tenant_id=tenant)] == ["nightly"]
    await engine.delete_schedule("nightly", tenant_id=tenant)
    with pytest.raises(flows.ScheduleNotFound, match="'nightly'"):
        await engine.get_schedule("nightly", tenant_id=tenant)
    with pytest.raises(flows.ScheduleNotFound):
        await engine.delete_schedule("nightly", tenant_id=tenant)
    with pytest.raises(flows.PayloadError):
        await engine.schedule("bad", ticked, 3, spec=spec, tenant_id=tenant)


async def test_a_trigger_fires_once_through_a_worker(adapter: Adapter) -> None:
    ticked = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[ticked])
    tenant = f"t-{adapter.ns}"
    spec = flows.ScheduleSpec(cron="0 3 1 1 *")
    await engine.schedule("yearly", ticked, "now", spec=spec, tenant_id=tenant, paused=True)
    workflow_id = await engine.trigger_schedule("yearly", tenant_id=tenant)
    assert workflow_id.startswith("yearly@")
    async with running(worker(adapter.store, workflows=[ticked])):
        await adapter.pass_time(0.01)
        await eventually(lambda: ticks_of(engine, tenant, "yearly"), lambda ids: ids != [])
        out = await asyncio.wait_for(engine.wait_for_result(workflow_id, tenant_id=tenant), 20)
        assert out == "ran now"
        got = await eventually(
            lambda: engine.get_schedule("yearly", tenant_id=tenant),
            lambda s: s.last_workflow_id == workflow_id,
        )
    assert got.paused
    assert await ticks_of(engine, tenant, "yearly") == [workflow_id]


async def test_every_tick_starts_one_workflow_across_workers(adapter: Adapter) -> None:
    """Three workers (three schedulers) on one store: each tick once, none missed."""
    ticked = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[ticked])
    tenant = f"t-{adapter.ns}"
    every = timedelta(seconds=1)
    spec = flows.ScheduleSpec(every=every)
    made = await engine.schedule("fast", ticked, "x", spec=spec, tenant_id=tenant)
    workers = [worker(adapter.store, workflows=[ticked], poll_interval=0.05) for _ in range(3)]
    async with running(*workers):
        for _ in range(8):
            await adapter.pass_time(0.5)
        await eventually(lambda: ticks_of(engine, tenant, "fast"), lambda ids: len(ids) >= 3)
        await engine.pause_schedule("fast", tenant_id=tenant)
        await adapter.pass_time(0.3)  # a claim under way when paused ends
    ids = await ticks_of(engine, tenant, "fast")
    assert ids[0] == tick_workflow_id("fast", made.next_fire_times[0])
    assert contiguous(ids, "fast", every), ids
    for info in await engine.list(tenant_id=tenant, id_prefix="fast@", limit=1000):
        assert info.status in (WorkflowStatus.COMPLETED, WorkflowStatus.RUNNING)


class DiesBeforeAdvancing(StoreProxy):
    """A scheduler that dies between starting a tick's workflow and advancing the
    schedule: the advance never happens (its lease then runs out)."""

    died = 0

    async def advance_schedule(self, advance: ScheduleAdvance) -> bool:
        self.died += 1
        raise ConnectionError("scheduler killed after the start, before the advance")


async def test_a_scheduler_dying_mid_tick_leaves_one_workflow_per_tick(adapter: Adapter) -> None:
    ticked = make_workflow(adapter)
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[ticked])
    spec = flows.ScheduleSpec(every=timedelta(hours=1))
    await engine.schedule("h", ticked, "x", spec=spec, tenant_id=tenant)
    workflow_id = await engine.trigger_schedule("h", tenant_id=tenant)
    dying = DiesBeforeAdvancing(adapter.store)
    sharder = engine.planner.sharder
    doomed = Scheduler(dying, dying.clock, sharder, lease=SHORT)  # type: ignore[arg-type]
    assert await doomed.run_due(None, 10) >= 1
    assert dying.died >= 1
    assert await ticks_of(engine, tenant, "h") == [workflow_id]  # started, not advanced
    await adapter.pass_time(0.5)  # its lease runs out
    healthy = Scheduler(schedules(adapter), adapter.store.clock, sharder, lease=SHORT)
    assert await healthy.run_due(None, 10) >= 1  # the same trigger fires again: no-op
    got = await engine.get_schedule("h", tenant_id=tenant)
    assert got.last_workflow_id == workflow_id
    assert await ticks_of(engine, tenant, "h") == [workflow_id]
    record = await adapter.store.get_workflow(tenant, workflow_id)
    assert record.name == ticked.name
    assert msgspec.json.decode(record.input) == "x"


async def test_overlap_skip_and_allow_all(adapter: Adapter) -> None:
    """A workflow that runs until signalled: SKIP starts nothing while it runs,
    ALLOW_ALL starts each trigger."""

    @flows.workflow(f"long-{adapter.ns}")
    async def long(ctx: flows.WorkflowContext, _: str) -> str:
        return await ctx.wait_for_signal("done", str)

    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[long])
    sharder = engine.planner.sharder
    scheduler = Scheduler(schedules(adapter), adapter.store.clock, sharder, lease=SHORT)
    yearly = "0 0 1 1 *"
    for sid, overlap in (("skip", flows.Overlap.SKIP), ("all", flows.Overlap.ALLOW_ALL)):
        spec = flows.ScheduleSpec(cron=yearly, overlap=overlap)
        await engine.schedule(sid, long, "", spec=spec, tenant_id=tenant)
        first = await engine.trigger_schedule(sid, tenant_id=tenant)
        await scheduler.run_due(None, 50)
        await adapter.pass_time(1.1)  # the next trigger has another second in its id
        second = await engine.trigger_schedule(sid, tenant_id=tenant)
        assert second != first
        await scheduler.run_due(None, 50)
        ids = await ticks_of(engine, tenant, sid)
        assert ids == ([first] if overlap == flows.Overlap.SKIP else sorted([first, second]))
        info = await engine.get_schedule(sid, tenant_id=tenant)
        assert info.last_workflow_id == ids[-1]
        assert (info.next_fire_times[0].month, info.next_fire_times[0].day) == (1, 1)


class CountsStarts(StoreProxy):
    """Counts every start attempt by workflow id."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.attempts: Counter[str] = Counter()

    async def start_workflow(self, new: Any, *, tx: Any = None) -> None:
        self.attempts[new.workflow_id] += 1
        await self._store.start_workflow(new, tx=tx)


async def test_racing_schedulers_never_start_a_tick_twice(adapter: Adapter) -> None:
    """Five schedulers race over ten schedules, each 20 ticks behind: every tick is
    started once (one start attempt: the claims never overlap), none is missed."""
    ticked = make_workflow(adapter)
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[ticked])
    store = schedules(adapter)
    spec = flows.ScheduleSpec(every=timedelta(seconds=1), overlap=flows.Overlap.ALLOW_ALL)
    behind = adapter.store.clock.now().replace(microsecond=0) - timedelta(seconds=20)
    sids = [f"r{n}" for n in range(10)]
    for sid in sids:
        await engine.schedule(sid, ticked, sid, spec=spec, tenant_id=tenant)
        found = await store.get_schedule(tenant, sid)
        late = msgspec.structs.replace(found, next_tick_at=behind, due_at=behind)
        assert await store.put_schedule(late, expected_revision=found.revision)
    counting = CountsStarts(adapter.store)
    sharder = engine.planner.sharder
    racers = [
        Scheduler(counting, adapter.store.clock, sharder, lease=timedelta(seconds=30))  # type: ignore[arg-type]
        for _ in range(5)
    ]
    for _ in range(10):
        await asyncio.gather(*(r.run_due(None, 2) for r in racers))
    assert counting.attempts, "nothing fired"
    assert set(counting.attempts.values()) == {1}, counting.most_common(3)
    for sid in sids:
        ids = await ticks_of(engine, tenant, sid)
        assert ids[0] == tick_workflow_id(sid, behind)
        assert len(ids) >= 20
        assert contiguous(ids, sid, timedelta(seconds=1)), ids
