"""Every statement CitusStore issues is a router query: one task, on one node.

A workload drives every store operation through its paths (start, eager start, signal,
cancel, terminate, cancel of a parked workflow, reads and listings, claim with an inbox to
move, commit with events, kept lease, dropped steps, new activity and timer tasks,
heartbeat, retry, completion, timers fired, park, retry of a dead letter, failed workflow
task, terminal commit, the fsck scans, prune, stats, workers)
while recording each statement with the parameters it was sent with. Then each one is
EXPLAINed with those parameters. The NOTIFY statements touch no table: they must run in
the coordinator's own session. Finally every statement flows_citus._sql (and _fsck_sql) defines must
have been seen, so a statement added later cannot escape this test.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
import uuid6
from conftest_citus import drop_citus_store, make_citus_store

import flows_citus._fsck_sql as citus_fsck_sql
import flows_citus._sql as citus_sql
import flows_citus._sql_children as citus_sql_children
import flows_citus._sql_debounce as citus_sql_debounce
import flows_citus._sql_runs as citus_sql_runs
import flows_citus._sql_schedules as citus_sql_schedules
from flows_core import ErrorInfo
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    CancelRequested,
    TimerStarted,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskSpec,
    ContinueAsNew,
    ListQuery,
    OutboxMessage,
    PendingStart,
    ScheduleAdvance,
    ScheduleRecord,
    SlotHolder,
    TimerTaskSpec,
    WorkerInfo,
    WorkflowStatus,
)
from flows_pg._base import WORKER_STATEMENTS
from flows_pg._sql_limits import ROUTER_STATEMENTS as LIMIT_STATEMENTS
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit, raw

pytestmark = pytest.mark.citus


class Recorder:
    """Wraps a CitusStore's batch runner; keeps each statement's first parameters."""

    def __init__(self, store: Any) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        execute = store._execute

        async def recording_execute(batch: Any, tx: Any, transaction: bool) -> Any:
            for step in batch:
                self.seen.setdefault(step.statement, dict(step.params))
            return await execute(batch, tx, transaction)

        store._execute = recording_execute


def every_statement(store: Any) -> dict[str, str]:
    """Every statement flows_citus._sql and flows_citus._fsck_sql define (compiled for
    ``store``), by name; the listings by their filters."""
    statements = {
        name: store.statements(text)
        for module in (
            citus_sql,
            citus_fsck_sql,
            citus_sql_schedules,
            citus_sql_children,
            citus_sql_debounce,
            citus_sql_runs,
        )
        for name, text in vars(module).items()
        if name.isupper() and not name.startswith("_") and isinstance(text, str) and "{S}" in text
    }
    for query in listings("t", "n"):
        statements[f"LIST {listing_shape(query)}"] = store.statements(
            citus_sql.list_workflows_sql(query)
        )
    for text in WORKER_STATEMENTS:
        statements[text.split()[0] + " workers"] = store.statements(text)
    for name, text in LIMIT_STATEMENTS.items():
        statements[f"limits {name}"] = store.statements(text)
    return statements


def listings(tenant: str, name: str) -> list[ListQuery]:
    """A listing of every shape: each combination of tenant, status and name, each with
    no other filter, with all of them (id prefix, time range, keyset cursor), and with
    each of them alone."""
    now = datetime.now(UTC)
    extras: list[dict[str, Any]] = [
        {},
        {
            "id_prefix": "w",
            "created_from": now - timedelta(hours=1),
            "created_to": now + timedelta(hours=1),
            "after": (now + timedelta(hours=1), "w"),
        },
        {"id_prefix": "w"},
        {"created_from": now - timedelta(hours=1)},
        {"created_to": now + timedelta(hours=1)},
        {"after": (now + timedelta(hours=1), "w")},
    ]
    queries = []
    for with_tenant, status, with_name in itertools.product((False, True), repeat=3):
        for extra in extras if with_tenant or not (status or with_name) else extras[:2]:
            queries.append(
                ListQuery(
                    tenant_id=tenant if with_tenant else None,
                    status=WorkflowStatus.RUNNING if status else None,
                    name=name if with_name else None,
                    **extra,
                )
            )
    return queries


def listing_shape(query: ListQuery) -> str:
    """Which filters a listing sets (its statement's shape)."""
    fields = ("tenant_id", "status", "name", "id_prefix", "created_from", "created_to", "after")
    return ",".join(f for f in fields if getattr(query, f) is not None)


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
    for query in listings(kit.tenant, kit.wf):
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
    message = OutboxMessage(message_id=str(uuid6.uuid7()), body=raw({"to": "someone"}))
    moved = await store.commit_workflow_task(msgspec.structs.replace(commit, outbox=[message]))
    # the lease kept, nothing new to record: only the inbox moves (COMMIT_MOVE)
    await store.commit_workflow_task(
        kit.commit(
            first,
            [],
            next_seq=3,
            keep_lease=timedelta(seconds=30),
            claimed_history_length=len(first.history) + 2 + len(moved),
            expected_next_seq=3,
        )
    )
    await store.release(first.lease)
    outbox = await store.claim_outbox(None, 10, timedelta(seconds=30))
    assert [m.message_id for m in outbox] == [message.message_id]
    await store.delete_outbox(outbox)
    assert await store.deliver_once(kit.tenant, a.workflow_id, kit.signal("go", 2), "k1")
    assert not await store.deliver_once(kit.tenant, a.workflow_id, kit.signal("go", 3), "k1")

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
    c = await kit.start()
    ended = WorkflowTerminatedEvent(reason="ops", at=now())
    assert (await store.terminate_workflow(kit.tenant, c.workflow_id, ended)).value == "terminated"
    d = await kit.start()
    parked = {x.lease.workflow_id: x for x in await kit.claim(acts=(), limit=10)}[d.workflow_id]
    await store.park_workflow(parked.lease, ErrorInfo(type="Bug", message="z"))
    stop = CancelRequested(reason="stop", at=now())
    assert (await store.cancel_workflow(kit.tenant, d.workflow_id, stop)).value == "cancelled"
    await store.commit_workflow_task(
        kit.commit(
            last,
            [WorkflowCompleted(output=raw(3), at=now())],
            status=WorkflowStatus.COMPLETED,
            output=3,
        )
    )
    assert (await store.get_workflow(kit.tenant, a.workflow_id)).status == "completed"
    await continued(store, kit)
    await store.fsck_workflows(tenant_id=None, after=None, limit=100)
    await store.fsck_workflows(tenant_id=kit.tenant, after=(kit.shard, kit.tenant, ""), limit=1)
    await store.fsck_orphans(tenant_id=None, limit=100)
    await store.fsck_expired_leases(tenant_id=None, older_than=timedelta(0), limit=100)
    await store.prune(timedelta(0), 10)
    await store.stats()
    assert await store.count_workflows(kit.tenant)
    info = WorkerInfo(
        worker_id="w1", workflow_types=[(kit.wf, 1)], activity_names=[], heartbeat_at=now()
    )
    await store.register_worker(info)
    await store.list_workers()
    await store.unregister_worker("w1")
    await schedule_workload(store, kit)
    await limits_workload(store, kit)
    await debounce_workload(store, kit)


async def debounce_workload(store: Any, kit: Kit) -> None:
    """Every debounced-start statement: the start (close a due window, upsert), get,
    claim (probe, lease), the fenced delete, the next wake-up."""
    pending = PendingStart(
        tenant_id=kit.tenant,
        workflow_name=kit.wf,
        debounce_key="cart",
        shard_key=store.layout.locate(kit.tenant, "cart"),
        workflow_id="cart@1",
        workflow_version=1,
        input=raw(1),
    )
    await store.debounce_start(pending, window=timedelta(milliseconds=1))
    await store.get_pending_start(kit.tenant, kit.wf, "cart", pending.shard_key)
    await asyncio.sleep(0.01)
    (claim,) = await store.claim_pending_starts(None, limit=10, lease=timedelta(seconds=30))
    assert await store.finish_pending_start(claim.lease)
    await store.next_pending_start_due(None)


async def schedule_workload(store: Any, kit: Kit) -> None:
    """Every schedule statement: put (insert, update), get, list, claim (probe, lease),
    the fenced advance, the next wake-up, delete."""
    now = kit.now()
    row = ScheduleRecord(
        tenant_id=kit.tenant,
        schedule_id="nightly",
        shard_key=store.layout.locate(kit.tenant, "nightly"),
        workflow_name=kit.wf,
        workflow_version=1,
        input=raw(1),
        spec=raw({"every": "PT1S"}),
        next_tick_at=now - timedelta(seconds=1),
        due_at=now - timedelta(seconds=1),
    )
    assert await store.put_schedule(row, expected_revision=None)
    found = await store.get_schedule(kit.tenant, "nightly")
    assert await store.put_schedule(found, expected_revision=found.revision)
    await store.list_schedules(kit.tenant, after=None, limit=10)
    await store.list_schedules(None, after=("a", kit.tenant), limit=10)
    (claim,) = await store.claim_schedules(None, limit=10, lease=timedelta(seconds=30))
    assert await store.advance_schedule(
        ScheduleAdvance(
            lease=claim.lease,
            revision=claim.schedule.revision,
            next_tick_at=None,
            due_at=None,
            trigger_at=None,
            last_tick_at=now,
            last_workflow_id="nightly@x",
            buffered_tick_at=None,
        )
    )
    await store.next_schedule_due(None)
    assert await store.delete_schedule(kit.tenant, "nightly")


def _holder(kit: Kit, lease: Any = None, *, kind: str = "task", past: bool = False) -> SlotHolder:
    """A slot holder: a claim's lease, or made up (a task that does not exist)."""
    when = kit.now() + (timedelta(seconds=-1) if past else timedelta(hours=1))
    return SlotHolder(
        kind=kind,
        tenant_id=kit.tenant if lease is None else lease.tenant_id,
        shard_key=kit.shard if lease is None else lease.shard_key,
        workflow_id="ghost" if lease is None else lease.workflow_id,
        task_id=str(uuid6.uuid7()) if lease is None else lease.task_id,
        token=str(uuid6.uuid7()) if lease is None else lease.token,
        expires_at=when,
    )


async def limits_workload(store: Any, kit: Kit) -> None:
    """Every flow-control statement (flows_pg._sql_limits): slots taken, checked against
    live and dead holders (task and workflow), given back with a waiter woken; a task
    deferred and its reason read; rate tokens; usage."""
    await kit.start()
    await kit.start()
    # a start with a priority: its first task goes ahead in the same transaction
    await store.start_workflow(msgspec.structs.replace(kit.new(), claim_ahead=timedelta(seconds=5)))
    first, second = await kit.claim(acts=(), limit=2)
    held = _holder(kit, first.lease, past=True)
    assert (await store.acquire_slot("a:x", "c", 1, held)).acquired  # rows made, then taken
    waiter = _holder(kit, second.lease)
    assert not (await store.acquire_slot("a:x", "c", 1, waiter)).acquired  # holder alive
    await store.defer_task(second.lease, kit.now() + timedelta(hours=1), "slot")
    assert await store.waiting_reason(second.lease.tenant_id, second.lease.workflow_id) == "slot"
    await store.release_slot("a:x", "c", held)  # wakes the waiter
    ghost = _holder(kit, past=True)
    assert (await store.acquire_slot("a:g", "c", 1, ghost)).acquired
    assert (await store.acquire_slot("a:g", "c", 1, _holder(kit))).acquired  # ghost freed
    wf_holder = _holder(kit, first.lease, kind="workflow", past=True)
    assert (await store.acquire_slot("w:x", "c", 1, wf_holder)).acquired
    assert not (await store.acquire_slot("w:x", "c", 1, _holder(kit))).acquired
    every, horizon = timedelta(seconds=0.2), timedelta(minutes=1)
    reserved = None
    while reserved is None:  # tokens until one is reserved ahead (the next is taken)
        task = str(uuid6.uuid7())
        reserved = await store.take_rate_token("a:r", "r", every, task, horizon)
    await asyncio.sleep((reserved - datetime.now(UTC)).total_seconds() + 0.01)
    await store.take_rate_token("a:r", "r", every, task, horizon)  # its token, due now
    assert await store.limit_usage(["a:x", "a:r"])


async def continued(store: Any, kit: Kit) -> None:
    """A status published, then a continue-as-new (with a signal waiting in the inbox and
    a timer of the ended run), and the reads of the earlier run."""
    new = await kit.start()
    claim = await kit.claim_wf()
    later = kit.now() + timedelta(hours=1)
    await store.commit_workflow_task(
        kit.commit(
            claim,
            [TimerStarted(seq=1, fire_at=later, at=kit.now())],
            next_seq=2,
            timers=[TimerTaskSpec(seq=1, fire_at=later)],
            status_value=raw({"step": 1}),
        )
    )
    await store.signal_workflow(kit.tenant, new.workflow_id, kit.signal("go", 1))
    claim = await kit.claim_wf()
    started = WorkflowStarted(
        name=kit.wf,
        version=1,
        workflow_id=new.workflow_id,
        tenant_id=kit.tenant,
        input=raw(2),
        seed=1,
        at=kit.now(),
        run_number=2,
    )
    following = ContinueAsNew(started=started, carried=[claim.history[-1]])
    end = WorkflowContinuedAsNew(input=raw(2), at=kit.now())
    await store.commit_workflow_task(kit.commit(claim, [end], continue_as_new=following))
    assert (await store.get_workflow(kit.tenant, new.workflow_id)).run_number == 2
    assert len(await store.list_runs(kit.tenant, new.workflow_id)) == 1
    assert await store.get_run_history(kit.tenant, new.workflow_id, 1)


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

    statements = every_statement(store)
    missing = sorted(name for name, text in statements.items() if text not in recorder.seen)
    assert not missing, f"statements the workload never ran: {missing}"

    names = {text: name for name, text in statements.items()}
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
    assert len(recorder.seen) >= 55


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
