"""SyncClient: workflows started, signalled and cancelled inside a sync app's transaction."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import psycopg
import pytest

import flows_core as flows
from flows_pg import PostgresStore, SyncClient

pytestmark = pytest.mark.pg


class Greet(msgspec.Struct):
    name: str


@flows.workflow("sync-greet")
async def greet(ctx: flows.WorkflowContext, inp: Greet) -> str:
    word = await ctx.wait_for_signal("word", str, timeout=timedelta(seconds=30))
    return f"{word} {inp.name}"


async def _run_worker_briefly(store: PostgresStore, seconds: float) -> flows.Worker:
    worker = flows.Worker(store, workflows=[greet], poll_interval=0.05)
    task = asyncio.ensure_future(worker.run())
    await asyncio.sleep(seconds)
    await worker.stop()
    await task
    return worker


async def test_commit_runs_and_rollback_leaves_no_trace(pg_dsn: str, store: PostgresStore) -> None:
    client = SyncClient(pg_dsn, schema=store.schema, workflows=[greet])

    def app_code() -> tuple[str, str]:
        with psycopg.connect(pg_dsn) as conn:
            with conn.transaction():
                kept = client.start(greet, Greet("ada"), tx=conn)
                client.signal(kept, "word", "hello", tx=conn)
            try:
                with conn.transaction():
                    dropped = client.start(greet, Greet("bob"), workflow_id="dropped-1", tx=conn)
                    client.signal(dropped, "word", "hi", tx=conn)
                    raise RuntimeError("the application's own write failed")
            except RuntimeError:
                pass
        return kept, "dropped-1"

    kept, dropped = await asyncio.to_thread(app_code)
    worker = await _run_worker_briefly(store, 0.5)
    engine = flows.Engine(store)
    assert await engine.wait_for_result(kept, timeout=10) == "hello ada"
    with pytest.raises(flows.WorkflowNotFound):
        await engine.query(dropped)
    assert client.query(kept).status == flows.WorkflowStatus.COMPLETED
    assert worker.counters["workflow_tasks"] >= 1
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}.history WHERE workflow_id = %s").format(
                psycopg.sql.Identifier(store.schema)
            ),
            (dropped,),
        )
        assert (await cur.fetchone()) == (0,)


def test_sync_client_validates_like_the_engine(pg_dsn: str, store: PostgresStore) -> None:
    client = SyncClient(pg_dsn, schema=store.schema, workflows=[greet])
    with pytest.raises(flows.PayloadError):
        client.start(greet, {"nom": 1})
    with pytest.raises(flows.WorkflowNotRegistered):
        client.start("unknown-workflow", None)
    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        client.start(greet, Greet("x"), tx=object())
    with pytest.raises(flows.WorkflowNotFound):
        client.signal("nope", "word", "x")
    wf_id = client.start(greet, Greet("x"), workflow_id="sync-dup", tenant_id="t1")
    with pytest.raises(flows.WorkflowAlreadyExists):
        client.start(greet, Greet("y"), workflow_id="sync-dup", tenant_id="t1")
    with pytest.raises(flows.WorkflowNotFound):
        client.query(wf_id, tenant_id="t2")
    assert client.cancel(wf_id, tenant_id="t1") == flows.CancelOutcome.REQUESTED
    assert client.cancel(wf_id, tenant_id="t1") == flows.CancelOutcome.ALREADY_REQUESTED


async def test_async_tx_rejects_sync_connection(pg_dsn: str, store: PostgresStore) -> None:
    engine = flows.Engine(store)
    with psycopg.connect(pg_dsn) as conn, pytest.raises(TypeError, match="AsyncConnection"):
        await engine.start(greet, Greet("x"), tx=conn)
