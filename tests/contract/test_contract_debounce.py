"""Contract: debounced starts (``flows_core.store.DebounceStore`` and
``Engine.start(debounce=..., debounce_key=...)``) on every adapter: one open window per
key whose input each start replaces, fixed from its first start; claims close a window
under a lease; a firer that dies between the start and the delete leaves one workflow.

Time: windows are long enough on real stores (wall clock) that the starts of one
window are sure to fall in it; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core._debounce import Debouncer, debounced_workflow_id
from flows_core._sharding import HashSharder, key_for
from flows_core.store import DebounceStore, PendingStart, PendingStartLease, WorkflowStatus
from tests.contract.adapters import Adapter
from tests.contract.kit import StoreProxy, decoded, raw
from tests.contract.test_contract_engine import eventually, running, worker

LEASE = timedelta(seconds=0.3)


def window(adapter: Adapter) -> timedelta:
    """A window the starts of one test step surely fall in (real stores: wall clock)."""
    return timedelta(seconds=60 if adapter.virtual_clock else 2)


def debounce(adapter: Adapter) -> DebounceStore:
    assert isinstance(adapter.store, DebounceStore)
    return adapter.store


def make_workflow(adapter: Adapter) -> flows.Workflow[dict[str, int], int]:
    @flows.workflow(f"deb-{adapter.ns}")
    async def summed(ctx: flows.WorkflowContext, order: dict[str, int]) -> int:
        return order["n"]

    return summed


def key_of(adapter: Adapter, name: str, key: str, tenant: str) -> str:
    """The shard key a debounce key maps to (as the Engine computes it)."""
    return key_for(getattr(adapter.store, "sharder", None) or HashSharder(), name, key, tenant)


def pending(adapter: Adapter, key: str, n: int, *, tenant: str | None = None) -> PendingStart:
    tenant = tenant or f"t-{adapter.ns}"
    name = f"deb-{adapter.ns}"
    return PendingStart(
        tenant_id=tenant,
        workflow_name=name,
        debounce_key=key,
        shard_key=key_of(adapter, name, key, tenant),
        workflow_id=debounced_workflow_id(key, adapter.store.clock.now()),
        workflow_version=1,
        input=raw({"n": n}),
    )


async def close_window(adapter: Adapter) -> None:
    await adapter.pass_time(window(adapter).total_seconds() + 0.05)


# -- the store --


async def test_one_open_window_per_key_takes_the_last_input(adapter: Adapter) -> None:
    store = debounce(adapter)
    first = await store.debounce_start(pending(adapter, "k", 1), window=window(adapter))
    assert first.starts == 1
    assert first.fires_at is not None
    assert first.fires_at > adapter.store.clock.now()
    again = await store.debounce_start(pending(adapter, "k", 2), window=window(adapter))
    last = await store.debounce_start(pending(adapter, "k", 3), window=window(adapter))
    # fixed window: the id and the closing time are the first start's
    assert (again.workflow_id, again.fires_at) == (first.workflow_id, first.fires_at)
    assert (last.workflow_id, last.fires_at, last.starts) == (first.workflow_id, first.fires_at, 3)
    assert decoded(last.input) == {"n": 3}
    other = await store.debounce_start(pending(adapter, "other", 9), window=window(adapter))
    assert other.workflow_id != first.workflow_id
    assert other.starts == 1
    got = await store.get_pending_start(first.tenant_id, first.workflow_name, "k", first.shard_key)
    assert got is not None
    assert decoded(got.input) == {"n": 3}
    # nothing is claimable before the window closes
    assert await store.claim_pending_starts(None, limit=10, lease=LEASE) == []
    due = await store.next_pending_start_due([first.shard_key])
    assert due == first.fires_at


async def test_a_claim_closes_the_window_and_the_delete_is_fenced(adapter: Adapter) -> None:
    store = debounce(adapter)
    first = await store.debounce_start(pending(adapter, "k", 1), window=window(adapter))
    await store.debounce_start(pending(adapter, "k", 2), window=window(adapter))
    await close_window(adapter)
    claims = await store.claim_pending_starts([first.shard_key], limit=10, lease=LEASE)
    mine = [c for c in claims if c.pending.workflow_id == first.workflow_id]
    assert len(mine) == 1
    claim = mine[0]
    assert decoded(claim.pending.input) == {"n": 2}
    assert claim.pending.starts == 2
    assert await store.claim_pending_starts([first.shard_key], limit=10, lease=LEASE) == []
    # a start now opens a new window: the claimed one never changes again
    later = await store.debounce_start(pending(adapter, "k", 3), window=window(adapter))
    assert later.workflow_id != first.workflow_id
    assert later.starts == 1
    wrong = msgspec.structs.replace(claim.lease, token="00000000-0000-7000-8000-000000000000")
    assert not await store.finish_pending_start(wrong)
    assert await store.finish_pending_start(claim.lease)
    assert not await store.finish_pending_start(claim.lease)
    got = await store.get_pending_start(first.tenant_id, first.workflow_name, "k", first.shard_key)
    assert got is not None
    assert got.workflow_id == later.workflow_id


async def test_a_start_after_the_window_closed_opens_a_new_one(adapter: Adapter) -> None:
    """Unclaimed but due: the old window fires as it is, the start opens the next."""
    store = debounce(adapter)
    first = await store.debounce_start(pending(adapter, "k", 1), window=window(adapter))
    await close_window(adapter)
    second = await store.debounce_start(pending(adapter, "k", 2), window=window(adapter))
    assert second.workflow_id != first.workflow_id
    assert second.starts == 1
    claims = await store.claim_pending_starts([first.shard_key], limit=10, lease=LEASE)
    assert [(c.pending.workflow_id, decoded(c.pending.input)) for c in claims] == [
        (first.workflow_id, {"n": 1})
    ]


async def test_an_expired_claim_is_claimed_again(adapter: Adapter) -> None:
    store = debounce(adapter)
    first = await store.debounce_start(pending(adapter, "k", 1), window=window(adapter))
    await close_window(adapter)
    [claim] = await store.claim_pending_starts([first.shard_key], limit=10, lease=LEASE)
    assert await store.next_pending_start_due([first.shard_key]) == claim.lease.expires_at
    await adapter.pass_time(LEASE.total_seconds() + 0.05)
    [again] = await store.claim_pending_starts([first.shard_key], limit=10, lease=LEASE)
    assert again.pending.workflow_id == first.workflow_id
    assert again.lease.token != claim.lease.token
    assert not await store.finish_pending_start(claim.lease)
    assert await store.finish_pending_start(again.lease)
    assert await store.next_pending_start_due([first.shard_key]) is None


# -- the engine and workers --


async def test_only_the_last_start_of_a_window_runs(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    tenant = f"t-{adapter.ns}"
    span = window(adapter)
    runs = [
        await engine.start(summed, {"n": n}, tenant_id=tenant, debounce=span, debounce_key="cart")
        for n in (1, 2, 3)
    ]
    assert len({r.workflow_id for r in runs}) == 1
    assert [r.starts for r in runs] == [1, 2, 3]
    assert runs[0].workflow_id.startswith("cart@")
    assert len({r.fires_at for r in runs}) == 1
    other = await engine.start(summed, {"n": 7}, tenant_id=tenant, debounce=span, debounce_key="x")
    with pytest.raises(flows.WorkflowNotFound):  # nothing runs before the window closes
        await engine.query(runs[0].workflow_id, tenant_id=tenant)
    async with running(worker(adapter.store, workflows=[summed], poll_interval=0.05)):
        await close_window(adapter)
        assert await asyncio.wait_for(runs[0].result(), 30) == 3
        assert await asyncio.wait_for(other.result(), 30) == 7
    listed = await engine.list(tenant_id=tenant, limit=100)
    assert sorted(w.workflow_id for w in listed) == sorted([runs[0].workflow_id, other.workflow_id])
    assert all(w.status == WorkflowStatus.COMPLETED for w in listed)


async def test_windows_follow_each_other(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    tenant = f"t-{adapter.ns}"
    span = window(adapter)
    one = await engine.start(summed, {"n": 1}, tenant_id=tenant, debounce=span, debounce_key="k")
    await close_window(adapter)
    two = await engine.start(summed, {"n": 2}, tenant_id=tenant, debounce=span, debounce_key="k")
    assert two.workflow_id != one.workflow_id
    assert two.starts == 1
    async with running(worker(adapter.store, workflows=[summed], poll_interval=0.05)):
        assert await asyncio.wait_for(one.result(), 30) == 1
        await close_window(adapter)
        assert await asyncio.wait_for(two.result(), 30) == 2


class DiesBeforeDeleting(StoreProxy):
    """A firer that dies between starting the window's workflow and deleting the row."""

    died = 0

    async def finish_pending_start(self, lease: PendingStartLease) -> bool:
        self.died += 1
        raise ConnectionError("firer killed after the start, before the delete")


async def test_a_firer_dying_after_the_start_leaves_one_workflow(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    tenant = f"t-{adapter.ns}"
    run = await engine.start(
        summed, {"n": 5}, tenant_id=tenant, debounce=window(adapter), debounce_key="k"
    )
    await close_window(adapter)
    dying = DiesBeforeDeleting(adapter.store)
    sharder = getattr(adapter.store, "sharder", None) or HashSharder()
    firer = Debouncer(dying, adapter.store.clock, sharder, lease=LEASE)  # type: ignore[arg-type]
    assert await firer.run_due(None, 10) >= 1
    assert dying.died >= 1
    record = await adapter.store.get_workflow(tenant, run.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    await adapter.pass_time(LEASE.total_seconds() + 0.05)
    healthy = Debouncer(debounce(adapter), adapter.store.clock, sharder, lease=LEASE)
    assert await healthy.run_due(None, 10) >= 1  # starts it again: already there
    store = debounce(adapter)
    assert await store.next_pending_start_due(None) is None or (
        await store.get_pending_start(tenant, summed.name, "k", record.shard_key) is None
    )
    listed = await engine.list(tenant_id=tenant, limit=100)
    assert [w.workflow_id for w in listed] == [run.workflow_id]
    async with running(worker(adapter.store, workflows=[summed], poll_interval=0.05)):
        await adapter.pass_time(0.01)
        assert await asyncio.wait_for(run.result(), 30) == 5


async def test_debounce_arguments_are_checked(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    bad: list[dict[str, Any]] = [
        {"debounce": timedelta(seconds=1)},
        {"debounce_key": "k"},
        {"debounce": timedelta(0), "debounce_key": "k"},
        {"debounce": 5, "debounce_key": "k"},
        {"debounce": timedelta(seconds=1), "debounce_key": " k"},
        {"debounce": timedelta(seconds=1), "debounce_key": "k", "workflow_id": "w"},
    ]
    for kw in bad:
        with pytest.raises(flows.InvalidArgument):
            await engine.start(summed, {"n": 1}, **kw)
    with pytest.raises(flows.InvalidArgument, match="debounce key"):
        await engine.start(summed, {"n": 1}, debounce=timedelta(seconds=1), debounce_key="")
    await eventually(lambda: engine.list(limit=10), lambda found: found == [])


async def test_racing_starts_share_one_window(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engines = [flows.Engine(adapter.store, workflows=[summed]) for _ in range(3)]
    tenant = f"t-{adapter.ns}"
    span = window(adapter)
    runs = await asyncio.gather(
        *(
            engines[n % 3].start(
                summed, {"n": n}, tenant_id=tenant, debounce=span, debounce_key="race"
            )
            for n in range(12)
        )
    )
    assert len({r.workflow_id for r in runs}) == 1
    assert sorted(r.starts for r in runs) == list(range(1, 13))
    last = max(runs, key=lambda r: r.starts)
    store = debounce(adapter)
    shard_key = key_of(adapter, summed.name, "race", tenant)
    got = await store.get_pending_start(tenant, summed.name, "race", shard_key)
    assert got is not None
    assert got.starts == 12
    workers = [worker(adapter.store, workflows=[summed], poll_interval=0.05) for _ in range(3)]
    async with running(*workers):
        await close_window(adapter)
        out = await asyncio.wait_for(last.result(), 30)
    assert out == decoded(got.input)["n"]
    listed = await engines[0].list(tenant_id=tenant, limit=100)
    assert [w.workflow_id for w in listed] == [last.workflow_id]


async def test_three_workers_fire_each_window_once(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    tenant = f"t-{adapter.ns}"
    span = window(adapter)
    runs = {}
    for key in ("a", "b", "c", "d", "e"):
        for n in range(3):
            runs[key] = await engine.start(
                summed, {"n": n}, tenant_id=tenant, debounce=span, debounce_key=key
            )
    workers = [worker(adapter.store, workflows=[summed], poll_interval=0.05) for _ in range(3)]
    async with running(*workers):
        await close_window(adapter)
        for run in runs.values():
            assert await asyncio.wait_for(run.result(), 30) == 2
    listed = await engine.list(tenant_id=tenant, limit=100)
    assert sorted(w.workflow_id for w in listed) == sorted(r.workflow_id for r in runs.values())
    store = debounce(adapter)
    for run in runs.values():
        shard_key = key_for(
            getattr(adapter.store, "sharder", None) or HashSharder(),
            summed.name,
            run.debounce_key,
            tenant,
        )
        assert (
            await store.get_pending_start(tenant, summed.name, run.debounce_key, shard_key) is None
        )


async def test_a_debounced_run_shows_its_window(adapter: Adapter) -> None:
    summed = make_workflow(adapter)
    engine = flows.Engine(adapter.store, workflows=[summed])
    tenant = f"t-{adapter.ns}"
    span = window(adapter)
    one = await engine.start(summed, {"n": 1}, tenant_id=tenant, debounce=span, debounce_key="w")
    two = await engine.start(summed, {"n": 2}, tenant_id=tenant, debounce=span, debounce_key="w")
    seen = await one.pending()
    assert seen is not None
    assert (seen.workflow_id, seen.starts, seen.fires_at) == (one.workflow_id, 2, one.fires_at)
    assert decoded(seen.input) == {"n": 2}
    async with running(worker(adapter.store, workflows=[summed], poll_interval=0.05)):
        await close_window(adapter)
        assert await asyncio.wait_for(two.result(), 30) == 2
    assert await one.pending() is None
