"""Idempotent start and signal with ``tx=`` (the caller's transaction) and in the sync
client, on PostgreSQL: a retried request inside a rolled-back transaction leaves nothing,
a committed one is not repeated."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

import flows_core as flows
from flows_core.events import SignalReceived
from flows_pg import PostgresStore, SyncClient

pytestmark = pytest.mark.pg


@flows.workflow("idem-wait")
async def wait(ctx: flows.WorkflowContext, _: None) -> str:
    return await ctx.wait_for_signal("go", str)


@flows.workflow("idem-other")
async def other(ctx: flows.WorkflowContext, _: None) -> str:
    return "other"


async def signals(store: PostgresStore, tenant: str, workflow_id: str) -> int:
    record = await store.get_workflow(tenant, workflow_id)
    history = await store.get_history(tenant, workflow_id)
    return record.inbox_length + sum(isinstance(e, SignalReceived) for e in history)


async def test_engine_tx_start_if_exists_and_signal_key(pg_dsn: str, store: PostgresStore) -> None:
    engine = flows.Engine(store, workflows=[wait, other])
    tenant = "idem-tx"
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        async with conn.transaction():
            run = await engine.start(wait, None, tenant_id=tenant, workflow_id="a", tx=conn)
            again = await engine.start(
                wait, None, tenant_id=tenant, workflow_id="a", tx=conn, if_exists="return"
            )
            assert again.workflow_id == run.workflow_id
            assert await engine.signal(
                "a", "go", "1", tenant_id=tenant, tx=conn, idempotency_key="k"
            )
            assert not await engine.signal(
                "a", "go", "2", tenant_id=tenant, tx=conn, idempotency_key="k"
            )
        # rolled back: the key is not kept either

        async def rolled_back() -> None:
            async with conn.transaction():
                assert await engine.signal(
                    "a", "go", "3", tenant_id=tenant, tx=conn, idempotency_key="k2"
                )
                raise RuntimeError("the application's write failed")

        with pytest.raises(RuntimeError):
            await rolled_back()
        async with conn.transaction():
            with pytest.raises(flows.WorkflowAlreadyExists, match="idem-wait"):
                await engine.start(
                    other, None, tenant_id=tenant, workflow_id="a", tx=conn, if_exists="return"
                )
    assert await signals(store, tenant, "a") == 1
    assert await engine.signal("a", "go", "3", tenant_id=tenant, idempotency_key="k2")
    assert await signals(store, tenant, "a") == 2


async def test_sync_client_if_exists_and_signal_key(pg_dsn: str, store: PostgresStore) -> None:
    client = SyncClient(pg_dsn, schema=store.schema, workflows=[wait, other])
    tenant = "idem-sync"

    def app() -> list[Any]:
        out: list[Any] = []
        with psycopg.connect(pg_dsn) as conn, conn.transaction():
            out.append(client.start(wait, None, tenant_id=tenant, workflow_id="s", tx=conn))
            out.append(
                client.start(
                    wait, None, tenant_id=tenant, workflow_id="s", tx=conn, if_exists="return"
                )
            )
            out.append(
                client.signal("s", "go", "x", tenant_id=tenant, tx=conn, idempotency_key="k")
            )
            out.append(
                client.signal("s", "go", "y", tenant_id=tenant, tx=conn, idempotency_key="k")
            )
        out.append(client.signal("s", "go", "z", tenant_id=tenant, idempotency_key="k"))
        with pytest.raises(flows.WorkflowAlreadyExists):
            client.start(wait, None, tenant_id=tenant, workflow_id="s")
        with pytest.raises(flows.WorkflowAlreadyExists):
            client.start(other, None, tenant_id=tenant, workflow_id="s", if_exists="return")
        return out

    assert await asyncio.to_thread(app) == ["s", "s", True, False, False]
    assert await signals(store, tenant, "s") == 1
