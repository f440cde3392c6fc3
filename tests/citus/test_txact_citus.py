"""Transactional activities on Citus: the application's rows and the workflow's rows in
one transaction. Colocated with the Flows tables (distributed by the workflow's shard
key) it is a one-node transaction: no two-phase commit. Not colocated (here a reference
table, on every node), Citus commits it with two-phase commit across the nodes: still
one transaction, all or nothing. Which one ran is read from Citus' own log of the
commands it sends (``citus.log_remote_commands``, as notices on the connection)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import flows_core as flows
from flows_core.events import ActivityCompleted
from tests.contract.test_contract_engine import result, running, worker

pytestmark = pytest.mark.citus


async def execute(dsn: str, statement: Any, params: Any = None) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(statement, params)
        return await cur.fetchall() if cur.description is not None else []


async def colocation(dsn: str, table: str) -> int:
    statement = "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = %s::regclass"
    rows = await execute(dsn, statement, (table,))
    return int(rows[0][0])


@pytest.mark.parametrize("layout", ["colocated", "not-colocated"])
async def test_application_rows_commit_with_the_result(
    store: Any, citus_dsn: str, layout: str
) -> None:
    table = sql.Identifier(store.schema, "orders")
    name = f"{store.schema}.orders"
    await execute(
        citus_dsn,
        sql.SQL("CREATE TABLE {} (shard_key text NOT NULL, key text NOT NULL)").format(table),
    )
    if layout == "colocated":
        await store.distribute_colocated(name)
        assert await colocation(citus_dsn, name) == await colocation(
            citus_dsn, f"{store.schema}.workflows"
        )
    else:
        await execute(citus_dsn, "SELECT create_reference_table(%s)", (name,))
    calls = 0
    remote_commands: list[str] = []

    @flows.activity(
        "place-order",
        transactional=True,
        retry=flows.RetryPolicy(initial_interval=timedelta(milliseconds=10)),
    )
    async def place(conn: psycopg.AsyncConnection[Any], key: str) -> str:
        nonlocal calls
        calls += 1
        shard_key = flows.activity_info().shard_key
        await conn.execute(
            sql.SQL("INSERT INTO {} (shard_key, key) VALUES (%s, %s)").format(table),
            (shard_key, key),
        )
        if calls == 1:
            raise RuntimeError("the first attempt fails after its insert")
        await conn.execute("SET LOCAL citus.log_remote_commands TO on")

        def seen(notice: psycopg.errors.Diagnostic) -> None:
            remote_commands.append(notice.message_primary or "")

        conn.add_notice_handler(seen)
        handlers.append((conn, seen))
        return shard_key

    handlers: list[tuple[Any, Any]] = []

    @flows.workflow("orders")
    async def orders(ctx: flows.WorkflowContext, key: str) -> str:
        return await ctx.execute(place, key)

    engine = flows.Engine(store, workflows=[orders])
    async with running(worker(store, workflows=[orders], activities=[place])):
        run = await engine.start(orders, "o-1", tenant_id="t1")
        shard_key = await result(run)
    record = await store.get_workflow("t1", run.workflow_id)
    assert shard_key == record.shard_key
    rows = await execute(citus_dsn, sql.SQL("SELECT shard_key, key FROM {}").format(table))
    assert rows == [(record.shard_key, "o-1")], "the failed attempt's row was rolled back"
    history = await store.get_history("t1", run.workflow_id)
    assert [e.attempt for e in history if isinstance(e, ActivityCompleted)] == [2]
    for conn, handler in handlers:
        conn.remove_notice_handler(handler)
    assert any("issuing" in c for c in remote_commands), remote_commands
    prepared = [c for c in remote_commands if "PREPARE TRANSACTION" in c]
    if layout == "colocated":
        assert not prepared, f"a colocated transactional step used two-phase commit: {prepared}"
    else:
        assert prepared, "a multi-node transaction commits with two-phase commit"
