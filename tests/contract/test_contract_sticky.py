"""Sticky workflows on every store: the claim returns only the events after a history
length the claimant holds (``ClaimRequest.cached``), and a Worker that keeps suspended
instances runs workflows exactly as one that replays every task."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

import flows_core as flows
from flows_core.events import Event, SignalReceived, SignalWaitStarted, encode_event
from flows_core.store import (
    CachedHistory,
    ClaimedTask,
    ClaimRequest,
    WorkflowTaskClaim,
    continued_length,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import LONG, Kit, canon
from tests.contract.test_contract_engine import eventually, result, running, worker


async def claim_cached(
    kit: Kit, cached: Sequence[CachedHistory], *, acts: Sequence[str] = ()
) -> list[ClaimedTask]:
    return await kit.store.claim(
        ClaimRequest(
            owner="worker-a",
            workflow_types=[(kit.wf, 1)],
            activity_names=list(acts),
            limit=10,
            lease=LONG,
            shard_keys=list(kit.shards_used),
            cached=list(cached),
        )
    )


def hint(kit: Kit, workflow_id: str, length: int, *, seed: int = 7, **kw: Any) -> CachedHistory:
    fields: dict[str, Any] = {
        "tenant_id": kit.tenant,
        "workflow_id": workflow_id,
        "shard_key": kit.shard,
        "history_length": length,
        "seed": seed,
    }
    fields.update(kw)
    return CachedHistory(**fields)


def wait_event(seq: int, kit: Kit) -> SignalWaitStarted:
    return SignalWaitStarted(seq=seq, name="go", timeout_at=None, at=kit.now())


async def suspended(kit: Kit, count: int = 1) -> list[tuple[str, list[Event]]]:
    """Workflows whose first task committed a signal wait (history length 2), then got
    a signal: their workflow tasks are claimable. Their ids and histories of 2."""
    for _ in range(count):
        await kit.start()
    made = []
    for first in await kit.claim(acts=()):
        assert isinstance(first, WorkflowTaskClaim)
        events: list[Event] = [wait_event(1, kit)]
        await kit.store.commit_workflow_task(kit.commit(first, events, next_seq=2))
        wf_id = first.lease.workflow_id
        await kit.store.signal_workflow(kit.tenant, wf_id, kit.signal("go", 1))
        made.append((wf_id, [*first.history, *events]))
    assert len(made) == count
    return made


async def test_claim_returns_only_the_events_after_the_cached_length(kit: Kit) -> None:
    ((wf_id, held),) = await suspended(kit)
    (claim,) = await claim_cached(kit, [hint(kit, wf_id, 2)])
    assert isinstance(claim, WorkflowTaskClaim)
    assert claim.history_from == 2
    assert claim.workflow.history_length == 3
    assert [type(e) for e in claim.history] == [SignalReceived]
    whole = await kit.store.get_history(kit.tenant, wf_id)
    assert canon(whole[:2]) == canon(held)
    assert canon(claim.history) == canon(whole[2:])
    # The commit is fenced by the whole length, as with any claim.
    events: list[Event] = [wait_event(2, kit)]
    commit = kit.commit(claim, events, next_seq=3, claimed_history_length=3)
    assert await kit.store.commit_workflow_task(commit) == []
    assert len(await kit.store.get_history(kit.tenant, wf_id)) == 4


async def test_claim_returns_the_whole_history_when_the_cache_does_not_continue_it(
    kit: Kit,
) -> None:
    ((wf_id, _),) = await suspended(kit)
    stale = [
        hint(kit, wf_id, 2, seed=8),  # another run (or a workflow started anew)
        hint(kit, wf_id, 4),  # longer than the history
        hint(kit, wf_id, 0),
        hint(kit, wf_id, 2, tenant_id=kit.other_tenant),
        hint(kit, f"other-{wf_id}", 2),
    ]
    for entry in stale:
        (claim,) = await claim_cached(kit, [entry])
        assert isinstance(claim, WorkflowTaskClaim)
        assert claim.history_from == 0, entry
        assert len(claim.history) == claim.workflow.history_length == 3
        if entry.workflow_id == wf_id and entry.tenant_id == kit.tenant:
            assert continued_length(entry, claim.history) == 0
        await kit.store.release(claim.lease)


async def test_a_cached_length_another_claimant_went_past_is_continued(kit: Kit) -> None:
    """The history below a length never changes within a run: a worker that holds 1
    event gets the events after it, another claimant's commands included."""
    ((wf_id, held),) = await suspended(kit)
    (claim,) = await claim_cached(kit, [hint(kit, wf_id, 1)])
    assert isinstance(claim, WorkflowTaskClaim)
    assert claim.history_from == 1
    assert canon(claim.history) == canon((await kit.store.get_history(kit.tenant, wf_id))[1:])
    assert canon(claim.history[0]) == canon(held[1])


async def test_the_whole_cached_length_gives_an_empty_history(kit: Kit) -> None:
    ((wf_id, _),) = await suspended(kit)
    first = await kit.claim_wf()
    await kit.store.release(first.lease)  # the signal is in the history now: length 3
    (claim,) = await claim_cached(kit, [hint(kit, wf_id, 3)])
    assert isinstance(claim, WorkflowTaskClaim)
    assert (claim.history_from, claim.history) == (3, [])


async def test_one_claim_serves_cached_and_uncached_workflows(kit: Kit) -> None:
    (cached_id, _), (other_id, _) = await suspended(kit, 2)
    got = await claim_cached(kit, [hint(kit, cached_id, 2), hint(kit, f"gone-{other_id}", 2)])
    by_id = {c.lease.workflow_id: c for c in got if isinstance(c, WorkflowTaskClaim)}
    assert set(by_id) == {cached_id, other_id}
    assert (by_id[cached_id].history_from, len(by_id[cached_id].history)) == (2, 1)
    assert (by_id[other_id].history_from, len(by_id[other_id].history)) == (0, 3)


# -- end to end: a Worker with the sticky cache --


@flows.activity("sticky-double")
async def double(n: int) -> int:
    return 2 * n


@flows.workflow("sticky-counter")
async def counter(ctx: flows.WorkflowContext, rounds: int) -> list[int]:
    """Waits for ``rounds`` signals; each goes through an activity."""
    seen: list[int] = []
    for _ in range(rounds):
        n = await ctx.wait_for_signal("add", int)
        seen.append(await ctx.execute(double, n))
        if n < 0:
            raise TypeError("a negative number is a bug here")  # parks the workflow
    return seen


async def signal_rounds(
    engine: flows.Engine, run: flows.Run[Any], tenant: str, values: Sequence[int]
) -> None:
    """Send each value once the workflow waits for it (so each is its own task)."""
    for i, n in enumerate(values):
        while True:
            history = await engine.history(run.workflow_id, tenant_id=tenant)
            if sum(isinstance(e, SignalWaitStarted) for e in history) > i:
                break
            await asyncio.sleep(0.005)
        await engine.signal(run.workflow_id, "add", n, tenant_id=tenant)


_VARYING = ("at", "seed", "signal_id")


def shapes(history: list[Event]) -> list[Any]:
    """A history without its times: what a worker decided, in order."""
    return [
        {k: v for k, v in msgspec.json.decode(encode_event(e)).items() if k not in _VARYING}
        for e in history
    ]


async def test_sticky_worker_runs_workflows_exactly_as_replay_does(adapter: Adapter) -> None:
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[counter])
    histories = []
    for size in (1000, 0):
        w = worker(adapter.store, workflows=[counter], activities=[double], sticky_cache_size=size)
        async with running(w):
            run = await engine.start(counter, 6, tenant_id=tenant)
            await signal_rounds(engine, run, tenant, [1, 2, 3, 4, 5, 6])
            assert await result(run) == [2, 4, 6, 8, 10, 12]
        history = await engine.history(run.workflow_id, tenant_id=tenant)
        assert_history_invariants(history)
        assert_record_matches(await adapter.store.get_workflow(tenant, run.workflow_id), history)
        histories.append(shapes(history)[1:])
        if size:
            # the first task replays (nothing cached yet); each signal resumes the cache
            assert w.counters["sticky_hits"] >= 5, w.counters
            assert len(w.sticky) == 0  # the workflow finished: its entry is gone
        else:
            assert w.counters["sticky_hits"] == 0
    assert histories[0] == histories[1]


async def cached_ids(w: flows.Worker) -> list[str]:
    return [h.workflow_id for h in w.sticky.hints()]


async def test_a_parked_workflow_leaves_no_cache_entry(adapter: Adapter) -> None:
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[counter])
    w = worker(adapter.store, workflows=[counter], activities=[double])
    async with running(w):
        run = await engine.start(counter, 3, tenant_id=tenant)
        await signal_rounds(engine, run, tenant, [1])
        await eventually(lambda: cached_ids(w), lambda ids: ids == [run.workflow_id])
        await signal_rounds(engine, run, tenant, [1, -1])
        await eventually(
            lambda: engine.query(run.workflow_id, tenant_id=tenant),
            lambda info: info.status == flows.WorkflowStatus.PARKED,
        )
        assert w.sticky.hints() == []
        assert w.counters["sticky_hits"] >= 1


async def test_workers_taking_turns_continue_each_others_histories(adapter: Adapter) -> None:
    """Two workers run the same workflow in turns: each resumes its own cached instance
    with the events the other one wrote meanwhile, and the outcome is as if one ran it."""
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[counter])
    workers = [worker(adapter.store, workflows=[counter], activities=[double]) for _ in range(2)]
    run = await engine.start(counter, 5, tenant_id=tenant)

    async def task_on(w: flows.Worker) -> None:
        """Polls of ``w`` until it ran a workflow task to its commit."""
        while w.counters["commits"] == commits[id(w)]:
            await w.poll_once()
            while w._inflight:
                await asyncio.wait(list(w._inflight))
            await asyncio.sleep(0.002)
        commits[id(w)] = w.counters["commits"]

    commits = {id(w): 0 for w in workers}
    await task_on(workers[0])  # the first task; A caches the instance
    for n, turn in zip([1, 2, 3, 4, 5], [1, 0, 0, 1, 0], strict=True):
        await engine.signal(run.workflow_id, "add", n, tenant_id=tenant)
        await task_on(workers[turn])
    assert await result(run) == [2, 4, 6, 8, 10]
    history = await engine.history(run.workflow_id, tenant_id=tenant)
    assert_history_invariants(history)
    a, b = (w.counters for w in workers)
    # A: the start (miss), n=2 (its entry from the start: continues B's n=1 task), n=3,
    # n=5 (continues B's n=4 task); B: n=1 (miss), n=4 (continues its n=1 entry).
    assert (a["sticky_hits"], a["sticky_misses"]) == (3, 1), a
    assert (b["sticky_hits"], b["sticky_misses"]) == (1, 1), b


async def test_cached_entries_with_hostile_ids(kit: Kit) -> None:
    """Ids with quotes, backslashes, braces, commas, spaces and non-ASCII text match
    exactly, among many other entries."""
    odd = ['a"b', "c\\d", "{e,f}", " g ", 'h\\"i', "ünï 💥", "NULL"]
    for suffix in odd:
        await kit.start(f"{kit.ns}-{suffix}")
    for first in await kit.claim(acts=()):
        assert isinstance(first, WorkflowTaskClaim)
        events: list[Event] = [wait_event(1, kit)]
        await kit.store.commit_workflow_task(kit.commit(first, events, next_seq=2))
        await kit.store.signal_workflow(kit.tenant, first.lease.workflow_id, kit.signal("go"))
    ids = [f"{kit.ns}-{suffix}" for suffix in odd]
    near = [hint(kit, i + "x", 2) for i in ids] + [hint(kit, i.upper(), 2) for i in ids]
    held = [hint(kit, i, 2) for i in ids[::2]]
    got = await claim_cached(kit, [*near, *held])
    froms = {c.lease.workflow_id: c.history_from for c in got if isinstance(c, WorkflowTaskClaim)}
    assert froms == {i: (2 if n % 2 == 0 else 0) for n, i in enumerate(ids)}
