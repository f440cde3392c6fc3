"""Worker process of the transactional-activity crash test (tests/crash/test_txact_crash.py).

Its workflow runs transactional activities, async and sync, one after another (inline)
and two in a ``gather`` (through the queue); each inserts one effect row in the SAME
transaction as the recording of its result. The process marks in a shared integer where
it is (``Phase``), so the test knows at which point its SIGKILL landed.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from enum import IntEnum
from typing import Any

import msgspec
import psycopg
from psycopg import sql

import flows_core as flows

STEPS = 4
GATHERED = (100, 101)


class Phase(IntEnum):
    OTHER = 0
    BEFORE_SQL = 1
    DURING_SQL = 2
    AFTER_SQL = 3
    COMMIT = 4
    """The function returned: the result's write and the commit are under way."""


_phase: Any = None


def mark(phase: Phase) -> None:
    if _phase is not None:
        _phase.value = int(phase)


class EffectIn(msgspec.Struct):
    table: str
    workflow_id: str
    step: int


def _insert(inp: EffectIn) -> sql.Composed:
    schema, name = inp.table.split(".")
    return sql.SQL("INSERT INTO {} (workflow_id, step) VALUES ({}, {})").format(
        sql.Identifier(schema, name), sql.Literal(inp.workflow_id), sql.Literal(inp.step)
    )


FAST = flows.RetryPolicy(initial_interval=timedelta(milliseconds=50), max_attempts=1000)
"""Every kill inside a step is a counted attempt: far more than the test's kills."""


@flows.activity("txcrash-async", transactional=True, retry=FAST)
async def effect_async(conn: psycopg.AsyncConnection, inp: EffectIn) -> int:
    mark(Phase.BEFORE_SQL)
    await asyncio.sleep(random.uniform(0, 0.02))
    mark(Phase.DURING_SQL)
    await conn.execute(_insert(inp))
    await conn.execute("SELECT pg_sleep(0.01)")
    mark(Phase.AFTER_SQL)
    await asyncio.sleep(random.uniform(0, 0.01))
    mark(Phase.COMMIT)
    return inp.step


@flows.activity("txcrash-sync", transactional=True, retry=FAST)
def effect_sync(conn: psycopg.Connection, inp: EffectIn) -> int:
    mark(Phase.BEFORE_SQL)
    time.sleep(random.uniform(0, 0.02))
    mark(Phase.DURING_SQL)
    conn.execute(_insert(inp))
    conn.execute("SELECT pg_sleep(0.01)")
    mark(Phase.AFTER_SQL)
    time.sleep(random.uniform(0, 0.01))
    mark(Phase.COMMIT)
    return inp.step


@flows.workflow("txcrash-wf")
async def txcrash_wf(ctx: flows.WorkflowContext, table: str) -> int:
    total = 0
    for step in range(STEPS):
        act = effect_async if step % 2 == 0 else effect_sync
        total += await ctx.execute(act, EffectIn(table, ctx.workflow_id, step))
    a, b = await flows.gather(
        ctx.execute(effect_async, EffectIn(table, ctx.workflow_id, GATHERED[0])),
        ctx.execute(effect_sync, EffectIn(table, ctx.workflow_id, GATHERED[1])),
    )
    return total + a + b


EXPECTED = sum(range(STEPS)) + sum(GATHERED)


def run_worker(dsn: str, schema: str, lease: float, phase: Any, citus: bool) -> None:
    """The child process: a worker until it is killed (or stopped by SIGTERM)."""
    global _phase
    _phase = phase
    asyncio.run(_serve(dsn, schema, lease, citus))


async def _serve(dsn: str, schema: str, lease: float, citus: bool) -> None:
    from flows_pg import PostgresStore

    store_class: Any = PostgresStore
    if citus:
        from flows_citus import CitusStore

        store_class = CitusStore
    async with store_class(dsn, schema=schema) as store:
        run_transaction = store.run_transaction

        async def marked(*args: Any, **kwargs: Any) -> Any:
            try:
                return await run_transaction(*args, **kwargs)
            finally:
                mark(Phase.OTHER)

        store.run_transaction = marked
        worker = flows.Worker(
            store,
            workflows=[txcrash_wf],
            activities=[effect_async, effect_sync],
            lease=timedelta(seconds=lease),
            poll_interval=0.05,
            concurrency=8,
            max_workflow_task_attempts=1000,
        )
        await worker.run()
