"""flows_citus.SyncClient on a schema migrated for Citus: it finds the layout by itself
and sends the Citus (router) statements, in the caller's own transaction."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import flows_core as flows
from flows_citus import SyncClient, detect_sync

pytestmark = pytest.mark.citus


@flows.workflow("sync-citus")
async def waits_for_go(ctx: flows.WorkflowContext, base: int) -> int:
    return base + await ctx.wait_for_signal("go", int)


def start_then_roll_back(client: SyncClient, conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        client.start(waits_for_go, 1, workflow_id="s2", tenant_id="acme", tx=conn)
        raise RuntimeError("rolled back")


def client_calls(dsn: str, schema: str) -> None:
    client = SyncClient(dsn, schema=schema, workflows=[waits_for_go])
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            client.start(waits_for_go, 40, workflow_id="s1", tenant_id="acme", tx=conn)
        with pytest.raises(RuntimeError, match="rolled back"):
            start_then_roll_back(client, conn)
        with pytest.raises(flows.WorkflowNotFound):
            client.query("s2", tenant_id="acme", tx=conn)
        assert client.query("s1", tenant_id="acme", tx=conn).status == "running"
        with pytest.raises(flows.WorkflowAlreadyExists):
            client.start(waits_for_go, 1, workflow_id="s1", tenant_id="acme")
    client.signal("s1", "go", 2, tenant_id="acme")
    client.start(waits_for_go, 0, workflow_id="s3", tenant_id="acme")
    assert client.cancel("s3", tenant_id="acme") == flows.CancelOutcome.REQUESTED
    terminated = client.terminate("s3", reason="ops", tenant_id="acme")
    assert terminated == flows.TerminateOutcome.TERMINATED
    assert client.query("s3", tenant_id="acme").status == flows.WorkflowStatus.TERMINATED
    again = client.terminate("s3", tenant_id="acme")
    assert again == flows.TerminateOutcome.ALREADY_FINISHED
    assert detect_sync(dsn, schema)
    assert detect_sync(dsn, schema, migrate=True)
    assert not detect_sync(dsn, "no_such_schema")
    wrong = SyncClient(dsn, schema=schema, sharder=flows.HashSharder(9))
    with pytest.raises(flows.InvalidArgument, match="follows from its tenant and id"):
        wrong.start(waits_for_go, 1, workflow_id="s4", tenant_id="acme")


async def test_sync_client_on_citus(store: Any, citus_dsn: str) -> None:
    await asyncio.to_thread(client_calls, citus_dsn, store.schema)
    engine = flows.Engine(store)
    worker = flows.Worker(store, workflows=[waits_for_go], poll_interval=0.1)
    task = asyncio.ensure_future(worker.run())
    try:
        assert await engine.wait_for_result("s1", tenant_id="acme", timeout=20) == 42
        record = await store.get_workflow("acme", "s1")
        assert record.shard_key == store.layout.locate("acme", "s1")
    finally:
        await worker.stop()
        await task


async def test_sync_debounced_start_on_citus(store: Any, citus_dsn: str) -> None:
    """The sync client's debounced start lands where the Engine's does (the key's shard
    key, from the layout), in the caller's transaction."""
    window = timedelta(hours=1)

    def app_code() -> str:
        client = SyncClient(citus_dsn, schema=store.schema, workflows=[waits_for_go])
        with psycopg.connect(citus_dsn) as conn, conn.transaction():
            return client.start(
                waits_for_go, 1, tenant_id="acme", debounce=window, debounce_key="k", tx=conn
            )

    first = await asyncio.to_thread(app_code)
    engine = flows.Engine(store, workflows=[waits_for_go])
    run = await engine.start(waits_for_go, 2, tenant_id="acme", debounce=window, debounce_key="k")
    assert run.workflow_id == first
    assert run.starts == 2
    shard_key = store.layout.locate("acme", "k")
    found = await store.get_pending_start("acme", "sync-citus", "k", shard_key)
    assert found is not None
    assert found.starts == 2


def idempotent_calls(dsn: str, schema: str) -> list[Any]:
    client = SyncClient(dsn, schema=schema, workflows=[waits_for_go])
    out: list[Any] = []
    with psycopg.connect(dsn) as conn, conn.transaction():
        out.append(client.start(waits_for_go, 1, workflow_id="i1", tenant_id="acme", tx=conn))
        out.append(
            client.start(
                waits_for_go, 1, workflow_id="i1", tenant_id="acme", tx=conn, if_exists="return"
            )
        )
        out.append(client.signal("i1", "go", 5, tenant_id="acme", tx=conn, idempotency_key="k"))
        out.append(client.signal("i1", "go", 6, tenant_id="acme", tx=conn, idempotency_key="k"))
    out.append(client.signal("i1", "go", 7, tenant_id="acme", idempotency_key="k"))
    return out


async def test_sync_client_idempotent_start_and_signal_on_citus(store: Any, citus_dsn: str) -> None:
    assert await asyncio.to_thread(idempotent_calls, citus_dsn, store.schema) == [
        "i1",
        "i1",
        True,
        False,
        False,
    ]
    assert (await store.get_workflow("acme", "i1")).inbox_length == 1
    engine = flows.Engine(store)
    async with await psycopg.AsyncConnection.connect(citus_dsn) as conn, conn.transaction():
        again = await engine.start(
            waits_for_go, 1, workflow_id="i1", tenant_id="acme", tx=conn, if_exists="return"
        )
        assert again.workflow_id == "i1"
        assert not await engine.signal(
            "i1", "go", 8, tenant_id="acme", tx=conn, idempotency_key="k"
        )
    assert (await store.get_workflow("acme", "i1")).inbox_length == 1
