"""Continue-as-new and published status, end to end on each store (Engine + Worker).

An entity workflow keeps a list of the signal values it received and continues as new
every few signals: its final output is exactly the values sent, in order, so a signal
lost or delivered twice across a continue shows in the result. Earlier runs stay
readable; ``query``, ``signal``, ``cancel`` and ``result`` address the latest run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core._fsck import fsck
from flows_core.events import (
    SignalReceived,
    TimerStarted,
    WorkflowContinuedAsNew,
    WorkflowStarted,
)
from flows_core.store import (
    ContinueAsNew,
    FsckScan,
    RunArchive,
    Store,
    TimerTaskSpec,
    WorkflowStatus,
    WorkflowTaskCommit,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import Kit, StoreProxy, raw
from tests.contract.test_contract_engine import eventually, result, running, worker


class Progress(msgspec.Struct, frozen=True):
    step: int
    note: str = ""


class Entity(msgspec.Struct, frozen=True):
    every: int
    """Continue as new after this many signals in one run."""
    seen: list[int] = []
    in_run: int = 0


def entity_workflow(ns: str) -> flows.Workflow[Entity, list[int]]:
    @flows.workflow(f"entity-{ns}")
    async def entity(ctx: flows.WorkflowContext, state: Entity) -> list[int]:
        seen, in_run = list(state.seen), 0
        while True:
            value = await ctx.wait_for_signal("add", int)
            if value < 0:
                return seen
            seen.append(value)
            in_run += 1
            ctx.set_status(Progress(step=len(seen), note=f"run {ctx.run_number}"))
            if in_run == state.every:
                ctx.continue_as_new(Entity(every=state.every, seen=seen))

    return entity


def archive(store: Any) -> RunArchive:
    assert isinstance(store, RunArchive)
    return store


async def check_runs(engine: flows.Engine, run: flows.Run[Any]) -> list[flows.RunInfo]:
    """Every run of ``run``: numbered 1..n, the earlier ones continued, their histories
    well formed, each run's first event its WorkflowStarted, each earlier run's last
    event its WorkflowContinuedAsNew with the next run's input."""
    runs = await engine.runs(run.workflow_id, tenant_id=run.tenant_id)
    assert [r.run_number for r in runs] == list(range(1, len(runs) + 1))
    assert all(r.status == "continued" for r in runs[:-1])
    for info in runs:
        history = await engine.history(
            run.workflow_id, tenant_id=run.tenant_id, run_number=info.run_number
        )
        assert len(history) == info.history_length
        assert_history_invariants(history)
        first = history[0]
        assert isinstance(first, WorkflowStarted)
        assert first.run_number == info.run_number
        assert msgspec.json.decode(first.input) == info.input
        if info is not runs[-1]:
            last = history[-1]
            assert isinstance(last, WorkflowContinuedAsNew)
            following = runs[info.run_number]
            assert msgspec.json.decode(last.input) == following.input
    store = engine.store
    record = await store.get_workflow(run.tenant_id, run.workflow_id)
    assert record.run_number == len(runs)
    assert_record_matches(record, await store.get_history(run.tenant_id, run.workflow_id))
    return runs


# -- published status --


async def test_status_is_visible_in_query_before_and_after_completion(adapter: Adapter) -> None:
    store = adapter.store

    @flows.workflow(f"status-{adapter.ns}")
    async def staged(ctx: flows.WorkflowContext, n: int) -> str:
        ctx.set_status(Progress(step=1, note="waiting"))
        await ctx.wait_for_signal("go", int)
        ctx.set_status(Progress(step=2))
        try:
            ctx.set_status("x" * (flows.MAX_STATUS_BYTES + 1))
        except flows.PayloadError as exc:
            return type(exc).__name__
        return "no error"

    @flows.workflow(f"silent-{adapter.ns}")
    async def silent(ctx: flows.WorkflowContext, n: int) -> int:
        return n

    engine = flows.Engine(store, workflows=[staged, silent])
    tenant = f"t-{adapter.ns}"
    async with running(worker(store, workflows=[staged, silent])):
        run = await engine.start(staged, 1, tenant_id=tenant)
        info = await eventually(lambda: run.query(), lambda i: i.published is not None)
        assert info.status_value(Progress) == Progress(step=1, note="waiting")
        assert info.status == WorkflowStatus.RUNNING
        await engine.signal(run.workflow_id, "go", 1, tenant_id=tenant)
        assert await result(run) == "PayloadTooLarge"
        done = await run.query()
        assert done.status == WorkflowStatus.COMPLETED
        assert done.status_value(Progress) == Progress(step=2)
        with pytest.raises(flows.PayloadError):
            done.status_value(int)
        quiet = await engine.start(silent, 3, tenant_id=tenant)
        assert await result(quiet) == 3
        assert (await quiet.query()).status_value(Progress) is None


async def test_status_commit_is_fenced_and_kept_by_the_store(kit: Kit) -> None:
    """Store level: the status goes with a commit, and only with one that holds its
    fence; a later commit without one leaves it as it was."""
    new = await kit.start()
    claim = await kit.claim_wf()
    stale = kit.commit(claim, [], next_seq=claim.workflow.next_seq)
    status = msgspec.structs.replace(stale, status_value=raw({"step": 7}))
    await kit.store.commit_workflow_task(status)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert msgspec.json.decode(record.status_value or b"null") == {"step": 7}
    again = msgspec.structs.replace(stale, status_value=raw({"step": 8}))
    with pytest.raises(flows.LeaseLost):  # the same lease again: fenced, nothing written
        await kit.store.commit_workflow_task(again)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert msgspec.json.decode(record.status_value or b"null") == {"step": 7}
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("s", 1))
    claim = await kit.claim_wf()
    assert msgspec.json.decode(claim.workflow.status_value or b"null") == {"step": 7}
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert msgspec.json.decode(record.status_value or b"null") == {"step": 7}


# -- continue-as-new --


async def test_continue_as_new_chain_result_and_earlier_runs(adapter: Adapter) -> None:
    store = adapter.store
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    sent = list(range(1, 11))
    async with running(worker(store, workflows=[entity])):
        run = await engine.start(entity, Entity(every=3), tenant_id=tenant)
        for value in sent:
            await engine.signal(run.workflow_id, "add", value, tenant_id=tenant)
            await eventually(
                lambda: run.query(),
                lambda i, v=value: (i.status_value(Progress) or Progress(0)).step == v,
            )
        info = await run.query()
        assert info.run_number == 4  # 3 + 3 + 3 signals ended runs 1 to 3
        assert info.status_value(Progress) == Progress(step=10, note="run 4")
        await engine.signal(run.workflow_id, "add", -1, tenant_id=tenant)
        assert await result(run) == sent
    runs = await check_runs(engine, run)
    assert len(runs) == 4
    assert [r.input["seen"] for r in runs] == [[], sent[:3], sent[:6], sent[:9]]
    assert runs[-1].status == "completed"
    assert (await run.query()).run_number == 4
    with pytest.raises(flows.InvalidArgument):
        await engine.history(run.workflow_id, tenant_id=tenant, run_number=5)
    report = await fsck(store, tenant_id=tenant)
    assert report.findings == [], report.findings


async def test_unconsumed_signals_carry_over_none_lost_or_duplicated(adapter: Adapter) -> None:
    """Signals sent before any worker runs all reach the first run's history at once;
    the run consumes 2 and continues: the rest go to the next run, in order."""
    store = adapter.store
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    run = await engine.start(entity, Entity(every=2), tenant_id=tenant)
    sent = list(range(100, 111))
    for value in sent:
        await engine.signal(run.workflow_id, "add", value, tenant_id=tenant)
    await engine.signal(run.workflow_id, "add", -1, tenant_id=tenant)
    async with running(worker(store, workflows=[entity])):
        assert await result(run) == sent
    runs = await check_runs(engine, run)
    assert len(runs) == 6
    second = await engine.history(run.workflow_id, tenant_id=tenant, run_number=2)
    carried = [e for e in second if isinstance(e, SignalReceived)]
    assert [msgspec.json.decode(e.payload) for e in carried] == [*sent[2:], -1]
    # each signal id is consumed by exactly one run
    report = await fsck(store, tenant_id=tenant)
    assert report.findings == [], report.findings


class SignalAroundContinue(StoreProxy):
    """Sends a signal just before and just after the first two commits that continue as
    new, so signals arrive while the run ends (they wait in the inbox, or reach the new
    run)."""

    def __init__(self, store: Store, engine: flows.Engine, run: flows.Run[Any]) -> None:
        super().__init__(store)
        self.engine, self.run = engine, run
        self.extra: list[int] = []
        self.continues = 0

    async def _send(self) -> None:
        value = 1000 + len(self.extra)
        self.extra.append(value)
        await self.engine.signal(self.run.workflow_id, "add", value, tenant_id=self.run.tenant_id)

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Any]:
        if commit.continue_as_new is None or self.continues >= 2:
            return await self._store.commit_workflow_task(commit)
        self.continues += 1
        await self._send()
        moved = await self._store.commit_workflow_task(commit)
        await self._send()
        return moved


async def test_signals_arriving_during_the_continue_commit_reach_the_next_run(
    adapter: Adapter,
) -> None:
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(adapter.store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    run = await engine.start(entity, Entity(every=2), tenant_id=tenant)
    proxy = SignalAroundContinue(adapter.store, engine, run)
    sent = [1, 2, 3, 4, 5]
    async with running(worker(proxy, workflows=[entity])):
        for value in sent:
            await engine.signal(run.workflow_id, "add", value, tenant_id=tenant)
        await eventually(
            lambda: run.query(),
            lambda i: (i.status_value(Progress) or Progress(0)).step == 9 and len(proxy.extra) == 4,
        )
        await engine.signal(run.workflow_id, "add", -1, tenant_id=tenant)
        got = await result(run)
    assert len(got) == len(set(got)) == 9  # nothing lost, nothing twice
    assert [v for v in got if v < 1000] == sent  # the sender's order is kept
    assert sorted(v for v in got if v >= 1000) == proxy.extra
    await check_runs(engine, run)


async def test_cancel_and_signal_address_the_latest_run(adapter: Adapter) -> None:
    store = adapter.store
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    async with running(worker(store, workflows=[entity])):
        run = await engine.start(entity, Entity(every=1), tenant_id=tenant)
        for value in (1, 2, 3):
            await engine.signal(run.workflow_id, "add", value, tenant_id=tenant)
        await eventually(lambda: run.query(), lambda i: i.run_number == 4)
        outcome = await engine.cancel(run.workflow_id, reason="enough", tenant_id=tenant)
        assert outcome == flows.CancelOutcome.REQUESTED
        with pytest.raises(flows.WorkflowCancelled):
            await result(run)
    info = await run.query()
    assert (info.status, info.run_number) == (WorkflowStatus.CANCELLED, 4)
    runs = await check_runs(engine, run)
    assert [r.status for r in runs] == ["continued"] * 3 + ["cancelled"]
    with pytest.raises(flows.WorkflowNotRunning):
        await engine.signal(run.workflow_id, "add", 9, tenant_id=tenant)


class FailingAroundContinue(StoreProxy):
    """The first commit that continues as new fails before it reaches the store; the
    second is applied but its reply is lost (the worker sees an error)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.seen = 0

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Any]:
        if commit.continue_as_new is not None:
            self.seen += 1
            if self.seen == 1:
                raise flows.StoreUnavailable("injected: the commit did not reach the store")
            if self.seen == 2:
                await self._store.commit_workflow_task(commit)
                raise flows.StoreUnavailable("injected: the commit's reply was lost")
        return await self._store.commit_workflow_task(commit)


async def test_continue_is_idempotent_under_a_retried_workflow_task(adapter: Adapter) -> None:
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(adapter.store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    proxy = FailingAroundContinue(adapter.store)
    run = await engine.start(entity, Entity(every=2), tenant_id=tenant)
    sent = [7, 8, 9, 10, 11]
    for value in [*sent, -1]:
        await engine.signal(run.workflow_id, "add", value, tenant_id=tenant)
    w = worker(proxy, workflows=[entity], lease=timedelta(seconds=1))
    async with running(w):
        assert await result(run) == sent
    assert proxy.seen >= 3
    runs = await check_runs(engine, run)
    assert len(runs) == 3


async def test_continue_drops_the_ended_runs_steps_and_keeps_the_inbox(kit: Kit) -> None:
    """Store level: a commit that continues as new archives the run, starts the next
    with the carried events, deletes the run's timer and activity tasks and the results
    of its steps waiting in the inbox, and keeps signals waiting there."""
    new = await kit.start(input=1)
    wid = new.workflow_id
    claim = await kit.claim_wf()
    now = kit.now()
    soon = TimerTaskSpec(seq=1, fire_at=now)
    later = TimerTaskSpec(seq=2, fire_at=now + timedelta(hours=1))
    timers = [TimerStarted(seq=t.seq, fire_at=t.fire_at, at=now) for t in (soon, later)]
    await kit.store.commit_workflow_task(
        kit.commit(claim, timers, next_seq=3, timers=[soon, later])
    )
    await kit.store.signal_workflow(kit.tenant, wid, kit.signal("early", 1))
    claim = await kit.claim_wf()
    early = claim.history[-1]
    assert isinstance(early, SignalReceived)
    # while the task runs: a late signal and the result of an old step arrive
    late = kit.signal("late", 2)
    await kit.store.signal_workflow(kit.tenant, wid, late)
    await kit.adapter.pass_time(0.01)
    assert await kit.store.fire_due_timers(kit.shards_used, 10) == 1
    started = WorkflowStarted(
        name=kit.wf,
        version=1,
        workflow_id=wid,
        tenant_id=kit.tenant,
        input=raw(2),
        seed=5,
        at=kit.now(),
        run_number=2,
    )
    end = WorkflowContinuedAsNew(input=raw(2), at=kit.now())
    following = ContinueAsNew(started=started, carried=[early])
    commit = kit.commit(claim, [end], continue_as_new=following)
    assert await kit.store.commit_workflow_task(commit) == []
    record = await kit.store.get_workflow(kit.tenant, wid)
    assert (record.run_number, record.status, record.next_seq) == (2, WorkflowStatus.RUNNING, 1)
    assert msgspec.json.decode(record.input) == 2
    assert isinstance(kit.store, FsckScan)
    (row,) = [
        r
        for r in await kit.store.fsck_workflows(tenant_id=kit.tenant, after=None, limit=100)
        if r.record.workflow_id == wid
    ]
    assert (row.timer_tasks, row.activity_tasks, row.workflow_tasks) == (0, 0, 1)
    claim2 = await kit.claim_wf()
    assert claim2.workflow.run_number == 2
    kinds = [type(e).__name__ for e in claim2.history]
    assert kinds == ["WorkflowStarted", "SignalReceived", "SignalReceived"], kinds
    carried = [e for e in claim2.history if isinstance(e, SignalReceived)]
    assert [e.signal_id for e in carried] == [early.signal_id, late.signal_id]
    runs = await archive(kit.store).list_runs(kit.tenant, wid)
    assert [(r.run_number, r.status, r.history_length) for r in runs] == [
        (1, "continued", len(claim.history) + 1)
    ]
    old = await archive(kit.store).get_run_history(kit.tenant, wid, 1)
    assert isinstance(old[-1], WorkflowContinuedAsNew)
    assert len(old) == runs[0].history_length
    assert await archive(kit.store).get_run_history(kit.tenant, wid, 2) == []
    # the old claim's lease is gone with its run
    with pytest.raises(flows.LeaseLost):
        await kit.store.commit_workflow_task(kit.commit(claim, []))


async def test_prune_deletes_earlier_runs_with_the_workflow(adapter: Adapter) -> None:
    store = adapter.store
    entity = entity_workflow(adapter.ns)
    engine = flows.Engine(store, workflows=[entity])
    tenant = f"t-{adapter.ns}"
    wid = f"pruned-{adapter.ns}"
    for attempt in range(2):  # the same id again: its runs start from 1 anew
        run = await engine.start(entity, Entity(every=1), tenant_id=tenant, workflow_id=wid)
        for value in (1, 2, -1):
            await engine.signal(wid, "add", value, tenant_id=tenant)
        async with running(worker(store, workflows=[entity])):
            assert await result(run) == [1, 2]
        assert len(await check_runs(engine, run)) == 3, attempt
        await adapter.pass_time(0.05)
        assert await engine.prune(timedelta(0)) >= 1
        with pytest.raises(flows.WorkflowNotFound):
            await archive(store).list_runs(tenant, wid)
        with pytest.raises(flows.WorkflowNotFound):
            await engine.runs(wid, tenant_id=tenant)
    await asyncio.sleep(0)
