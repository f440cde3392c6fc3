"""Store contract: ``terminate_workflow`` and the cancel of a parked (dead-lettered)
workflow end it at once, in one write: history appended, status set, every task, timer
and inbox event dropped, waiters woken (see ``Store.terminate_workflow`` and
``Store.cancel_workflow``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core import ErrorInfo, LeaseLost, WorkflowNotFound
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    CancelRequested,
    SignalWaitStarted,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowTerminatedEvent,
)
from flows_core.store import (
    ActivityResult,
    ActivityTaskSpec,
    CancelOutcome,
    TerminateOutcome,
    TimerTaskSpec,
    WorkflowStatus,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import Kit, raw
from tests.contract.test_contract_engine import result, running, worker

SHORT = timedelta(seconds=0.2)


def terminate_event(kit: Kit, reason: str = "operator: stuck") -> WorkflowTerminatedEvent:
    return WorkflowTerminatedEvent(reason=reason, at=kit.now())


async def assert_nothing_left(kit: Kit, adapter: Adapter, workflow_id: str) -> None:
    """No task (workflow, activity, timer) and no inbox event of the workflow remain:
    nothing to claim, no timer fires even once its time has passed, nothing due later."""
    record = await kit.store.get_workflow(kit.tenant, workflow_id)
    assert record.inbox_length == 0
    assert not record.workflow_task_pending
    assert await kit.claim(acts=[kit.act]) == []
    await adapter.pass_time(0.3)
    assert await kit.store.fire_due_timers(kit.shards_used, 100) == 0
    assert await kit.claim(acts=[kit.act]) == []
    assert await kit.store.next_due(kit.shards_used) is None
    stats = await kit.store.stats(kit.shards_used)
    assert stats.in_flight == 0
    assert sum(stats.queue_depth.values()) == 0


async def assert_terminated(kit: Kit, workflow_id: str, reason: str) -> None:
    record = await kit.store.get_workflow(kit.tenant, workflow_id)
    assert record.status == WorkflowStatus.TERMINATED
    assert record.error == ErrorInfo(type="WorkflowTerminated", message=reason)
    history = await kit.store.get_history(kit.tenant, workflow_id)
    assert isinstance(history[-1], WorkflowTerminatedEvent)
    assert history[-1].reason == reason
    assert_history_invariants(history)
    assert_record_matches(record, history)


async def test_terminate_mid_activity_refuses_its_result(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    scheduled = ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=kit.now())
    spec = ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))
    await kit.store.commit_workflow_task(
        kit.commit(claim, [scheduled], next_seq=2, activity_tasks=[spec])
    )
    act = await kit.claim_act()
    waiter = asyncio.ensure_future(kit.store.wait_for_workflow(kit.tenant, new.workflow_id, 30))
    await asyncio.sleep(0.05)  # the waiter is waiting
    outcome = await kit.store.terminate_workflow(
        kit.tenant, new.workflow_id, terminate_event(kit, "stop it")
    )
    assert outcome == TerminateOutcome.TERMINATED
    await asyncio.wait_for(waiter, 10)  # woken, long before its 30 s
    length = len(await kit.store.get_history(kit.tenant, new.workflow_id))
    # the activity finishes afterwards: its result is refused, nothing recorded
    with pytest.raises(LeaseLost):
        await kit.store.heartbeat(act.lease, SHORT)
    done = ActivityCompleted(seq=1, output=raw("late"), at=kit.now())
    with pytest.raises(LeaseLost):
        await kit.store.complete_activity(ActivityResult(lease=act.lease, event=done))
    assert len(await kit.store.get_history(kit.tenant, new.workflow_id)) == length
    await assert_terminated(kit, new.workflow_id, "stop it")
    await assert_nothing_left(kit, adapter, new.workflow_id)


async def test_terminate_fences_out_the_leased_workflow_task(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.terminate_workflow(kit.tenant, new.workflow_id, terminate_event(kit))
    completed = WorkflowCompleted(output=raw(1), at=kit.now())
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(
            kit.commit(claim, [completed], status=WorkflowStatus.COMPLETED, output=1)
        )
    await assert_terminated(kit, new.workflow_id, "operator: stuck")
    await assert_nothing_left(kit, adapter, new.workflow_id)


async def test_terminate_a_parked_workflow(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.park_workflow(claim.lease, ErrorInfo(type="NonDeterminismError", message="x"))
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("queued"))
    outcome = await kit.store.terminate_workflow(
        kit.tenant, new.workflow_id, terminate_event(kit, "")
    )
    assert outcome == TerminateOutcome.TERMINATED
    await assert_terminated(kit, new.workflow_id, "")
    await assert_nothing_left(kit, adapter, new.workflow_id)
    assert await kit.store.retry_workflow(kit.tenant, new.workflow_id) is False


async def test_terminate_drops_pending_timer_signal_wait_and_inbox(
    kit: Kit, adapter: Adapter
) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    now = kit.now()
    events: list[Any] = [
        TimerStarted(seq=1, fire_at=now + timedelta(seconds=0.2), at=now),
        SignalWaitStarted(seq=2, name="approve", timeout_at=now + timedelta(seconds=0.2), at=now),
    ]
    timers = [
        TimerTaskSpec(seq=1, fire_at=now + timedelta(seconds=0.2)),
        TimerTaskSpec(seq=2, fire_at=now + timedelta(seconds=0.2)),
    ]
    await kit.store.commit_workflow_task(kit.commit(claim, events, next_seq=3, timers=timers))
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("other"))
    assert (await kit.store.get_workflow(kit.tenant, new.workflow_id)).inbox_length == 1
    outcome = await kit.store.terminate_workflow(
        kit.tenant, new.workflow_id, terminate_event(kit, "no longer needed")
    )
    assert outcome == TerminateOutcome.TERMINATED
    await assert_terminated(kit, new.workflow_id, "no longer needed")
    await assert_nothing_left(kit, adapter, new.workflow_id)
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert [type(e) for e in history[1:]] == [
        TimerStarted,
        SignalWaitStarted,
        WorkflowTerminatedEvent,
    ], "the inbox was dropped, not moved into the history"


async def test_terminate_a_finished_workflow_writes_nothing(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw(7), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output=7,
        )
    )
    before = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    outcome = await kit.store.terminate_workflow(kit.tenant, new.workflow_id, terminate_event(kit))
    assert outcome == TerminateOutcome.ALREADY_FINISHED
    after = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert after.status == WorkflowStatus.COMPLETED
    assert after.history_length == before.history_length
    assert after.error is None
    assert await kit.store.get_history(kit.tenant, new.workflow_id) == history
    # and a terminated one is finished too
    other = await kit.start()
    assert (
        await kit.store.terminate_workflow(kit.tenant, other.workflow_id, terminate_event(kit))
        == TerminateOutcome.TERMINATED
    )
    assert (
        await kit.store.terminate_workflow(kit.tenant, other.workflow_id, terminate_event(kit))
        == TerminateOutcome.ALREADY_FINISHED
    )
    assert len(await kit.store.get_history(kit.tenant, other.workflow_id)) == 2


async def test_terminate_unknown_or_another_tenants_workflow_is_not_found(kit: Kit) -> None:
    with pytest.raises(WorkflowNotFound):
        await kit.store.terminate_workflow(kit.tenant, "no-such-workflow", terminate_event(kit))
    new = await kit.start()
    with pytest.raises(WorkflowNotFound):
        await kit.store.terminate_workflow(kit.other_tenant, new.workflow_id, terminate_event(kit))
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.history_length == 1


async def test_cancel_of_a_parked_workflow_ends_it_cancelled(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.park_workflow(claim.lease, ErrorInfo(type="NonDeterminismError", message="x"))
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("queued"))
    request = CancelRequested(reason="give up", at=kit.now())
    outcome = await kit.store.cancel_workflow(kit.tenant, new.workflow_id, request)
    assert outcome == CancelOutcome.CANCELLED
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.CANCELLED
    assert record.cancel_requested
    assert record.error == ErrorInfo(type="Cancelled", message="give up")
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert [type(e) for e in history[1:]] == [CancelRequested, WorkflowCancelledEvent]
    end = history[-1]
    assert isinstance(end, WorkflowCancelledEvent)
    assert end.error == ErrorInfo(type="Cancelled", message="give up")
    assert_history_invariants(history)
    assert_record_matches(record, history)
    await assert_nothing_left(kit, adapter, new.workflow_id)
    again = CancelRequested(reason="again", at=kit.now())
    assert (
        await kit.store.cancel_workflow(kit.tenant, new.workflow_id, again)
        == CancelOutcome.ALREADY_FINISHED
    )


async def test_cancel_of_a_running_workflow_is_only_requested(kit: Kit) -> None:
    new = await kit.start()
    request = CancelRequested(reason="please", at=kit.now())
    assert (
        await kit.store.cancel_workflow(kit.tenant, new.workflow_id, request)
        == CancelOutcome.REQUESTED
    )
    assert (
        await kit.store.cancel_workflow(kit.tenant, new.workflow_id, request)
        == CancelOutcome.ALREADY_REQUESTED
    )
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.cancel_requested


# -- through the Engine and a Worker --


async def test_engine_terminate_mid_activity(adapter: Adapter) -> None:
    store = adapter.store
    tenant = f"t-{adapter.ns}"
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    @flows.activity(name=f"slow-{adapter.ns}")
    async def slow(n: int) -> int:
        runs.append(n)
        started.set()
        await release.wait()
        return n

    @flows.workflow(name=f"term-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        return await ctx.execute(slow, n)

    engine = flows.Engine(store, workflows=[wf])
    async with running(worker(store, workflows=[wf], activities=[slow])):
        run = await engine.start(wf, 5, tenant_id=tenant)
        await asyncio.wait_for(started.wait(), 10)
        outcome = await engine.terminate(run.workflow_id, reason="bad input", tenant_id=tenant)
        assert outcome == flows.TerminateOutcome.TERMINATED
        with pytest.raises(flows.WorkflowTerminated) as caught:
            await result(run)
        assert caught.value.reason == "bad input"
        release.set()
        await asyncio.sleep(0.2)  # the activity returns; its result is refused
        info = await engine.query(run.workflow_id, tenant_id=tenant)
        assert info.status == WorkflowStatus.TERMINATED
        history = await engine.history(run.workflow_id, tenant_id=tenant)
        assert isinstance(history[-1], WorkflowTerminatedEvent)
        assert not any(isinstance(e, ActivityCompleted) for e in history)
    assert runs == [5]


async def test_engine_cancel_of_a_parked_workflow_runs_no_compensation(adapter: Adapter) -> None:
    store = adapter.store
    tenant = f"t-{adapter.ns}"
    compensated: list[int] = []

    @flows.activity(name=f"undo-{adapter.ns}")
    async def undo(n: int) -> None:
        compensated.append(n)

    @flows.workflow(name=f"parks-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        try:
            await asyncio.sleep(0.01)  # not a Flows step: the workflow task parks
        except flows.Cancelled:
            await ctx.execute(undo, n)
            raise
        return n

    engine = flows.Engine(store, workflows=[wf])
    async with running(worker(store, workflows=[wf], activities=[undo])):
        run = await engine.start(wf, 3, tenant_id=tenant)
        for _ in range(500):
            info = await engine.query(run.workflow_id, tenant_id=tenant)
            if info.status == WorkflowStatus.PARKED:
                break
            await asyncio.sleep(0.02)
        assert info.status == WorkflowStatus.PARKED
        outcome = await engine.cancel(run.workflow_id, reason="drop it", tenant_id=tenant)
        assert outcome == CancelOutcome.CANCELLED
        with pytest.raises(flows.WorkflowCancelled):
            await result(run)
        await asyncio.sleep(0.1)
    assert compensated == []
