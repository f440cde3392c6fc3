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
