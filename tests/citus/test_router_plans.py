"""Every statement CitusStore issues is a router query: one task, on one node.

A workload drives every store operation through its paths (start, eager start, signal, cancel,
reads and listings, claim with an inbox to move, commit with events, kept lease, dropped
steps, new activity and timer tasks, heartbeat, retry, completion, timers fired, park,
retry of a dead letter, failed workflow task, terminal commit, prune, stats, workers)
while recording each statement with the parameters it was sent with. Then each one is
EXPLAINed with those parameters. The NOTIFY statements touch no table: they must run in
the coordinator's own session. Finally every statement the store has compiled must have
been seen, so a statement added later cannot escape this test.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest_citus import drop_citus_store, make_citus_store

from flows_core import ErrorInfo
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    CancelRequested,
    TimerStarted,
    WorkflowCompleted,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskSpec,
    ListQuery,
    TimerTaskSpec,
    WorkerInfo,
    WorkflowStatus,
)
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit, raw

pytestmark = pytest.mark.citus


class Recorder:
    """Wraps a CitusStore's statement runners; keeps each statement's first parameters."""

    def __init__(self, store: Any) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        run, rows = store._run, store._rows

        async def recording_run(steps: Any, tx: Any = None, *, transaction: bool = True) -> Any:
            for step in steps:
                self.seen.setdefault(step.statement, dict(step.params))
            return await run(steps, tx, transaction=transaction)

        async def recording_rows(query: str, params: Any, tx: Any = None, **kw: Any) -> Any:
            self.seen.setdefault(query, dict(params))
            return await rows(query, params, tx, **kw)

        store._run = recording_run
        store._rows = recording_rows


@pytest.fixture
async def recorded(citus_dsn: str) -> AsyncIterator[tuple[Any, Recorder, Kit]]:
    store = await make_citus_store(citus_dsn)
    recorder = Recorder(store)
    try:
        yield store, recorder, Kit(Adapter("citus", store))
    finally:
        await drop_citus_store(store)


async def workload(store: Any, kit: Kit) -> None:
    now = kit.now
    a = await kit.start()
    await store.signal_workflow(kit.tenant, a.workflow_id, kit.signal("go", 1))
    b = await kit.start()
    eager = await store.start_workflow_leased(kit.new(), owner="w", lease=timedelta(seconds=30))
    await store.release(eager.lease)
    cancel = CancelRequested(reason="stop", at=now())
    assert (await store.cancel_workflow(kit.tenant, b.workflow_id, cancel)).value == "requested"
    await store.get_workflow(kit.tenant, a.workflow_id)
    await store.get_history(kit.tenant, a.workflow_id)
    for query in (
        ListQuery(tenant_id=kit.tenant),
        ListQuery(tenant_id=kit.tenant, status=WorkflowStatus.RUNNING),
        ListQuery(tenant_id=kit.tenant, name=kit.wf),
        ListQuery(tenant_id=None),
    ):
        await store.list_workflows(query)

    first = await kit.claim_wf(types=[(kit.wf, 1)], limit=1)
    commit = kit.commit(
        first,
        [
            ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=now()),
            TimerStarted(seq=2, fire_at=now(), at=now()),
        ],
        next_seq=3,
        activity_tasks=[ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))],
        timers=[TimerTaskSpec(seq=2, fire_at=now())],
        drop_seqs=[7],
        keep_lease=timedelta(seconds=30),
    )
    await store.commit_workflow_task(commit)
    await store.release(first.lease)

    act = await kit.claim_act()
    await store.heartbeat(act.lease, timedelta(seconds=30))
    error = ErrorInfo(type="E", message="once", attempts=1)
    await store.retry_activity(
        ActivityRetry(lease=act.lease, next_attempt=2, visible_at=now(), error=error)
    )
    act = await kit.claim_act()
    await store.complete_activity(
        ActivityResult(lease=act.lease, event=ActivityCompleted(seq=1, output=raw(2), at=now()))
    )
    assert await store.fire_due_timers(None, 10) >= 1
    await store.next_due(None)

    claims = {c.lease.workflow_id: c for c in await kit.claim(acts=(), limit=10)}
    await store.park_workflow(claims[a.workflow_id].lease, ErrorInfo(type="Bug", message="x"))
    await store.release(claims[b.workflow_id].lease)
    assert await store.retry_workflow(kit.tenant, a.workflow_id)
    claims = {c.lease.workflow_id: c for c in await kit.claim(acts=(), limit=10)}
    await store.fail_workflow_task(
        claims[a.workflow_id].lease, ErrorInfo(type="Flaky", message="y"), now()
    )
    later = now() + timedelta(hours=1)
    await store.commit_workflow_task(
        kit.commit(
            claims[b.workflow_id],
            [TimerStarted(seq=1, fire_at=later, at=now())],
            next_seq=2,
            timers=[TimerTaskSpec(seq=1, fire_at=later)],
        )
    )
    claims = {c.lease.workflow_id: c for c in await kit.claim(acts=(), limit=10)}
    last = claims[a.workflow_id]
    await store.commit_workflow_task(
        kit.commit(
            last,
            [WorkflowCompleted(output=raw(3), at=now())],
            status=WorkflowStatus.COMPLETED,
            output=3,
        )
    )
    assert (await store.get_workflow(kit.tenant, a.workflow_id)).status == "completed"
    await store.prune(timedelta(0), 10)
    await store.stats()
    info = WorkerInfo(
        worker_id="w1", workflow_types=[(kit.wf, 1)], activity_names=[], heartbeat_at=now()
    )
    await store.register_worker(info)
    await store.list_workers()
    await store.unregister_worker("w1")


def explain(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> str:
    rows = conn.execute("EXPLAIN (COSTS OFF) " + statement, params).fetchall()
    return "\n".join(row[0] for row in rows)


def is_router(plan: str) -> bool:
    return (
        plan.startswith("Custom Scan (Citus Adaptive)")
        and re.findall(r"Task Count: (\d+)", plan) == ["1"]
        and len(re.findall(r"Node: host=", plan)) == 1
        and "Distributed Subplan" not in plan
        and "INSERT/SELECT method" not in plan
    )


async def test_every_statement_is_a_router_query(
    recorded: tuple[Any, Recorder, Kit], citus_dsn: str
) -> None:
    store, recorder, kit = recorded
    await workload(store, kit)

    compiled = {s for name, s in store._c.items()} | set(store._c_list.values())
    compiled |= {store._s_register, store._s_workers, store._s_unregister}
    missing = compiled - set(recorder.seen)
    assert not missing, f"statements the workload never ran: {sorted(missing)[:3]}"

    names = {text: name for name, text in store._c.items()}
    names.update({text: f"LIST{key}" for key, text in store._c_list.items()})
    names.update(
        {
            store._s_register: "REGISTER_WORKER",
            store._s_workers: "LIST_WORKERS",
            store._s_unregister: "UNREGISTER_WORKER",
        }
    )
    not_router: list[tuple[str, str]] = []
    evidence: list[str] = []
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        for statement, params in recorder.seen.items():
            plan = explain(conn, statement, params)
            if f"{store._ident}." not in statement:
                # NOTIFY, to_regclass: no table, so no node but the coordinator.
                assert "Citus" not in plan, plan
                evidence.append(f"{statement[:40]:<40} coordinator only: {plan.splitlines()[0]}")
                continue
            if f"{store._ident}.layout" in statement:
                continue  # the layout, a reference table read when the store opens
            if not is_router(plan):
                not_router.append((statement[:120], plan))
            node = re.findall(r"Node: host=\S+ port=(\d+)", plan)
            tasks = re.findall(r"Task Count: (\d+)", plan)
            name = names.get(statement, statement[:40])
            evidence.append(f"{name:<40} Task Count: {tasks}, node port {node}")
    print("\n".join(["", f"{len(evidence)} statement shapes EXPLAINed:", *sorted(evidence)]))
    assert not not_router, "\n\n".join(f"{s}\n{p}" for s, p in not_router)
    assert len(recorder.seen) >= 45


async def test_notify_is_sent_by_the_coordinator_session(
    recorded: tuple[Any, Recorder, Kit], citus_dsn: str
) -> None:
    """A start wakes a LISTENer on the coordinator: the notification comes from the
    coordinator's session (a NOTIFY on a worker node would never arrive)."""
    store, _, kit = recorded
    with psycopg.connect(citus_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.work_channel}")
        await kit.start()
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == [store.work_channel]
    assert got[0].payload == kit.shard
