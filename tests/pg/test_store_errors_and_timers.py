"""PostgreSQL and Citus: due timers fire without a poll interval's wait; database
failures reach callers as Flows errors with the driver's exception as their cause;
terminate inside the caller's transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, fresh_schema, make_pg_store

import flows_core as flows
import flows_pg
from tests.contract.test_contract_engine import running

AUTOCOMMIT = {"autocommit": True}  # as the stores' pools
BOTH = pytest.mark.parametrize(
    "kind",
    [pytest.param("pg", marks=pytest.mark.pg), pytest.param("citus", marks=pytest.mark.citus)],
)


@flows.workflow("due-timers")
async def due_timers(ctx: flows.WorkflowContext, _: None) -> str:
    await ctx.sleep(0)
    await ctx.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))
    await ctx.sleep(0.001)
    return "woke"


@BOTH
async def test_zero_and_past_timers_do_not_wait_for_the_poll_interval(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A hang check, not a speed test: with a 30 s poll interval, three due timers in a
    row must not cost three poll intervals (they did: next_due saw future timers only)."""
    dsn = request.getfixturevalue("pg_dsn" if kind == "pg" else "citus_dsn")
    store = await (make_pg_store(dsn) if kind == "pg" else make_citus_store(dsn))
    try:
        engine = flows.Engine(store, workflows=[due_timers])
        worker = flows.Worker(store, workflows=[due_timers], poll_interval=30)
        async with running(worker):
            run = await engine.start(due_timers, None)
            assert await asyncio.wait_for(run.result(), 10) == "woke"
    finally:
        await (drop_pg_store(store) if kind == "pg" else drop_citus_store(store))


@pytest.mark.pg
async def test_unreachable_server_is_store_unavailable() -> None:
    store = flows_pg.PostgresStore("postgresql://flows@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(flows.StoreUnavailable) as caught:
        await store.open()
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    client = flows_pg.SyncClient("postgresql://flows@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(flows.StoreUnavailable):
        client.query("x")


@pytest.mark.pg
async def test_a_refused_statement_is_store_error(pg_dsn: str) -> None:
    """An unmigrated schema: the statement fails (undefined table), the server is up."""
    store = flows_pg.PostgresStore(pg_dsn, schema=fresh_schema("nomig"))
    try:
        with pytest.raises(flows.StoreError) as caught:
            await store.get_workflow("default", "x")
        assert not isinstance(caught.value, flows.StoreUnavailable)
        assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
    finally:
        await store.close()


@pytest.mark.pg
async def test_terminate_in_the_callers_transaction(pg_dsn: str) -> None:
    """tx=: the termination is the caller's to commit or roll back."""
    store = await make_pg_store(pg_dsn)
    try:
        engine = flows.Engine(store, workflows=[due_timers])
        run = await engine.start(due_timers, None)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            outcome = await engine.terminate(run.workflow_id, reason="ops", tx=conn)
            assert outcome == flows.TerminateOutcome.TERMINATED
            await conn.rollback()
            assert (await engine.query(run.workflow_id)).status == flows.WorkflowStatus.RUNNING
            await engine.terminate(run.workflow_id, reason="ops", tx=conn)
            await conn.commit()
        info = await engine.query(run.workflow_id)
        assert info.status == flows.WorkflowStatus.TERMINATED
        assert (await engine.terminate(run.workflow_id)) == flows.TerminateOutcome.ALREADY_FINISHED
    finally:
        await drop_pg_store(store)


@pytest.mark.pg
async def test_a_failed_pipeline_does_not_poison_its_pooled_connection(pg_dsn: str) -> None:
    """Found by the Citus chaos run: when a statement of a pipeline fails, psycopg may
    count a later execution of the same statement as prepared although the server never
    parsed it, and every later use on that connection failed ("prepared statement
    _pg3_0 does not exist"). The store closes such a connection; the pool replaces it."""
    from psycopg_pool import AsyncConnectionPool

    from flows_pg._base import Step, execute_on

    query = "SELECT 1 / %(d)s::int AS q"
    pool = AsyncConnectionPool(pg_dsn, min_size=1, max_size=1, open=False, kwargs=AUTOCOMMIT)
    async with pool:
        for transaction in (False, True) * 5:  # it depends on when psycopg flushes
            async with pool.connection() as conn:
                batch = [Step(query, {"d": d}) for d in (1, 0, 1, 1, 1, 1, 1, 1)]
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await execute_on(conn, batch, transaction=transaction, pipeline=True)
            async with pool.connection() as conn:
                for _ in range(8):
                    rows = await execute_on(conn, [Step(query, {"d": 1})] * 2, pipeline=True)
                    assert rows == [[{"q": 1}], [{"q": 1}]]
