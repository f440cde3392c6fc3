"""PostgreSQL-specific behaviour of PostgresStore: migrations, fencing, SKIP LOCKED, tx=,
tenancy, LISTEN/NOTIFY. The adapter-independent guarantees live in the contract suite."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from conftest_pg import drop_pg_store, fresh_schema, make_pg_store
from psycopg import sql

from flows_core._errors import (
    ErrorInfo,
    InvalidArgument,
    LeaseLost,
    WorkflowAlreadyExists,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    CancelRequested,
    SignalReceived,
    TimerFired,
    TimerStarted,
    WorkflowStarted,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    ActivityTaskSpec,
    CancelOutcome,
    ClaimRequest,
    ListQuery,
    NewWorkflow,
    TimerTaskSpec,
    WorkerInfo,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)
from flows_pg import PostgresStore, check_schema, migrate

pytestmark = pytest.mark.pg

Raw = msgspec.Raw


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def new_workflow(
    name: str, workflow_id: str | None = None, tenant: str = "default", payload: bytes = b"{}"
) -> NewWorkflow:
    workflow_id = workflow_id or uid("wf-")
    started = WorkflowStarted(
        at=msgspec.json.decode(b'"2026-01-01T00:00:00Z"', type=__import__("datetime").datetime),
        name=name,
        version=1,
        workflow_id=workflow_id,
        tenant_id=tenant,
        input=Raw(payload),
        seed=7,
    )
    return NewWorkflow(
        tenant_id=tenant,
        workflow_id=workflow_id,
        name=name,
        version=1,
        shard_key=f"{name}-shard-0",
        input=Raw(payload),
        started=started,
    )


def request(
    name: str, *, limit: int = 10, lease: float = 30.0, activities: tuple[str, ...] = ()
) -> ClaimRequest:
    return ClaimRequest(
        owner=uid("worker-"),
        workflow_types=[(name, 1)],
        activity_names=list(activities),
        limit=limit,
        lease=timedelta(seconds=lease),
    )


async def table_count(store: PostgresStore, table: str) -> int:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(store.schema), sql.Identifier(table)
            )
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


# -- migrations --


async def test_migrate_twice_is_idempotent(pg_dsn: str) -> None:
    schema = fresh_schema()
    assert await migrate(pg_dsn, schema) == [1, 3, 4, 5, 7, 9, 11, 13]
    assert await migrate(pg_dsn, schema) == []
    store = PostgresStore(pg_dsn, schema=schema)
    try:
        assert await store.migrate() == []
        assert await store.is_migrated()
    finally:
        await drop_pg_store(store)


async def test_is_migrated_false_on_missing_schema(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn, schema=fresh_schema()) as store:
        assert not await store.is_migrated()


async def test_ten_concurrent_migrations_apply_once(pg_dsn: str) -> None:
    schema = fresh_schema()
    results = await asyncio.gather(*(migrate(pg_dsn, schema) for _ in range(10)))
    assert sorted(results) == [[]] * 9 + [[1, 3, 4, 5, 7, 9, 11, 13]]
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
        )
        assert sorted(await cur.fetchall()) == [(1,), (3,), (4,), (5,), (7,), (9,), (11,), (13,)]
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    "name",
    [
        "flows; DROP TABLE x",
        'a"b',
        "Flows",
        "1abc",
        "",
        "a" * 64,
        "a-b",
        "a b",
        "pg_catalog",
        "pg_flows",
        "information_schema",
        "flöws",
        "flows\n",
    ],
)
async def test_hostile_schema_names_are_rejected(pg_dsn: str, name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_schema(name)
    with pytest.raises(InvalidArgument):
        PostgresStore(pg_dsn, schema=name)
    with pytest.raises(InvalidArgument):
        await migrate(pg_dsn, name)


def test_schema_name_must_be_a_string() -> None:
    with pytest.raises(InvalidArgument):
        check_schema(None)
    assert check_schema("_flows_2") == "_flows_2"
    assert check_schema("a" * 63) == "a" * 63


# -- start, duplicate, payloads --


async def test_start_get_and_duplicate(store: PostgresStore) -> None:
    new = new_workflow(uid("n"), payload=b'{"x": [1, 2.5, "\\u00e9"]}')
    await store.start_workflow(new)
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.status == WorkflowStatus.RUNNING
    assert rec.history_length == 1
    assert rec.next_seq == 1
    assert rec.workflow_task_pending
    assert msgspec.json.decode(rec.input) == {"x": [1, 2.5, "é"]}
    with pytest.raises(WorkflowAlreadyExists):
        await store.start_workflow(new)
    # same id under another workflow name (another shard key): still taken for the tenant
    other = new_workflow(uid("n"), workflow_id=new.workflow_id)
    with pytest.raises(WorkflowAlreadyExists):
        await store.start_workflow(other)
    history = await store.get_history("default", new.workflow_id)
    assert [type(e) for e in history] == [WorkflowStarted]


async def test_payload_bytes_round_trip_exactly(store: PostgresStore) -> None:
    # Replay compares recorded payloads byte for byte: key order, spacing, number
    # spelling and \u0000 must survive storage (jsonb would rewrite all of them).
    payload = b'{"z": 1, "a":[1.0,1e-07 , 12345678901234567890], "s": "a\\u0000b\\u00e9"}'
    name, act = uid("n"), uid("act")
    new = new_workflow(name, payload=payload)
    await store.start_workflow(new)
    rec = await store.get_workflow("default", new.workflow_id)
    assert bytes(rec.input) == payload
    [started] = await store.get_history("default", new.workflow_id)
    assert isinstance(started, WorkflowStarted)
    assert bytes(started.input) == payload
    [wt] = await store.claim(request(name))
    assert isinstance(wt, WorkflowTaskClaim)
    assert isinstance(wt.history[0], WorkflowStarted)
    assert bytes(wt.history[0].input) == payload
    at = wt.workflow.created_at
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=2,
            events=[ActivityScheduled(at=at, seq=1, name=act, input=Raw(payload))],
            activity_tasks=[ActivityTaskSpec(seq=1, name=act, input=Raw(payload))],
        )
    )
    [a] = await store.claim(request(name, activities=(act,)))
    assert isinstance(a, ActivityTaskClaim)
    assert bytes(a.input) == payload
    scheduled = (await store.get_history("default", new.workflow_id, after=1))[0]
    assert isinstance(scheduled, ActivityScheduled)
    assert bytes(scheduled.input) == payload


# -- fencing --


async def test_expired_lease_is_taken_over_and_the_old_claimant_is_fenced(
    store: PostgresStore,
) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [first] = await store.claim(request(name, lease=0.3))
    assert isinstance(first, WorkflowTaskClaim)
    assert await store.claim(request(name)) == []  # leased: not claimable
    await asyncio.sleep(0.5)
    [second] = await store.claim(request(name, lease=30))
    assert isinstance(second, WorkflowTaskClaim)
    assert second.lease.task_id == first.lease.task_id
    assert second.lease.token != first.lease.token

    at = first.workflow.created_at

    def commit(lease_of: WorkflowTaskClaim) -> WorkflowTaskCommit:
        return WorkflowTaskCommit(
            lease=lease_of.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=2,
            events=[ActivityScheduled(at=at, seq=1, name="act", input=Raw(b"1"))],
            activity_tasks=[ActivityTaskSpec(seq=1, name="act", input=Raw(b"1"))],
        )

    with pytest.raises(LeaseLost):
        await store.commit_workflow_task(commit(first))
    with pytest.raises(LeaseLost):
        await store.heartbeat(first.lease, timedelta(seconds=30))
    with pytest.raises(LeaseLost):
        await store.park_workflow(first.lease, ErrorInfo(type="X", message="y"))
    await store.release(first.lease)  # silent, and must not release the second's lease
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.history_length == 1
    assert rec.next_seq == 1
    assert not rec.workflow_task_pending
    assert len(await store.get_history("default", new.workflow_id)) == 1

    await store.commit_workflow_task(commit(second))
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.history_length == 2
    assert rec.next_seq == 2
    # a replayed commit (same lease, task gone) is refused too
    with pytest.raises(LeaseLost):
        await store.commit_workflow_task(commit(second))


async def test_commit_with_stale_next_seq_is_fenced(store: PostgresStore) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [claim] = await store.claim(request(name))
    assert isinstance(claim, WorkflowTaskClaim)
    bad = WorkflowTaskCommit(
        lease=claim.lease,
        claimed_history_length=1,
        expected_next_seq=5,
        next_seq=6,
        events=[TimerStarted(at=claim.workflow.created_at, seq=5, fire_at=claim.lease.expires_at)],
        timers=[TimerTaskSpec(seq=5, fire_at=claim.lease.expires_at)],
    )
    with pytest.raises(LeaseLost, match="next step"):
        await store.commit_workflow_task(bad)
    assert len(await store.get_history("default", new.workflow_id)) == 1
    assert await store.next_due([new.shard_key]) == claim.lease.expires_at  # no timer written


async def test_activity_fencing_and_retry(store: PostgresStore) -> None:
    name = uid("n")
    act = uid("act")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    at = wt.workflow.created_at
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=2,
            events=[ActivityScheduled(at=at, seq=1, name=act, input=Raw(b"[1]"))],
            activity_tasks=[ActivityTaskSpec(seq=1, name=act, input=Raw(b"[1]"))],
        )
    )
    [a1] = await store.claim(request(name, activities=(act,), lease=0.2))
    assert isinstance(a1, ActivityTaskClaim)
    assert a1.attempt == 1
    assert a1.seq == 1
    await asyncio.sleep(0.4)
    [a2] = await store.claim(request(name, activities=(act,)))
    assert isinstance(a2, ActivityTaskClaim)
    done = ActivityCompleted(at=at, seq=1, output=Raw(b'"ok"'))
    with pytest.raises(LeaseLost):
        await store.complete_activity(ActivityResult(lease=a1.lease, event=done))
    with pytest.raises(LeaseLost):
        await store.retry_activity(
            ActivityRetry(
                lease=a1.lease,
                next_attempt=2,
                visible_at=at,
                error=ErrorInfo(type="E", message="m"),
            )
        )
    await store.retry_activity(
        ActivityRetry(
            lease=a2.lease,
            next_attempt=2,
            visible_at=store.clock.now() + timedelta(milliseconds=300),
            error=ErrorInfo(type="E", message="m"),
        )
    )
    assert await store.claim(request(name, activities=(act,))) == []
    due = await store.next_due([new.shard_key])
    assert due is not None
    await asyncio.sleep(max(0.0, (due - store.clock.now()).total_seconds()) + 0.05)
    [a3] = await store.claim(request(name, activities=(act,)))
    assert isinstance(a3, ActivityTaskClaim)
    assert a3.attempt == 2
    await store.complete_activity(ActivityResult(lease=a3.lease, event=done))
    rec = await store.get_workflow("default", new.workflow_id)
    # The result waits in the inbox until the workflow task is claimed.
    assert rec.history_length == 2
    assert rec.inbox_length == 1
    assert rec.workflow_task_pending
    [wt2] = await store.claim(request(name))
    assert isinstance(wt2, WorkflowTaskClaim)
    assert wt2.workflow.history_length == 3
    assert wt2.workflow.inbox_length == 0
    assert isinstance(wt2.history[-1], ActivityCompleted)
    assert isinstance(
        (await store.get_history("default", new.workflow_id, after=2))[0], ActivityCompleted
    )


async def test_bogus_lease_tokens_are_lease_lost(store: PostgresStore) -> None:
    name = uid("n")
    await store.start_workflow(new_workflow(name))
    [claim] = await store.claim(request(name))
    bogus = msgspec.structs.replace(claim.lease, token="not-a-uuid")
    with pytest.raises(LeaseLost):
        await store.heartbeat(bogus, timedelta(seconds=1))
    other = msgspec.structs.replace(claim.lease, token=str(uuid.uuid4()))
    with pytest.raises(LeaseLost):
        await store.heartbeat(other, timedelta(seconds=1))
    reply = await store.heartbeat(claim.lease, timedelta(seconds=60))
    assert reply.expires_at > claim.lease.expires_at
    assert not reply.cancel_requested


# -- concurrency --


async def test_concurrent_claimers_never_double_claim(pg_dsn: str, module_schema: str) -> None:
    name = uid("n")
    stores = [PostgresStore(pg_dsn, schema=module_schema, max_size=2) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        await stores[0].migrate()
        for i in range(200):
            await stores[i % 4].start_workflow(new_workflow(name))
        seen: list[str] = []

        async def claimer(s: PostgresStore) -> int:
            got = 0
            while True:
                batch = await s.claim(request(name, limit=7))
                if not batch:
                    return got
                got += len(batch)
                seen.extend(c.lease.task_id for c in batch)

        counts = await asyncio.gather(*(claimer(s) for s in stores))
        assert sum(counts) == 200
        assert len(seen) == len(set(seen)) == 200
    finally:
        for s in stores:
            await s.close()


async def test_claim_is_oldest_first_and_batched(store: PostgresStore) -> None:
    name = uid("n")
    ids = [uid("wf-") for _ in range(5)]
    for wid in ids:
        await store.start_workflow(new_workflow(name, wid))
    first = await store.claim(request(name, limit=2))
    rest = await store.claim(request(name, limit=10))
    assert [c.lease.workflow_id for c in first + rest] == ids
    assert len(first) == 2


async def history_positions(store: PostgresStore, workflow_id: str) -> list[int]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT position FROM {}.history WHERE workflow_id = %s ORDER BY 1").format(
                sql.Identifier(store.schema)
            ),
            (workflow_id,),
        )
        return [int(row[0]) for row in await cur.fetchall()]


async def inbox_payloads(store: PostgresStore, workflow_id: str) -> list[bytes]:
    """The inbox's events (signals), in inbox order."""
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL(
                "SELECT event::text FROM {}.inbox WHERE workflow_id = %s ORDER BY inbox_seq"
            ).format(sql.Identifier(store.schema)),
            (workflow_id,),
        )
        events = [msgspec.json.decode(row[0]) for row in await cur.fetchall()]
    return [msgspec.json.encode(e["payload"]) for e in events]


async def test_concurrent_signals_queue_in_the_inbox_and_move_in_gap_free(
    store: PostgresStore,
) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    at = (await store.get_workflow("default", new.workflow_id)).created_at

    async def send(i: int) -> None:
        await store.signal_workflow(
            "default",
            new.workflow_id,
            SignalReceived(at=at, name="s", payload=Raw(str(i).encode()), signal_id=str(i)),
        )

    await asyncio.gather(*(send(i) for i in range(20)))
    # Nothing entered the history yet: the signals wait in the inbox, in arrival order.
    assert len(await store.get_history("default", new.workflow_id)) == 1
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length) == (1, 20)
    arrival = await inbox_payloads(store, new.workflow_id)
    assert sorted(int(p) for p in arrival) == list(range(20))
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.tasks WHERE workflow_id = %s").format(
                sql.Identifier(store.schema)
            ),
            (new.workflow_id,),
        )
        assert await cur.fetchone() == (1,)  # wake-ups coalesce into one workflow task

    [claim] = await store.claim(request(name))
    assert isinstance(claim, WorkflowTaskClaim)
    assert claim.workflow.history_length == 21
    assert claim.workflow.inbox_length == 0
    history = await store.get_history("default", new.workflow_id)
    assert msgspec.json.encode(claim.history) == msgspec.json.encode(history)
    assert await history_positions(store, new.workflow_id) == list(range(1, 22))
    moved = [bytes(e.payload) for e in history[1:] if isinstance(e, SignalReceived)]
    assert moved == arrival  # all 20, in arrival order
    assert await inbox_payloads(store, new.workflow_id) == []


async def test_sequential_signals_keep_their_order(store: PostgresStore) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    at = store.clock.now()
    for i in range(5):
        await store.signal_workflow(
            "default",
            new.workflow_id,
            SignalReceived(at=at, name="s", payload=Raw(str(i).encode()), signal_id=str(i)),
        )
    [claim] = await store.claim(request(name))
    assert isinstance(claim, WorkflowTaskClaim)
    assert [bytes(e.payload) for e in claim.history if isinstance(e, SignalReceived)] == [
        str(i).encode() for i in range(5)
    ]


# -- tx= --


async def test_tx_commit_and_rollback(store: PostgresStore, pg_dsn: str) -> None:
    name = uid("n")
    kept, dropped = new_workflow(name), new_workflow(name)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        async with conn.transaction():
            await store.start_workflow(kept, tx=conn)
            # visible inside the transaction...
            rec = await store.get_workflow("default", kept.workflow_id, tx=conn)
            assert rec.status == WorkflowStatus.RUNNING
        # ... and after commit, to everyone
        assert (await store.get_workflow("default", kept.workflow_id)).history_length == 1

        async def rolled_back() -> None:
            async with conn.transaction():
                await store.start_workflow(dropped, tx=conn)
                await store.signal_workflow(
                    "default",
                    dropped.workflow_id,
                    SignalReceived(at=rec.created_at, name="s", payload=Raw(b"1"), signal_id="1"),
                    tx=conn,
                )
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await rolled_back()
    with pytest.raises(WorkflowNotFound):
        await store.get_workflow("default", dropped.workflow_id)
    with pytest.raises(WorkflowNotFound):
        await store.get_history("default", dropped.workflow_id)
    async with store.pool.connection() as c:
        cur = await c.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {s}.tasks WHERE workflow_id = %(w)s)"
                " + (SELECT count(*) FROM {s}.history WHERE workflow_id = %(w)s)"
            ).format(s=sql.Identifier(store.schema)),
            {"w": dropped.workflow_id},
        )
        assert await cur.fetchone() == (0,)
    claims = await store.claim(request(name))
    assert [c.lease.workflow_id for c in claims] == [kept.workflow_id]


async def test_tx_duplicate_start_leaves_the_callers_transaction_usable(
    store: PostgresStore, pg_dsn: str
) -> None:
    new = new_workflow(uid("n"))
    await store.start_workflow(new)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn, conn.transaction():
        with pytest.raises(WorkflowAlreadyExists):
            await store.start_workflow(new, tx=conn)
        cur = await conn.execute("SELECT 42")
        assert await cur.fetchone() == (42,)


async def test_tx_of_the_wrong_type_is_a_type_error(store: PostgresStore, pg_dsn: str) -> None:
    new = new_workflow(uid("n"))
    with psycopg.connect(pg_dsn) as sync_conn, pytest.raises(TypeError, match="Connection"):
        await store.start_workflow(new, tx=sync_conn)
    with pytest.raises(TypeError, match="str"):
        await store.start_workflow(new, tx="BEGIN")
    with pytest.raises(TypeError, match="object"):
        await store.get_workflow("default", "x", tx=object())
    with pytest.raises(TypeError):
        await store.cancel_workflow("default", "x", CancelRequested(at=store.clock.now()), tx=1)
    with pytest.raises(WorkflowNotFound):
        await store.get_workflow("default", new.workflow_id)


# -- tenancy --


async def test_tenants_cannot_see_each_other(store: PostgresStore) -> None:
    name = uid("n")
    mine = new_workflow(name, tenant="acme")
    await store.start_workflow(mine)
    now = store.clock.now()
    with pytest.raises(WorkflowNotFound):
        await store.get_workflow("globex", mine.workflow_id)
    with pytest.raises(WorkflowNotFound):
        await store.get_history("globex", mine.workflow_id)
    with pytest.raises(WorkflowNotFound):
        await store.signal_workflow(
            "globex",
            mine.workflow_id,
            SignalReceived(at=now, name="s", payload=Raw(b"1"), signal_id="1"),
        )
    with pytest.raises(WorkflowNotFound):
        await store.cancel_workflow("globex", mine.workflow_id, CancelRequested(at=now))
    assert await store.list_workflows(ListQuery(tenant_id="globex", name=name)) == []
    # the same id is free in another tenant
    theirs = new_workflow(name, workflow_id=mine.workflow_id, tenant="globex")
    await store.start_workflow(theirs)
    assert len(await store.get_history("acme", mine.workflow_id)) == 1
    listed = await store.list_workflows(ListQuery(tenant_id="acme", name=name))
    assert [(r.tenant_id, r.workflow_id) for r in listed] == [("acme", mine.workflow_id)]
    assert len(await store.list_workflows(ListQuery(tenant_id=None, name=name))) == 2


async def test_list_filters_order_and_paging(store: PostgresStore) -> None:
    name, tenant = uid("n"), uid("tenant-")
    ids = []
    for _ in range(5):
        new = new_workflow(name, tenant=tenant)
        await store.start_workflow(new)
        ids.append(new.workflow_id)
    listed = await store.list_workflows(ListQuery(tenant_id=tenant, limit=3))
    assert [r.workflow_id for r in listed] == ids[::-1][:3]
    page2 = await store.list_workflows(ListQuery(tenant_id=tenant, limit=3, offset=3))
    assert [r.workflow_id for r in page2] == ids[::-1][3:]
    running = await store.list_workflows(
        ListQuery(tenant_id=tenant, status=WorkflowStatus.RUNNING, name=name)
    )
    assert len(running) == 5
    assert (
        await store.list_workflows(ListQuery(tenant_id=tenant, status=WorkflowStatus.FAILED)) == []
    )


# -- timers, parking, terminal --


async def test_timers_fire_once_and_park_blocks_claims(store: PostgresStore) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    fire_at = store.clock.now() + timedelta(milliseconds=200)
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=2,
            events=[TimerStarted(at=fire_at, seq=1, fire_at=fire_at)],
            timers=[TimerTaskSpec(seq=1, fire_at=fire_at)],
        )
    )
    assert await store.fire_due_timers([new.shard_key], 10) == 0
    due = await store.next_due([new.shard_key])
    assert due is not None
    assert abs((due - fire_at).total_seconds()) < 0.001
    await asyncio.sleep(0.3)
    fired = await asyncio.gather(*(store.fire_due_timers([new.shard_key], 10) for _ in range(3)))
    assert sum(fired) == 1
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length) == (2, 1)
    assert rec.workflow_task_pending
    assert len(await store.get_history("default", new.workflow_id)) == 2
    [wt2] = await store.claim(request(name))
    assert isinstance(wt2, WorkflowTaskClaim)
    assert len(wt2.history) == 3
    assert isinstance(wt2.history[-1], TimerFired)
    assert wt2.history[-1].seq == 1
    assert len(await store.get_history("default", new.workflow_id)) == 3
    await store.park_workflow(wt2.lease, ErrorInfo(type="NonDeterminismError", message="x"))
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.status == WorkflowStatus.PARKED
    assert not rec.workflow_task_pending
    assert rec.error is not None
    assert rec.error.type == "NonDeterminismError"
    await store.signal_workflow(
        "default",
        new.workflow_id,
        SignalReceived(at=fire_at, name="s", payload=Raw(b"1"), signal_id="1"),
    )
    assert await store.claim(request(name)) == []  # still parked
    assert await store.next_due([new.shard_key]) is None
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length) == (3, 1)  # the signal waits


async def test_terminal_commit_drops_every_task(store: PostgresStore) -> None:
    name, act = uid("n"), uid("act")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    at = wt.workflow.created_at
    far = store.clock.now() + timedelta(hours=1)
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=3,
            events=[
                ActivityScheduled(at=at, seq=1, name=act, input=Raw(b"1")),
                TimerStarted(at=at, seq=2, fire_at=far),
            ],
            activity_tasks=[ActivityTaskSpec(seq=1, name=act, input=Raw(b"1"))],
            timers=[TimerTaskSpec(seq=2, fire_at=far)],
        )
    )
    assert await store.cancel_workflow("default", new.workflow_id, CancelRequested(at=at)) == (
        CancelOutcome.REQUESTED
    )
    assert await store.cancel_workflow("default", new.workflow_id, CancelRequested(at=at)) == (
        CancelOutcome.ALREADY_REQUESTED
    )
    claims = await store.claim(request(name, activities=(act,)))
    [wt2] = [c for c in claims if isinstance(c, WorkflowTaskClaim)]
    [a] = [c for c in claims if isinstance(c, ActivityTaskClaim)]
    assert a.cancel_requested
    from flows_core.events import WorkflowCancelledEvent

    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt2.lease,
            claimed_history_length=wt2.workflow.history_length,
            expected_next_seq=3,
            next_seq=3,
            events=[WorkflowCancelledEvent(at=at)],
            status=WorkflowStatus.CANCELLED,
        )
    )
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.status == WorkflowStatus.CANCELLED
    assert not rec.workflow_task_pending
    with pytest.raises(LeaseLost):
        await store.complete_activity(
            ActivityResult(lease=a.lease, event=ActivityCompleted(at=at, seq=1, output=Raw(b"1")))
        )
    with pytest.raises(WorkflowNotRunning):
        await store.signal_workflow(
            "default",
            new.workflow_id,
            SignalReceived(at=at, name="s", payload=Raw(b"1"), signal_id="1"),
        )
    assert await store.cancel_workflow("default", new.workflow_id, CancelRequested(at=at)) == (
        CancelOutcome.ALREADY_FINISHED
    )
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.tasks WHERE workflow_id = %s").format(
                sql.Identifier(store.schema)
            ),
            (new.workflow_id,),
        )
        assert await cur.fetchone() == (0,)


# -- LISTEN/NOTIFY --


def _worker_info(worker_id: str, name: str) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        workflow_types=[(name, 1)],
        activity_names=[],
        heartbeat_at=datetime.now(UTC),
    )


async def test_notify_wakes_wait_for_work_quickly(pg_dsn: str, module_schema: str) -> None:
    waiter = await make_pg_store(pg_dsn, module_schema)
    writer = await make_pg_store(pg_dsn, module_schema)
    name = uid("n")
    # a start notifies when a live worker (here: registered through another store) runs it
    await waiter.register_worker(_worker_info(uid("w-"), name))
    try:
        await waiter.wait_for_work(0.01)  # starts the listener
        t0 = time.monotonic()
        await waiter.wait_for_work(0.3)  # nothing happens: the timeout is the fallback
        assert time.monotonic() - t0 >= 0.25

        async def later() -> None:
            await asyncio.sleep(0.2)
            await writer.start_workflow(new_workflow(name))

        # woken by the notification: long before the 60 s timeout
        await asyncio.wait_for(asyncio.gather(waiter.wait_for_work(60), later()), 20)
    finally:
        await waiter.close()
        await writer.close()


async def test_work_notified_between_two_waits_is_not_lost(pg_dsn: str, module_schema: str) -> None:
    """A worker does not wait while it claims or reads its timers: a notification that
    arrives then makes its next wait return at once, instead of sleeping through it."""
    waiter = await make_pg_store(pg_dsn, module_schema)
    writer = await make_pg_store(pg_dsn, module_schema)
    name = uid("n")
    await waiter.register_worker(_worker_info(uid("w-"), name))
    try:
        await waiter.wait_for_work(0.01)  # starts the listener; nobody waits now
        await writer.start_workflow(new_workflow(name))
        for _ in range(500):  # until the listener has read the notification
            if waiter._listener._work_missed:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(waiter.wait_for_work(60), 10)  # at once, not after 60 s
        assert not waiter._listener._work_missed, "the missed wake-up is used once"
    finally:
        await waiter.close()
        await writer.close()


async def _notifications(conn: psycopg.AsyncConnection[Any], seconds: float) -> list[str]:
    got: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for note in conn.notifies():
                got.append(note.channel)
    return got


async def test_start_notifies_only_when_another_live_worker_runs_the_workflow(
    pg_dsn: str, module_schema: str
) -> None:
    """A start's NOTIFY costs a transaction on every listening backend: a store that
    runs workers of its own wakes them in-process, and notifies only when a live worker
    other than its own runs the workflow's type."""
    store = await make_pg_store(pg_dsn, module_schema)
    other = await make_pg_store(pg_dsn, module_schema)
    name = uid("n")
    listen = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        await listen.execute(f'LISTEN "{store.work_channel}"')
        await listen.execute(f'LISTEN "{store.workflow_channel}"')
        # a store without workers of its own (a client) always notifies
        await store.start_workflow(new_workflow(name))
        assert await _notifications(listen, 0.2) == [store.work_channel]
        # a worker of this store, waiting: woken in-process, still no notification
        await store.register_worker(_worker_info(uid("w-"), name))
        await store.wait_for_work(0.01)
        waiting = asyncio.ensure_future(store.wait_for_work(10))
        await asyncio.sleep(0.05)
        await store.start_workflow(new_workflow(name))
        await asyncio.wait_for(waiting, 5)  # woken, long before its 10 s timeout
        assert await _notifications(listen, 0.2) == []
        # another store's live worker of another workflow type: still none
        await other.register_worker(_worker_info(uid("w-"), uid("other")))
        await store.start_workflow(new_workflow(name))
        assert await _notifications(listen, 0.2) == []
        # another store's live worker of this type: one work notification
        await other.register_worker(_worker_info(uid("w-"), name))
        await store.start_workflow(new_workflow(name))
        assert await _notifications(listen, 0.3) == [store.work_channel]
    finally:
        await listen.close()
        await store.close()
        await other.close()


async def test_listener_stops_listening_while_nobody_waits(pg_dsn: str, module_schema: str) -> None:
    """A listening backend pays a transaction for every notifying commit: the store's
    listener UNLISTENs once nobody has waited for ``idle_after``; the next wait then
    returns at once (the caller looks again), and later waits are woken as before."""
    waiter = await make_pg_store(pg_dsn, module_schema)
    writer = await make_pg_store(pg_dsn, module_schema)
    name = uid("n")
    await waiter.register_worker(_worker_info(uid("w-"), name))
    waiter._listener.idle_after = 0.1
    try:
        await waiter.wait_for_work(0.01)  # starts the listener
        for _ in range(200):
            if waiter._listener.pauses:
                break
            await asyncio.sleep(0.01)
        assert waiter._listener.pauses == 1
        assert not waiter._listener.listening
        # a start meanwhile is not received; the next wait returns at once instead
        await writer.start_workflow(new_workflow(name))
        await asyncio.wait_for(waiter.wait_for_work(30), 5)
        assert waiter._listener.listening

        async def later() -> None:
            await asyncio.sleep(0.05)
            await writer.start_workflow(new_workflow(name))

        await asyncio.wait_for(asyncio.gather(waiter.wait_for_work(30), later()), 5)
    finally:
        await waiter.close()
        await writer.close()


async def test_start_in_a_callers_transaction_notifies_at_its_commit(
    pg_dsn: str, module_schema: str
) -> None:
    """With tx=, the store's own workers cannot be woken before the caller commits:
    the NOTIFY (sent at commit) is kept for them too."""
    store = await make_pg_store(pg_dsn, module_schema)
    name = uid("n")
    listen = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        await listen.execute(f'LISTEN "{store.work_channel}"')
        await store.register_worker(_worker_info(uid("w-"), name))
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await store.start_workflow(new_workflow(name), tx=conn)
            assert await _notifications(listen, 0.1) == []
            await conn.commit()
        assert await _notifications(listen, 0.3) == [store.work_channel]
    finally:
        await listen.close()
        await store.close()


async def test_notify_wakes_wait_for_workflow(pg_dsn: str, module_schema: str) -> None:
    waiter = await make_pg_store(pg_dsn, module_schema)
    writer = await make_pg_store(pg_dsn, module_schema)
    try:
        new = new_workflow(uid("n"))
        await writer.start_workflow(new)
        await waiter.wait_for_workflow("default", new.workflow_id, 0.01)
        at = writer.clock.now()

        async def later() -> None:
            await asyncio.sleep(0.2)
            # another workflow's change must not wake us; ours must
            await writer.start_workflow(new_workflow(uid("n")))
            await asyncio.sleep(0.2)
            await writer.signal_workflow(
                "default",
                new.workflow_id,
                SignalReceived(at=at, name="s", payload=Raw(b"1"), signal_id="1"),
            )

        t0 = time.monotonic()
        # woken by our workflow's signal (long before 60 s), not by the other one's start
        await asyncio.wait_for(
            asyncio.gather(waiter.wait_for_workflow("default", new.workflow_id, 60), later()), 20
        )
        assert time.monotonic() - t0 >= 0.35
    finally:
        await waiter.close()
        await writer.close()


async def test_store_with_a_callers_pool(pg_dsn: str, module_schema: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(pg_dsn, min_size=1, max_size=2, open=False) as pool:
        store = PostgresStore(pool, schema=module_schema)
        await store.migrate()
        new = new_workflow(uid("n"))
        await store.start_workflow(new)
        assert (await store.get_workflow("default", new.workflow_id)).history_length == 1
        await store.wait_for_work(0.05)
        await store.close()
        assert not pool.closed  # the caller's pool stays open


def test_constructor_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="int"):
        PostgresStore(5)  # type: ignore[arg-type]


async def test_events_that_arrive_during_a_task_wait_for_the_next_claim(
    store: PostgresStore,
) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    assert isinstance(wt, WorkflowTaskClaim)
    at = wt.workflow.created_at
    for i in range(2):
        await store.signal_workflow(
            "default",
            new.workflow_id,
            SignalReceived(at=at, name="s", payload=Raw(str(i).encode()), signal_id=str(i)),
        )
    assert await store.claim(request(name)) == []  # one workflow task, leased
    done = await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=3,
            events=[
                ActivityScheduled(at=at, seq=1, name="a", input=Raw(b"1")),
                ActivityCompleted(at=at, seq=1, output=Raw(b"2")),
                TimerStarted(at=at, seq=2, fire_at=at),
            ],
        )
    )
    assert done == []
    kinds = [type(e).__name__ for e in await store.get_history("default", new.workflow_id)]
    assert kinds == ["WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "TimerStarted"]
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length) == (4, 2)
    assert rec.workflow_task_pending  # the signals still have to be seen
    [again] = await store.claim(request(name))
    assert isinstance(again, WorkflowTaskClaim)
    assert again.lease.task_id == wt.lease.task_id  # the same task, released and re-claimed
    assert [type(e).__name__ for e in again.history] == [*kinds, *["SignalReceived"] * 2]
    assert [bytes(e.payload) for e in again.history if isinstance(e, SignalReceived)] == [
        b"0",
        b"1",
    ]
    assert (again.workflow.history_length, again.workflow.inbox_length) == (6, 0)
    assert again.workflow.next_seq == 3
    assert await history_positions(store, new.workflow_id) == list(range(1, 7))
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=again.lease,
            claimed_history_length=6,
            expected_next_seq=3,
            next_seq=3,
            events=[],
        )
    )
    rec = await store.get_workflow("default", new.workflow_id)
    assert not rec.workflow_task_pending
    assert await store.claim(request(name)) == []  # nothing new: the task is gone


async def test_commit_with_a_stale_history_length_is_fenced(store: PostgresStore) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    assert isinstance(wt, WorkflowTaskClaim)
    bad = WorkflowTaskCommit(
        lease=wt.lease, claimed_history_length=2, expected_next_seq=1, next_seq=1, events=[]
    )
    with pytest.raises(LeaseLost, match="history has 1 events"):
        await store.commit_workflow_task(bad)
    assert await history_positions(store, new.workflow_id) == [1]


async def test_keep_lease_commit_moves_the_inbox_in_and_keeps_the_task(
    store: PostgresStore,
) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name, lease=0.5))
    assert isinstance(wt, WorkflowTaskClaim)
    at = wt.workflow.created_at
    sigs = [
        SignalReceived(at=at, name="s", payload=Raw(str(i).encode()), signal_id=str(i))
        for i in range(2)
    ]
    for sig in sigs:
        await store.signal_workflow("default", new.workflow_id, sig)
    scheduled = ActivityScheduled(at=at, seq=1, name="a", input=Raw(b"1"))
    moved = await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=2,
            events=[scheduled],
            keep_lease=timedelta(seconds=30),
        )
    )
    assert msgspec.json.encode(moved) == msgspec.json.encode(sigs)
    history = await store.get_history("default", new.workflow_id)
    assert msgspec.json.encode(history[1:]) == msgspec.json.encode([scheduled, *sigs])
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length, rec.next_seq) == (4, 0, 2)
    assert not rec.workflow_task_pending
    await asyncio.sleep(0.6)  # past the claim's lease: keep_lease extended it
    assert await store.claim(request(name)) == []
    # The same lease goes on: another keep commit with nothing new, then a final one.
    assert (
        await store.commit_workflow_task(
            WorkflowTaskCommit(
                lease=wt.lease,
                claimed_history_length=4,
                expected_next_seq=2,
                next_seq=2,
                events=[],
                keep_lease=timedelta(seconds=30),
            )
        )
        == []
    )
    late = SignalReceived(at=at, name="s", payload=Raw(b"9"), signal_id="9")
    await store.signal_workflow("default", new.workflow_id, late)
    assert (
        await store.commit_workflow_task(
            WorkflowTaskCommit(
                lease=wt.lease,
                claimed_history_length=4,
                expected_next_seq=2,
                next_seq=2,
                events=[],
            )
        )
        == []
    )
    rec = await store.get_workflow("default", new.workflow_id)
    assert (rec.history_length, rec.inbox_length) == (4, 1)
    assert rec.workflow_task_pending  # released for the late signal
    [again] = await store.claim(request(name))
    assert isinstance(again, WorkflowTaskClaim)
    assert msgspec.json.encode(again.history[-1]) == msgspec.json.encode(late)
    with pytest.raises(ValueError, match="keep_lease"):
        await store.commit_workflow_task(
            WorkflowTaskCommit(
                lease=again.lease,
                claimed_history_length=5,
                expected_next_seq=2,
                next_seq=2,
                events=[],
                status=WorkflowStatus.COMPLETED,
                keep_lease=timedelta(seconds=30),
            )
        )


async def test_terminal_commit_leaves_late_inbox_events_in_the_inbox(
    store: PostgresStore,
) -> None:
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    [wt] = await store.claim(request(name))
    assert isinstance(wt, WorkflowTaskClaim)
    at = wt.workflow.created_at
    await store.signal_workflow(
        "default",
        new.workflow_id,
        SignalReceived(at=at, name="s", payload=Raw(b"1"), signal_id="1"),
    )
    from flows_core.events import WorkflowCompleted

    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=wt.lease,
            claimed_history_length=1,
            expected_next_seq=1,
            next_seq=1,
            events=[WorkflowCompleted(at=at, output=Raw(b"1"))],
            status=WorkflowStatus.COMPLETED,
            output=Raw(b"1"),
        )
    )
    rec = await store.get_workflow("default", new.workflow_id)
    assert rec.status == WorkflowStatus.COMPLETED
    assert (rec.history_length, rec.inbox_length) == (2, 1)
    assert not rec.workflow_task_pending
    assert await table_count_for(store, "tasks", new.workflow_id) == 0
    assert await table_count_for(store, "inbox", new.workflow_id) == 1
    assert await store.claim(request(name)) == []


async def table_count_for(store: PostgresStore, table: str, workflow_id: str) -> int:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{} WHERE workflow_id = %s").format(
                sql.Identifier(store.schema), sql.Identifier(table)
            ),
            (workflow_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_claim_skips_a_workflow_whose_row_is_being_written(
    store: PostgresStore, pg_dsn: str
) -> None:
    """A claim never waits for a workflow row lock: the workflow is claimed later, with
    whatever the lock holder put in its inbox."""
    name = uid("n")
    new = new_workflow(name)
    await store.start_workflow(new)
    sig = SignalReceived(at=store.clock.now(), name="s", payload=Raw(b"7"), signal_id="7")
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        async with conn.transaction():
            await store.signal_workflow("default", new.workflow_id, sig, tx=conn)
            # (a claim that waited for the lock would wait for this transaction: forever)
            assert await asyncio.wait_for(store.claim(request(name)), 5) == []
        [claim] = await store.claim(request(name))
    assert isinstance(claim, WorkflowTaskClaim)
    assert msgspec.json.encode(claim.history[-1]) == msgspec.json.encode(sig)
    assert claim.workflow.history_length == 2


async def test_signals_racing_claims_and_commits_are_each_recorded_once_in_order(
    pg_dsn: str, module_schema: str
) -> None:
    """Senders signal while a worker claims and commits (with and without keep_lease):
    no deadlock, every signal enters the history exactly once, in each sender's order,
    positions stay gap-free, and the inbox ends empty."""
    name = uid("n")
    store = PostgresStore(pg_dsn, schema=module_schema, max_size=8)
    await store.open()
    try:
        new = new_workflow(name)
        await store.start_workflow(new)
        at = store.clock.now()
        senders, per_sender = 4, 15
        sending = True

        async def sender(k: int) -> None:
            for i in range(per_sender):
                await store.signal_workflow(
                    "default",
                    new.workflow_id,
                    SignalReceived(
                        at=at, name="s", payload=Raw(f"[{k},{i}]".encode()), signal_id=f"{k}-{i}"
                    ),
                )
                await asyncio.sleep(0.001 * (k + 1))

        async def worker() -> int:
            rounds = 0
            while True:
                claims = await store.claim(request(name, lease=30))
                if not claims:
                    if not sending:
                        rec = await store.get_workflow("default", new.workflow_id)
                        if rec.inbox_length == 0 and not rec.workflow_task_pending:
                            return rounds
                    await asyncio.sleep(0.002)
                    continue
                [claim] = claims
                assert isinstance(claim, WorkflowTaskClaim)
                assert claim.workflow.history_length == len(claim.history)
                length = len(claim.history)
                rounds += 1
                if rounds % 2:
                    moved = await store.commit_workflow_task(
                        WorkflowTaskCommit(
                            lease=claim.lease,
                            claimed_history_length=length,
                            expected_next_seq=1,
                            next_seq=1,
                            events=[],
                            keep_lease=timedelta(seconds=30),
                        )
                    )
                    length += len(moved)
                await store.commit_workflow_task(
                    WorkflowTaskCommit(
                        lease=claim.lease,
                        claimed_history_length=length,
                        expected_next_seq=1,
                        next_seq=1,
                        events=[],
                    )
                )

        work = asyncio.create_task(worker())
        await asyncio.gather(*(sender(k) for k in range(senders)))
        sending = False
        rounds = await asyncio.wait_for(work, 30)
        assert rounds >= 2
        history = await store.get_history("default", new.workflow_id)
        got = [msgspec.json.decode(e.payload) for e in history if isinstance(e, SignalReceived)]
        assert len(got) == senders * per_sender
        for k in range(senders):
            assert [i for s, i in got if s == k] == list(range(per_sender))
        assert await history_positions(store, new.workflow_id) == list(
            range(1, senders * per_sender + 2)
        )
        assert await table_count_for(store, "inbox", new.workflow_id) == 0
        rec = await store.get_workflow("default", new.workflow_id)
        assert (rec.history_length, rec.inbox_length) == (len(history), 0)
    finally:
        await store.close()
