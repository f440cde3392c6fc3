"""Debounced starts through the sync client, in the caller's transaction: the starts of
one window committed by the application share one workflow (the last input wins, the
async Engine's starts included); a rolled-back start leaves nothing pending."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

import flows_core as flows
from flows_core._sharding import HashSharder, key_for
from flows_pg import PostgresStore, SyncClient

pytestmark = pytest.mark.pg

WINDOW = timedelta(seconds=2)


@flows.workflow("deb-echo")
async def echo(ctx: flows.WorkflowContext, n: int) -> int:
    return n


async def test_sync_debounced_starts_in_the_callers_transaction(
    pg_dsn: str, store: PostgresStore
) -> None:
    client = SyncClient(pg_dsn, schema=store.schema, workflows=[echo])

    def app_code() -> list[str]:
        ids = []
        with psycopg.connect(pg_dsn) as conn:
            with conn.transaction():
                for n in (1, 2):
                    ids.append(client.start(echo, n, debounce=WINDOW, debounce_key="k", tx=conn))
            try:
                with conn.transaction():
                    client.start(echo, 9, debounce=WINDOW, debounce_key="gone", tx=conn)
                    raise RuntimeError("the application's own write failed")
            except RuntimeError:
                pass
        ids.append(client.start(echo, 3, debounce=WINDOW, debounce_key="k"))  # autocommit
        return ids

    ids = await asyncio.to_thread(app_code)
    assert len(set(ids)) == 1
    assert ids[0].startswith("k@")
    engine = flows.Engine(store, workflows=[echo])
    last = await engine.start(echo, 4, debounce=WINDOW, debounce_key="k")
    assert last.workflow_id == ids[0]
    assert last.starts == 4
    gone_key = key_for(HashSharder(), "deb-echo", "gone", "default")
    assert await store.get_pending_start("default", "deb-echo", "gone", gone_key) is None
    with pytest.raises(flows.InvalidArgument):
        client.start(echo, 1, debounce=WINDOW)
    worker = flows.Worker(store, workflows=[echo], poll_interval=0.05)
    task = asyncio.ensure_future(worker.run())
    try:
        assert await last.result(timeout=30) == 4
    finally:
        await worker.stop()
        await task
    listed = await engine.list(limit=10)
    assert [w.workflow_id for w in listed] == [ids[0]]


async def test_the_worker_statements_read_indexes_not_every_window(
    pg_dsn: str, store: PostgresStore
) -> None:
    """With 20,000 open windows, a worker's wake-up time, probe and claim are index
    scans (they run on every idle wait and poll)."""
    schema = psycopg.sql.Identifier(store.schema)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {}.pending_starts (shard_key, tenant_id, workflow_name,"
                " debounce_key, workflow_id, workflow_version, input, fires_at)"
                " SELECT 'deb-echo-shard-' || (g % 9), 't', 'deb-echo', 'k' || g,"
                " 'k' || g || '@x', 1, '1', now() + make_interval(secs => g)"
                " FROM generate_series(1, 20000) g"
            ).format(schema)
        )
        await conn.execute(psycopg.sql.SQL("ANALYZE {}.pending_starts").format(schema))
        plans = {}
        for name, shards in (
            ("DEBOUNCE_NEXT_DUE", None),
            ("DEBOUNCE_NEXT_DUE", ["deb-echo-shard-1"]),
            ("DEBOUNCE_PROBE", None),
            ("DEBOUNCE_CLAIM", ["deb-echo-shard-1"]),
        ):
            statement = store._debounce_sql(name, shards)
            params = {"shards": shards, "limit": 10, "token": None, "lease": timedelta(1)}
            cur = await conn.execute("EXPLAIN (COSTS OFF) " + statement, params)
            plans[f"{name} {shards}"] = "\n".join(row[0] for row in await cur.fetchall())
    for label, plan in plans.items():
        assert "Seq Scan" not in plan, f"{label}:\n{plan}"
        assert "pending_starts_" in plan, f"{label}:\n{plan}"
    assert await store.next_pending_start_due(None) is not None
