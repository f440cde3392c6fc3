"""Group commit: an OPTIONAL store capability (``flows_core.store.GroupCommit``).

Several workflows' writes in one call (PostgreSQL: one transaction; Citus: one per shard
key), each fenced and decided exactly as its single method would: a refused fence or a
value the store cannot keep fails only its own item, and the others commit. The Worker
and the Engine use it through ``flows_core._group_commit`` for the writes made while
another of the same kind is in flight.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core._errors import LeaseLost, PayloadError, WorkflowAlreadyExists
from flows_core._group_commit import GroupCommitter, batch_method, group_writes
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    SignalReceived,
    WorkflowCompleted,
)
from flows_core.store import (
    ActivityResult,
    ActivityTaskSpec,
    GroupCommit,
    StartRequest,
    Store,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import Kit, StoreProxy, canon, raw
from tests.contract.test_contract_engine import checked_history, result, running, worker

LONG = timedelta(seconds=30)


def _group(store: Store) -> GroupCommit:
    if not isinstance(store, GroupCommit):
        pytest.skip("this store has no group commit (an optional capability)")
    return store


async def _claims(kit: Kit, n: int) -> list[WorkflowTaskClaim]:
    """Start ``n`` workflows and claim their workflow tasks (ordered as started)."""
    ids = [(await kit.start()).workflow_id for _ in range(n)]
    got = await kit.claim(limit=n + 5)
    claims = {c.lease.workflow_id: c for c in got if isinstance(c, WorkflowTaskClaim)}
    assert sorted(claims) == sorted(ids)
    return [claims[i] for i in ids]


def _step(kit: Kit, claim: WorkflowTaskClaim, seq: int = 1) -> WorkflowTaskCommit:
    """Schedule activity step ``seq`` (queued) and keep the lease."""
    event = ActivityScheduled(seq=seq, name=kit.act, input=raw(seq), at=kit.now())
    spec = ActivityTaskSpec(seq=seq, name=kit.act, input=raw(seq))
    return kit.commit(claim, [event], next_seq=seq + 1, activity_tasks=[spec], keep_lease=LONG)


def _done(kit: Kit, claim: WorkflowTaskClaim, output: Any = "done") -> WorkflowTaskCommit:
    end = WorkflowCompleted(output=raw(output), at=kit.now())
    return kit.commit(claim, [end], status=WorkflowStatus.COMPLETED, output=output)


async def _history(kit: Kit, workflow_id: str) -> list[Any]:
    history = await kit.store.get_history(kit.tenant, workflow_id)
    assert_history_invariants(history)
    assert_record_matches(await kit.store.get_workflow(kit.tenant, workflow_id), history)
    return history


# -- the store capability --


async def test_group_commits_each_workflow_as_alone(kit: Kit) -> None:
    store = _group(kit.store)
    claims = await _claims(kit, 4)
    commits = [_step(kit, c) for c in claims[:2]] + [
        _done(kit, c, i) for i, c in enumerate(claims[2:])
    ]
    outcomes = await store.commit_workflow_tasks(commits)
    assert outcomes == [[], [], [], []]
    for claim, commit in zip(claims, commits, strict=True):
        history = await _history(kit, claim.lease.workflow_id)
        assert canon(history) == canon([*claim.history, *commit.events])
    # the kept leases go on: each workflow's next commit is fenced on its new length
    again = [kit.commit(c, [], next_seq=2) for c in claims[:2]]
    again = [
        msgspec.structs.replace(c, claimed_history_length=2, expected_next_seq=2) for c in again
    ]
    assert await store.commit_workflow_tasks(again) == [[], []]
    # the queued activity steps exist once each
    acts = await kit.claim(types=[], acts=[kit.act], limit=10)
    assert sorted(a.lease.workflow_id for a in acts) == sorted(
        c.lease.workflow_id for c in claims[:2]
    )


async def test_a_stale_lease_fails_only_its_own_commit(kit: Kit) -> None:
    store = _group(kit.store)
    first, stale, last = await _claims(kit, 3)
    await kit.store.release(stale.lease)
    fresh = await kit.claim_wf(owner="worker-b")  # the task changed hands
    assert fresh.lease.workflow_id == stale.lease.workflow_id
    outcomes = await store.commit_workflow_tasks(
        [_done(kit, first), _done(kit, stale), _done(kit, last)]
    )
    assert outcomes[0] == []
    assert outcomes[2] == []
    assert isinstance(outcomes[1], LeaseLost)
    for claim in (first, last):
        record = await kit.store.get_workflow(kit.tenant, claim.lease.workflow_id)
        assert record.status == WorkflowStatus.COMPLETED
    assert canon(await _history(kit, stale.lease.workflow_id)) == canon(fresh.history)
    # the new holder commits as if nothing happened
    assert await store.commit_workflow_tasks([_done(kit, fresh)]) == [[]]
    record = await kit.store.get_workflow(kit.tenant, fresh.lease.workflow_id)
    assert record.status == WorkflowStatus.COMPLETED


async def test_a_stale_sequence_fails_only_its_own_commit(kit: Kit) -> None:
    store = _group(kit.store)
    first, behind = await _claims(kit, 2)
    await kit.store.commit_workflow_task(_step(kit, behind))
    outcomes = await store.commit_workflow_tasks([_done(kit, first), _step(kit, behind)])
    assert outcomes[0] == []
    assert isinstance(outcomes[1], LeaseLost)
    assert len(await _history(kit, behind.lease.workflow_id)) == 2


async def test_a_value_the_store_cannot_keep_fails_only_its_own_commit(kit: Kit) -> None:
    store = _group(kit.store)
    first, bad, last = await _claims(kit, 3)
    broken = msgspec.structs.replace(_done(kit, bad), output=msgspec.Raw(b'{"no": \xff}'))
    outcomes = await store.commit_workflow_tasks([_done(kit, first), broken, _done(kit, last)])
    assert outcomes[0] == []
    assert outcomes[2] == []
    assert isinstance(outcomes[1], PayloadError)
    assert canon(await _history(kit, bad.lease.workflow_id)) == canon(bad.history)
    for claim in (first, last):
        record = await kit.store.get_workflow(kit.tenant, claim.lease.workflow_id)
        assert record.status == WorkflowStatus.COMPLETED
    # its lease still holds: the corrected commit goes through
    assert await store.commit_workflow_tasks([_done(kit, bad)]) == [[]]


async def test_group_commit_hands_back_each_inbox(kit: Kit) -> None:
    store = _group(kit.store)
    claims = await _claims(kit, 2)
    signals = {}
    for claim in claims:
        signal = kit.signal(payload=claim.lease.workflow_id)
        await kit.store.signal_workflow(kit.tenant, claim.lease.workflow_id, signal)
        signals[claim.lease.workflow_id] = signal
    outcomes = await store.commit_workflow_tasks([_step(kit, c) for c in claims])
    for claim, moved in zip(claims, outcomes, strict=True):
        assert moved == [signals[claim.lease.workflow_id]], "each gets its own inbox"
        history = await _history(kit, claim.lease.workflow_id)
        assert isinstance(history[-1], SignalReceived)


async def test_group_completes_activities_each_fenced(kit: Kit) -> None:
    store = _group(kit.store)
    claims = await _claims(kit, 3)
    for claim in claims:
        await kit.store.commit_workflow_task(
            kit.commit(
                claim,
                [ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=kit.now())],
                next_seq=2,
                activity_tasks=[ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))],
            )
        )
    acts = await kit.claim(types=[], acts=[kit.act], limit=10)
    by_wf = {a.lease.workflow_id: a for a in acts}
    first, stale, last = (by_wf[c.lease.workflow_id] for c in claims)
    await kit.store.release(stale.lease)
    done = [
        ActivityResult(
            lease=a.lease, event=ActivityCompleted(seq=1, output=raw("ok"), at=kit.now())
        )
        for a in (first, stale, last)
    ]
    outcomes = await store.complete_activities(done)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], LeaseLost)
    # the results reached the inboxes: the workflow tasks come back with them
    again = await kit.claim(acts=(), limit=10)
    got = {c.lease.workflow_id: c for c in again if isinstance(c, WorkflowTaskClaim)}
    assert sorted(got) == sorted([first.lease.workflow_id, last.lease.workflow_id])
    for claim in got.values():
        assert isinstance(claim.history[-1], ActivityCompleted)


async def test_group_starts_each_get_their_own_outcome(kit: Kit) -> None:
    store = _group(kit.store)
    taken = await kit.start()
    a, b = kit.new(), kit.new()
    dup_of_a = kit.new(a.workflow_id)
    starts = [
        StartRequest(new=a),
        StartRequest(new=kit.new(taken.workflow_id)),
        StartRequest(new=b, owner="worker-a", lease=LONG),
        StartRequest(new=dup_of_a),
    ]
    outcomes = await store.start_workflows(starts)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], WorkflowAlreadyExists)
    assert isinstance(outcomes[3], WorkflowAlreadyExists), "taken earlier in the same call"
    claim = outcomes[2]
    if getattr(kit.store, "start_workflow_leased", None) is None:
        return  # the leased start is the EagerStart capability's
    assert isinstance(claim, WorkflowTaskClaim)
    assert claim.lease.workflow_id == b.workflow_id
    assert claim.attempt == 1
    assert canon(claim.history) == canon([b.started])
    for new in (a, b, taken):
        history = await _history(kit, new.workflow_id)
        assert canon(history) == canon([new.started])
    # a's task is claimable; b's is leased to worker-a; taken's was claimable before
    claimable = await kit.claim(acts=(), limit=10, owner="other")
    assert sorted(c.lease.workflow_id for c in claimable) == sorted(
        [a.workflow_id, taken.workflow_id]
    )
    assert await store.commit_workflow_tasks([_done(kit, claim)]) == [[]]


async def test_group_of_different_shard_keys_commits_each(kit: Kit) -> None:
    """Workflows of other tenants (on Citus: other shard keys, other transactions)."""
    store = _group(kit.store)
    news = [kit.new(tenant=f"{kit.tenant}-{i}") for i in range(4)]
    assert await store.start_workflows([StartRequest(new=n) for n in news]) == [None] * 4
    claims = [c for c in await kit.claim(limit=10) if isinstance(c, WorkflowTaskClaim)]
    assert len(claims) == 4
    assert await store.commit_workflow_tasks([_done(kit, c) for c in claims]) == [[]] * 4
    for new in news:
        record = await kit.store.get_workflow(new.tenant_id, new.workflow_id)
        assert record.status == WorkflowStatus.COMPLETED


# -- through the Engine and the Worker --


@flows.activity("gc-inc")
async def inc(x: int) -> int:
    return x + 1


@flows.workflow("gc-three")
async def three(ctx: flows.WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await ctx.execute(inc, x)
    return x


async def test_concurrent_engine_starts_each_get_their_own_outcome(adapter: Adapter) -> None:
    engine = flows.Engine(adapter.store, workflows=[three])
    tenant = f"t-{adapter.ns}"
    ids = [f"gc-{adapter.ns}-{i}" for i in range(12)]
    await engine.start(three, 0, workflow_id=ids[0], tenant_id=tenant)
    # all at once: one taken before, two of the same id among them
    attempts = [*ids, ids[5]]
    outcomes = await asyncio.gather(
        *(engine.start(three, i, workflow_id=w, tenant_id=tenant) for i, w in enumerate(attempts)),
        return_exceptions=True,
    )
    taken = [w for w, o in zip(attempts, outcomes, strict=True) if isinstance(o, BaseException)]
    assert all(
        isinstance(o, WorkflowAlreadyExists) for o in outcomes if isinstance(o, BaseException)
    )
    assert sorted(taken) == sorted([ids[0], ids[5]]), "only the taken ids fail"
    for w in ids:
        history = await adapter.store.get_history(tenant, w)
        assert len(history) == 1


async def test_workers_commit_many_workflows_through_group_commit(adapter: Adapter) -> None:
    store = adapter.store
    engine = flows.Engine(store, workflows=[three])
    tenant = f"t-{adapter.ns}"
    w = worker(store, workflows=[three], activities=[inc], concurrency=16)
    async with running(w):
        runs = await asyncio.gather(*(engine.start(three, i, tenant_id=tenant) for i in range(24)))
        assert [await result(r) for r in runs] == [i + 3 for i in range(24)]
    for run in runs:
        history = await checked_history(store, run)
        assert sum(isinstance(e, ActivityScheduled) for e in history) == 3
    if isinstance(store, GroupCommit):
        committers = group_writes(store).committers
        commits, starts = committers["commits"], committers["starts"]
        assert commits is not None
        assert starts is not None
        if adapter.virtual_clock is None:
            # a database store answers after a round trip: the starts made meanwhile
            # (all but the first of the gather) went together
            assert starts.batched > 0


# -- the committer (pure; no store) --


async def test_committer_groups_what_arrives_while_one_is_in_flight() -> None:
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def single(item: int) -> int:
        batches.append([item])
        await gate.wait()
        return item * 10

    async def batch(items: list[int]) -> list[int | Exception]:
        batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    committer = GroupCommitter[int, int](single, batch)
    first = asyncio.ensure_future(committer.submit(1))
    await asyncio.sleep(0)
    assert batches == [[1]], "the first goes at once, alone"
    rest = [asyncio.ensure_future(committer.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    assert batches == [[1]], "the others wait for the one in flight"
    gate.set()
    assert await first == 10
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert batches == [[1], [2, 3, 4]], "then go together, in one call"
    assert outcomes[0] == 20
    assert outcomes[2] == 40
    assert isinstance(outcomes[1], ValueError), "an item's error is its own"
    assert (committer.calls, committer.batched) == (2, 3)


async def test_committer_skips_items_whose_caller_gave_up() -> None:
    gate = asyncio.Event()
    seen: list[list[int]] = []

    async def single(item: int) -> int:
        seen.append([item])
        await gate.wait()
        return item

    async def batch(items: list[int]) -> list[int | Exception]:
        seen.append(list(items))
        return list(items)

    committer = GroupCommitter[int, int](single, batch)
    first = asyncio.ensure_future(committer.submit(1))
    await asyncio.sleep(0)
    gone, kept = (asyncio.ensure_future(committer.submit(i)) for i in (2, 3))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    assert await first == 1
    assert await kept == 3
    assert seen == [[1], [3]], "the cancelled item was never sent"


async def test_committer_keeps_at_most_max_in_flight_calls() -> None:
    gates = [asyncio.Event() for _ in range(3)]
    calls: list[list[int]] = []

    async def single(item: int) -> int:
        calls.append([item])
        await gates[len(calls) - 1].wait()
        return item

    async def batch(items: list[int]) -> list[int | Exception]:
        calls.append(list(items))
        await gates[len(calls) - 1].wait()
        return list(items)

    committer = GroupCommitter[int, int](single, batch, max_in_flight=2)
    subs = [asyncio.ensure_future(committer.submit(i)) for i in (1, 2, 3, 4)]
    await asyncio.sleep(0)
    assert calls == [[1], [2]], "two go at once, alone; the rest wait"
    gates[1].set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert calls == [[1], [2], [3, 4]], "the next call takes what waited"
    gates[0].set()
    gates[2].set()
    assert await asyncio.gather(*subs) == [1, 2, 3, 4]


async def test_a_replaced_single_write_is_never_bypassed(adapter: Adapter) -> None:
    """A proxy or a wrapper of the single method keeps every write (it would not see a
    batch): group commit is off for that method."""
    store = adapter.store
    if not isinstance(store, GroupCommit):
        pytest.skip("this store has no group commit (an optional capability)")
    assert batch_method(store, "commit_workflow_task", "commit_workflow_tasks") is not None
    proxy = StoreProxy(store)
    assert batch_method(proxy, "commit_workflow_task", "commit_workflow_tasks") is None

    class Counting(type(store)):  # type: ignore[misc]
        async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> Any:
            return await super().commit_workflow_task(commit)

    assert (
        batch_method(Counting.__new__(Counting), "commit_workflow_task", "commit_workflow_tasks")
        is None
    )
    # replaced on the instance after its writes were grouped: from then on, not grouped
    writes = group_writes(store)
    assert writes.committers["commits"] is not None
    seen: list[WorkflowTaskCommit] = []
    original = store.commit_workflow_task

    async def watched(commit: WorkflowTaskCommit) -> Any:
        seen.append(commit)
        return await original(commit)

    store.commit_workflow_task = watched  # type: ignore[method-assign]
    try:
        assert writes.committers["commits"] is None
        kit = Kit(adapter)
        claims = await _claims(kit, 3)
        done = await asyncio.gather(*(writes.commit_workflow_task(_done(kit, c)) for c in claims))
        assert done == [[], [], []]
        assert len(seen) == 3, "every commit went through the replaced method"
    finally:
        del store.commit_workflow_task


async def test_a_group_the_database_rolls_back_commits_the_others_alone(kit: Kit) -> None:
    """A value only the database refuses (an attempt count beyond its integer column)
    aborts the group's transaction: each item then goes alone, and only the one at
    fault fails."""
    store = _group(kit.store)
    if not hasattr(store, "_commit_op"):
        pytest.skip("a store without a database checks every value before writing")
    first, bad, last = await _claims(kit, 3)
    huge = ActivityTaskSpec(seq=1, name=kit.act, input=raw(1), attempt=2**40)
    event = ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=kit.now())
    broken = kit.commit(bad, [event], next_seq=2, activity_tasks=[huge])
    outcomes = await store.commit_workflow_tasks([_step(kit, first), broken, _done(kit, last)])
    assert outcomes[0] == []
    assert outcomes[2] == []
    assert isinstance(outcomes[1], flows.StoreError)
    assert canon(await _history(kit, bad.lease.workflow_id)) == canon(bad.history)
    assert len(await _history(kit, first.lease.workflow_id)) == 2
    record = await kit.store.get_workflow(kit.tenant, last.lease.workflow_id)
    assert record.status == WorkflowStatus.COMPLETED


async def test_a_sql_group_is_one_transaction_per_group(kit: Kit) -> None:
    """PostgreSQL: every item in one transaction; Citus: one per shard key (never a
    transaction across shard keys)."""
    store = _group(kit.store)
    group = getattr(store, "_group", None)
    if group is None:
        pytest.skip("a store without a database has no transactions")
    from flows_pg._base import Op, Rows, Step

    def txid() -> Op[int]:
        rows: list[Rows] = yield [Step("SELECT txid_current() AS x", {})]
        return int(rows[0][0]["x"])

    keys = [("k1", "t", "a"), ("k2", "t", "b"), ("k1", "t", "c"), ("k2", "t", "d")]
    ids = await group([(key, txid()) for key in keys])
    assert not [i for i in ids if isinstance(i, Exception)]
    assert ids[0] == ids[2]
    assert ids[1] == ids[3]
    if hasattr(store, "sharder"):  # Citus: the two shard keys went apart
        assert ids[0] != ids[1]
    else:
        assert ids[0] == ids[1]
