"""Patching and the replay check on each store: a run of the code before the patch goes
on with the patched code on its old path, a new run records the marker, the store keeps
the marker (a new event type) like any event, and ``check_histories`` and
``export_history`` read it back through the public protocol."""

from __future__ import annotations

from typing import Any

import msgspec

import flows_core as flows
from flows_core.events import Event, PatchMarker, SignalWaitStarted
from flows_core.store import Store
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.test_contract_engine import eventually, running, worker
from tests.golden import workflows as w

ORDER = w.Order(order_id="o-9", amount=120)
NEW_PATH = ["receipt-o-9-120", "fraud-check True", "shipped-o-9"]
OLD_PATH = ["receipt-o-9-120", "shipped-o-9"]


def markers(history: list[Event]) -> list[tuple[str, int]]:
    return [(e.patch_id, e.position) for e in history if isinstance(e, PatchMarker)]


def waits_for(name: str) -> Any:
    def ok(history: list[Event]) -> bool:
        last = history[-1]
        return isinstance(last, SignalWaitStarted) and last.name == name

    return ok


async def history(store: Store, tenant: str, workflow_id: str) -> list[Event]:
    events = await store.get_history(tenant, workflow_id)
    assert_history_invariants(events)
    assert_record_matches(await store.get_workflow(tenant, workflow_id), events)
    for patch_id, position in markers(events):
        taken = [e for e in events if getattr(e, "seq", 0) >= position]
        assert taken, f"marker {patch_id!r} at {position} is not followed by that step"
    return events


async def test_patched_code_takes_over_runs_of_the_old_code(adapter: Adapter) -> None:
    store = adapter.store
    tenant = f"t-{adapter.ns}"

    async def read(workflow_id: str) -> list[Event]:
        return await store.get_history(tenant, workflow_id)

    old_engine = flows.Engine(store, workflows=[w.fraud_before])
    async with running(worker(store, workflows=[w.fraud_before], activities=w.ACTIVITIES)):
        past = await old_engine.start(w.fraud_before, ORDER, tenant_id=tenant)
        await eventually(lambda: read(past.workflow_id), waits_for("packed"))
        await old_engine.signal(past.workflow_id, "packed", "box", tenant_id=tenant)
        await eventually(lambda: read(past.workflow_id), waits_for("delivered"))

    engine = flows.Engine(store, workflows=[w.fraud_patched])
    async with running(worker(store, workflows=[w.fraud_patched], activities=w.ACTIVITIES)):
        report = await flows.check_histories(store, [w.fraud_patched], tenant_id=tenant)
        assert report.ok, report.text()
        assert report.patches["fraud-check"].old_running == 1

        new = await engine.start(w.fraud_patched, ORDER, tenant_id=tenant)
        await eventually(lambda: read(new.workflow_id), waits_for("packed"))
        await engine.signal(new.workflow_id, "packed", "box", tenant_id=tenant)
        for run in (past, new):
            await eventually(lambda r=run: read(r.workflow_id), waits_for("delivered"))
            await engine.signal(run.workflow_id, "delivered", "door", tenant_id=tenant)
        for run in (past, new):
            await eventually(
                lambda r=run: store.get_workflow(tenant, r.workflow_id),
                lambda record: record.status == flows.WorkflowStatus.COMPLETED,
            )

    for run, path in ((past, OLD_PATH), (new, NEW_PATH)):
        record = await store.get_workflow(tenant, run.workflow_id)
        assert record.output is not None
        assert msgspec.json.decode(record.output) == path
    assert markers(await history(store, tenant, past.workflow_id)) == []
    new_history = await history(store, tenant, new.workflow_id)
    assert markers(new_history) == [("fraud-check", 3)]

    exported = await flows.export_history(store, tenant, new.workflow_id)
    assert flows.load_history(exported).events == new_history
    assert flows.Replayer([w.fraud_patched]).replay_json(exported).check().finished

    report = await flows.check_histories(store, [w.fraud_patched], tenant_id=tenant)
    assert report.ok, report.text()
    assert report.checked == 2
    usage = report.patches["fraud-check"]
    assert (usage.old_finished, usage.new_finished, usage.old_running) == (1, 1, 0)
    assert usage.retire_ready
