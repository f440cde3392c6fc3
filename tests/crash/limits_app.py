"""A worker process for the flow-control crash tests (tests/crash/test_limits_crash.py).

Run as::

    python limits_app.py DSN SCHEMA MODE LEASE_SECONDS

Serves ``limits-wf``, whose one step ``limited-probe`` may run at most ``MAX_CONCURRENT``
at once across every process. Each run of the step records its interval in
``<schema>.limit_runs`` (its own autocommit connection, the database's clock): started
when it begins, ended when it returns. MODE ``slow``: the step blocks for a minute, heartbeating
(the process is killed while it holds its slots); ``normal``: it takes 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import psycopg
from psycopg import sql

import flows_core as flows

MAX_CONCURRENT = 2
MODE = os.environ.get("LIMITS_MODE", "normal")
_local = threading.local()


def runs_table(schema: str) -> sql.Composed:
    return sql.SQL("{}.limit_runs").format(sql.Identifier(schema))


def _conn() -> psycopg.Connection[tuple[object, ...]]:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ["LIMITS_DSN"], autocommit=True)
    return conn  # type: ignore[no-any-return]


@flows.activity(
    "limited-probe",
    max_concurrent=MAX_CONCURRENT,
    retry=flows.RetryPolicy(initial_interval=timedelta(seconds=0.1)),
)
def probe(n: int) -> int:
    table = runs_table(os.environ["LIMITS_SCHEMA"])
    row = (
        _conn()
        .execute(
            sql.SQL(
                "INSERT INTO {} (n, pid, started) VALUES (%s, %s, clock_timestamp()) RETURNING id"
            ).format(table),
            (n, os.getpid()),
        )
        .fetchone()
    )
    assert row is not None
    if MODE == "slow":
        for _ in range(600):  # holds its slot: the lease is kept by heartbeats
            time.sleep(0.1)
            flows.heartbeat()
    time.sleep(0.05)
    _conn().execute(
        sql.SQL("UPDATE {} SET ended = clock_timestamp() WHERE id = %s").format(table), (row[0],)
    )
    return n


@flows.workflow("limits-wf")
async def limits_wf(ctx: flows.WorkflowContext, n: int) -> int:
    return await ctx.execute(probe, n)


async def run_worker(dsn: str, schema: str, lease: float) -> None:
    from flows_pg import PostgresStore

    store_class = PostgresStore
    if os.environ.get("LIMITS_STORE") == "citus":
        from flows_citus import CitusStore

        store_class = CitusStore
    async with store_class(dsn, schema=schema) as store:
        worker = flows.Worker(
            store,
            workflows=[limits_wf],
            activities=[probe],
            lease=timedelta(seconds=lease),
            poll_interval=0.1,
            concurrency=10,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop()))
        print("ready", flush=True)
        await worker.run()


if __name__ == "__main__":
    dsn, schema, mode, lease = sys.argv[1:5]
    os.environ.update(LIMITS_DSN=dsn, LIMITS_SCHEMA=schema, LIMITS_MODE=mode)
    MODE = mode
    asyncio.run(run_worker(dsn, schema, float(lease)))
