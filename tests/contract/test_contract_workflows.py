"""Store contract: starting, reading, listing, signalling, cancelling, parking, workers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows_core import (
    ErrorInfo,
    WorkflowAlreadyExists,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows_core.events import (
    CancelRequested,
    SignalReceived,
    WorkflowCompleted,
    WorkflowStarted,
)
from flows_core.store import (
    CancelOutcome,
    ListQuery,
    WorkerInfo,
    WorkflowStatus,
    WorkflowTaskClaim,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import Kit, canon, decoded, raw


async def complete(kit: Kit, workflow_id: str, tenant: str | None = None) -> None:
    """Claim the workflow's task and commit it as completed with output "done"."""
    claim = await kit.claim_wf()
    assert claim.lease.workflow_id == workflow_id
    assert claim.workflow.tenant_id == (tenant or kit.tenant)
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw("done"), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output="done",
        )
    )


# -- start / read --


async def test_start_writes_row_started_event_and_one_workflow_task(kit: Kit) -> None:
    new = await kit.start(input={"x": 42})
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert (record.tenant_id, record.workflow_id) == (kit.tenant, new.workflow_id)
    assert (record.name, record.version, record.shard_key) == (kit.wf, 1, kit.shard)
    assert record.status == WorkflowStatus.RUNNING
    assert decoded(record.input) == {"x": 42}
    assert record.output is None
    assert record.error is None
    assert record.history_length == 1
    assert record.next_seq == 1
    assert not record.cancel_requested
    assert record.workflow_task_pending

    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert len(history) == 1
    started = history[0]
    assert isinstance(started, WorkflowStarted)
    assert (started.workflow_id, started.tenant_id, started.name) == (
        new.workflow_id,
        kit.tenant,
        kit.wf,
    )
    assert decoded(started.input) == {"x": 42}
    assert started.seed == 7
    assert_record_matches(record, history)

    claimed = await kit.claim(limit=10)
    assert len(claimed) == 1, "exactly one workflow task after start"
    assert isinstance(claimed[0], WorkflowTaskClaim)
    assert claimed[0].lease.workflow_id == new.workflow_id
    assert canon(claimed[0].history) == canon(history)
    assert await kit.claim(limit=10) == []


async def test_duplicate_start_raises_and_leaves_the_first_untouched(kit: Kit) -> None:
    first = await kit.start("dup", input={"v": 1})
    before = await kit.store.get_workflow(kit.tenant, "dup")
    with pytest.raises(WorkflowAlreadyExists):
        await kit.store.start_workflow(kit.new("dup", input={"v": 2}))
    with pytest.raises(WorkflowAlreadyExists):  # another name does not make it new
        await kit.store.start_workflow(kit.new("dup", name=f"other-{kit.ns}", input={"v": 3}))
    after = await kit.store.get_workflow(kit.tenant, "dup")
    assert decoded(after.input) == {"v": 1}
    assert (after.name, after.history_length, after.created_at) == (
        before.name,
        before.history_length,
        before.created_at,
    )
    history = await kit.store.get_history(kit.tenant, "dup")
    assert canon(history) == canon([first.started])
    assert len(await kit.claim(types=[(kit.wf, 1), (f"other-{kit.ns}", 1)])) == 1


async def test_unknown_workflow_is_not_found(kit: Kit) -> None:
    with pytest.raises(WorkflowNotFound):
        await kit.store.get_workflow(kit.tenant, "nope")
    with pytest.raises(WorkflowNotFound):
        await kit.store.get_history(kit.tenant, "nope")
    with pytest.raises(WorkflowNotFound):
        await kit.store.signal_workflow(kit.tenant, "nope", kit.signal())
    with pytest.raises(WorkflowNotFound):
        await kit.store.cancel_workflow(kit.tenant, "nope", CancelRequested(at=kit.now()))


async def test_get_history_after_returns_the_tail(kit: Kit) -> None:
    new = await kit.start()
    signals = [kit.signal("s", i) for i in range(3)]
    for s in signals:
        await kit.store.signal_workflow(kit.tenant, new.workflow_id, s)
    full = await kit.flushed_history(new.workflow_id)
    assert canon(full) == canon([new.started, *signals])
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id, after=1)) == canon(
        signals
    )
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id, after=3)) == canon(
        signals[2:]
    )
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id, after=4)) == canon([])


# -- tenants --


async def test_same_workflow_id_in_two_tenants_is_two_workflows(kit: Kit) -> None:
    a = await kit.start("shared", tenant=kit.tenant, input={"who": "a"})
    b = await kit.start("shared", tenant=kit.other_tenant, input={"who": "b"})
    ra = await kit.store.get_workflow(kit.tenant, "shared")
    rb = await kit.store.get_workflow(kit.other_tenant, "shared")
    assert decoded(ra.input) == {"who": "a"}
    assert decoded(rb.input) == {"who": "b"}
    await kit.store.signal_workflow(kit.other_tenant, "shared", kit.signal("only-b"))
    assert (await kit.store.get_workflow(kit.tenant, "shared")).inbox_length == 0
    assert (await kit.store.get_workflow(kit.other_tenant, "shared")).inbox_length == 1
    claimed = await kit.claim(limit=10)
    assert sorted(c.lease.tenant_id for c in claimed) == sorted([kit.tenant, kit.other_tenant])
    assert {c.lease.workflow_id for c in claimed} == {"shared"}
    assert canon(await kit.store.get_history(kit.tenant, "shared")) == canon([a.started])
    hb = await kit.store.get_history(kit.other_tenant, "shared")
    assert canon(hb[0]) == canon(b.started)
    assert isinstance(hb[1], SignalReceived)
    assert len(hb) == 2


async def test_another_tenants_workflow_is_not_found(kit: Kit) -> None:
    new = await kit.start("mine", tenant=kit.tenant)
    intruder = kit.other_tenant
    with pytest.raises(WorkflowNotFound):
        await kit.store.get_workflow(intruder, "mine")
    with pytest.raises(WorkflowNotFound):
        await kit.store.get_history(intruder, "mine")
    with pytest.raises(WorkflowNotFound):
        await kit.store.signal_workflow(intruder, "mine", kit.signal())
    with pytest.raises(WorkflowNotFound):
        await kit.store.cancel_workflow(intruder, "mine", CancelRequested(at=kit.now()))
    assert await kit.store.list_workflows(ListQuery(tenant_id=intruder)) == []
    # Nothing leaked into the owner's workflow either.
    record = await kit.store.get_workflow(kit.tenant, "mine")
    assert record.history_length == 1
    assert not record.cancel_requested
    assert canon(await kit.store.get_history(kit.tenant, "mine")) == canon([new.started])


async def test_list_workflows_filters_by_tenant_status_and_name(kit: Kit, adapter: Adapter) -> None:
    other_name = f"other-{kit.ns}"
    await kit.start("a1")
    await adapter.pass_time(0.01)
    await kit.start("a2", name=other_name)
    await adapter.pass_time(0.01)
    await kit.start("a3")
    await adapter.pass_time(0.01)
    await kit.start("b1", tenant=kit.other_tenant)
    # Complete a1 only (a3 and b1 are claimed too, and stay running).
    claimed = await kit.claim(types=[(kit.wf, 1)], limit=10)
    by_id = {c.lease.workflow_id: c for c in claimed if c.lease.tenant_id == kit.tenant}
    a1 = by_id["a1"]
    assert isinstance(a1, WorkflowTaskClaim)
    await kit.store.commit_workflow_task(
        kit.commit(
            a1,
            [WorkflowCompleted(output=raw(1), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output=1,
        )
    )

    def ids(records: list) -> list[str]:  # type: ignore[type-arg]
        return [r.workflow_id for r in records]

    store = kit.store
    assert ids(await store.list_workflows(ListQuery(tenant_id=kit.tenant))) == ["a3", "a2", "a1"]
    assert ids(await store.list_workflows(ListQuery(tenant_id=kit.other_tenant))) == ["b1"]
    assert ids(
        await store.list_workflows(ListQuery(tenant_id=kit.tenant, status=WorkflowStatus.RUNNING))
    ) == ["a3", "a2"]
    assert ids(
        await store.list_workflows(ListQuery(tenant_id=kit.tenant, status=WorkflowStatus.COMPLETED))
    ) == ["a1"]
    assert ids(await store.list_workflows(ListQuery(tenant_id=kit.tenant, name=other_name))) == [
        "a2"
    ]
    assert ids(
        await store.list_workflows(
            ListQuery(tenant_id=kit.tenant, name=kit.wf, status=WorkflowStatus.RUNNING)
        )
    ) == ["a3"]
    assert ids(await store.list_workflows(ListQuery(tenant_id=kit.tenant, limit=2))) == [
        "a3",
        "a2",
    ]
    assert ids(await store.list_workflows(ListQuery(tenant_id=kit.tenant, offset=2))) == ["a1"]
    everyone = ids(await store.list_workflows(ListQuery(tenant_id=None, name=kit.wf)))
    assert sorted(everyone) == ["a1", "a3", "b1"]


# -- signals --


async def test_signals_are_appended_in_order_and_ensure_one_workflow_task(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    assert await kit.claim() == [], "the workflow task was consumed"
    sent = [kit.signal("order", {"i": i}) for i in range(5)]
    for s in sent:
        await kit.store.signal_workflow(kit.tenant, new.workflow_id, s)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.inbox_length == 5
    assert record.workflow_task_pending
    claimed = await kit.claim(limit=10)
    assert len(claimed) == 1, "signals coalesce into one workflow task"
    assert isinstance(claimed[0], WorkflowTaskClaim)
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert canon(history[1:]) == canon(sent), "the claim moved the inbox in, in order"
    assert [decoded(e.payload)["i"] for e in history[1:]] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert canon(claimed[0].history) == canon(history)
    assert claimed[0].workflow.inbox_length == 0
    assert claimed[0].workflow.history_length == 6
    assert_history_invariants(history)


async def test_signal_to_a_finished_workflow_is_refused(kit: Kit) -> None:
    new = await kit.start()
    await complete(kit, new.workflow_id)
    before = await kit.store.get_history(kit.tenant, new.workflow_id)
    with pytest.raises(WorkflowNotRunning):
        await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    assert await kit.claim() == []


# -- cancel --


async def test_cancel_is_recorded_once_then_reports_finished(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    store = kit.store
    first = await store.cancel_workflow(
        kit.tenant, new.workflow_id, CancelRequested(reason="r1", at=kit.now())
    )
    second = await store.cancel_workflow(
        kit.tenant, new.workflow_id, CancelRequested(reason="r2", at=kit.now())
    )
    assert first == CancelOutcome.REQUESTED
    assert second == CancelOutcome.ALREADY_REQUESTED
    record = await store.get_workflow(kit.tenant, new.workflow_id)
    assert record.cancel_requested
    assert record.workflow_task_pending
    assert record.inbox_length == 1

    claim = await kit.claim_wf()  # the cancel made the workflow runnable again
    history = await store.get_history(kit.tenant, new.workflow_id)
    cancels = [e for e in history if isinstance(e, CancelRequested)]
    assert len(cancels) == 1
    assert cancels[0].reason == "r1"
    assert canon(claim.history) == canon(history)
    assert_record_matches(await store.get_workflow(kit.tenant, new.workflow_id), history)
    await store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw("x"), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output="x",
        )
    )
    third = await store.cancel_workflow(kit.tenant, new.workflow_id, CancelRequested(at=kit.now()))
    assert third == CancelOutcome.ALREADY_FINISHED
    final = await store.get_history(kit.tenant, new.workflow_id)
    assert len([e for e in final if isinstance(e, CancelRequested)]) == 1
    assert await kit.claim() == []
    assert_history_invariants(final)


async def test_cancel_of_a_finished_workflow_changes_nothing(kit: Kit) -> None:
    new = await kit.start()
    await complete(kit, new.workflow_id)
    outcome = await kit.store.cancel_workflow(
        kit.tenant, new.workflow_id, CancelRequested(at=kit.now())
    )
    assert outcome == CancelOutcome.ALREADY_FINISHED
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.COMPLETED
    assert not record.cancel_requested


# -- park --


async def test_park_keeps_history_and_makes_the_task_unclaimable(
    kit: Kit, adapter: Adapter
) -> None:
    new = await kit.start()
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    claim = await kit.claim_wf(lease=timedelta(seconds=0.2))
    before = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert len(before) == 2
    error = ErrorInfo(type="NonDeterminismError", message="step #1 changed")
    await kit.store.park_workflow(claim.lease, error)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.PARKED
    assert record.error == error
    assert not record.workflow_task_pending
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    assert await kit.claim() == []
    await adapter.pass_time(0.3)  # even once the lease is long gone
    assert await kit.claim() == []
    # A parked workflow still takes signals (they wait for the fix) without a task.
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    assert await kit.claim() == []
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    assert (await kit.store.get_workflow(kit.tenant, new.workflow_id)).status == (
        WorkflowStatus.PARKED
    )


# -- workers --


async def test_register_list_refresh_unregister_workers(kit: Kit, adapter: Adapter) -> None:
    store = kit.store
    a = WorkerInfo(
        worker_id=f"wa-{kit.ns}",
        workflow_types=[(kit.wf, 1), (kit.wf, 2)],
        activity_names=[kit.act],
        heartbeat_at=kit.now(),
        host="h1",
        pid=11,
    )
    b = WorkerInfo(
        worker_id=f"wb-{kit.ns}",
        workflow_types=[],
        activity_names=[kit.act, "other"],
        heartbeat_at=kit.now(),
    )
    await store.register_worker(a)
    await store.register_worker(b)

    def mine(workers: list[WorkerInfo]) -> dict[str, WorkerInfo]:
        return {w.worker_id: w for w in workers if w.worker_id.endswith(kit.ns)}

    listed = mine(await store.list_workers())
    assert set(listed) == {a.worker_id, b.worker_id}
    got = listed[a.worker_id]
    assert [tuple(t) for t in got.workflow_types] == [(kit.wf, 1), (kit.wf, 2)]
    assert got.activity_names == [kit.act]
    assert (got.host, got.pid) == ("h1", 11)
    assert sorted(listed[b.worker_id].activity_names) == sorted([kit.act, "other"])

    await adapter.pass_time(0.05)
    refreshed = WorkerInfo(
        worker_id=a.worker_id,
        workflow_types=[(kit.wf, 3)],
        activity_names=[],
        heartbeat_at=kit.now(),
        host="h1",
        pid=11,
    )
    await store.register_worker(refreshed)
    listed = mine(await store.list_workers())
    assert len(listed) == 2, "re-registering refreshes, it does not duplicate"
    assert [tuple(t) for t in listed[a.worker_id].workflow_types] == [(kit.wf, 3)]
    assert listed[a.worker_id].heartbeat_at > got.heartbeat_at

    await store.unregister_worker(a.worker_id)
    assert set(mine(await store.list_workers())) == {b.worker_id}
    await store.unregister_worker(a.worker_id)  # unregistering twice is harmless
    await store.unregister_worker(b.worker_id)
    assert mine(await store.list_workers()) == {}
