"""Store contract: workflow-task attempt counting, dead letters (parked), retry in place."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows_core import ErrorInfo, LeaseLost, WorkflowNotFound
from flows_core.events import SignalReceived
from flows_core.store import WorkflowStatus
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants
from tests.contract.kit import Kit, canon

SHORT = timedelta(seconds=0.2)


async def test_claims_count_attempts_until_a_commit_resets_them(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    assert (await kit.claim_wf(lease=SHORT)).attempt == 1
    await adapter.pass_time(0.3)  # the claimant "crashed": its lease expires
    assert (await kit.claim_wf(lease=SHORT)).attempt == 2
    await adapter.pass_time(0.3)
    third = await kit.claim_wf(lease=SHORT)
    assert third.attempt == 3
    # A successful commit that leaves the task pending (a signal arrived) resets it.
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    await kit.store.commit_workflow_task(kit.commit(third, []))
    assert (await kit.claim_wf(lease=SHORT)).attempt == 1


async def test_keep_lease_commit_resets_attempts(kit: Kit, adapter: Adapter) -> None:
    await kit.start()
    await kit.claim_wf(lease=SHORT)
    await adapter.pass_time(0.3)
    second = await kit.claim_wf(lease=SHORT)
    assert second.attempt == 2
    await kit.store.commit_workflow_task(kit.commit(second, [], keep_lease=SHORT))
    await adapter.pass_time(0.3)
    assert (await kit.claim_wf(lease=SHORT)).attempt == 1


async def test_release_does_not_count_an_attempt(kit: Kit, adapter: Adapter) -> None:
    await kit.start()
    first = await kit.claim_wf(lease=SHORT)
    await kit.store.release(first.lease)
    assert (await kit.claim_wf(lease=SHORT)).attempt == 1
    await adapter.pass_time(0.3)
    second = await kit.claim_wf(lease=SHORT)
    assert second.attempt == 2
    await kit.store.release(second.lease)
    assert (await kit.claim_wf(lease=SHORT)).attempt == 2


async def test_fail_workflow_task_backs_off_and_keeps_counting(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    error = ErrorInfo(type="KeyError", message="boom", attempts=1)
    await kit.store.fail_workflow_task(claim.lease, error, kit.now() + timedelta(seconds=0.3))
    assert await kit.claim() == []  # not visible before visible_at
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    await adapter.pass_time(0.4)
    again = await kit.claim_wf()
    assert again.attempt == 2
    # fenced: the old lease cannot fail it again
    with pytest.raises(LeaseLost):
        await kit.store.fail_workflow_task(claim.lease, error, kit.now())


async def test_retry_workflow_unparks_in_place(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    await kit.claim_wf(lease=SHORT)
    await adapter.pass_time(0.3)
    claim = await kit.claim_wf(lease=SHORT)
    assert claim.attempt == 2
    error = ErrorInfo(type="WorkflowTaskCrashed", message="poison", attempts=2)
    await kit.store.park_workflow(claim.lease, error)
    # a signal while dead-lettered waits in the inbox
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("late"))
    parked = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert parked.status == WorkflowStatus.PARKED
    assert parked.error == error
    before = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert await kit.claim() == []

    assert await kit.store.retry_workflow(kit.tenant, new.workflow_id) is True
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.error is None
    assert record.workflow_task_pending
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    again = await kit.claim_wf()
    assert again.attempt == 1
    assert isinstance(again.history[-1], SignalReceived)  # the inbox moved in
    assert again.history[-1].name == "late"
    await kit.store.commit_workflow_task(kit.commit(again, []))
    assert_history_invariants(await kit.store.get_history(kit.tenant, new.workflow_id))


async def test_retry_workflow_refuses_what_is_not_parked(kit: Kit) -> None:
    new = await kit.start()
    assert await kit.store.retry_workflow(kit.tenant, new.workflow_id) is False
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    with pytest.raises(WorkflowNotFound):
        await kit.store.retry_workflow(kit.tenant, f"missing-{kit.ns}")
    with pytest.raises(WorkflowNotFound):  # another tenant's workflow is not found
        await kit.store.retry_workflow(kit.other_tenant, new.workflow_id)


async def test_retry_workflow_happens_once(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.park_workflow(claim.lease, ErrorInfo(type="X", message="y", attempts=1))
    assert await kit.store.retry_workflow(kit.tenant, new.workflow_id)
    assert await kit.store.retry_workflow(kit.tenant, new.workflow_id) is False  # once
    assert (await kit.claim_wf()).attempt == 1
