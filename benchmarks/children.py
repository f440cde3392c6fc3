"""Fan-out benchmark: one parent workflow starts N child workflows at once (through the
per-shard outbox) and awaits them all; how long until the parent has every result.

    python -m benchmarks.children      # 10,000 children: memory, embedded PostgreSQL, Citus
    python -m benchmarks.children --n 1000 --adapters memory,postgres
    python -m benchmarks.children --dsn postgresql://user@host/db   # your server

One process runs the Engine and one Worker (concurrency 32). The parent takes N
child steps in one workflow task, so its first commit writes N history events and N
outbox messages in one transaction; the worker then delivers the starts (each one
transaction on the child's shard), runs the children, and each child's terminal commit
writes its completion notice, delivered into the parent's inbox. The parent awaits the
children one by one (``flows.gather`` over them costs about the same). Reported:
seconds to the parent's first commit and to its result, children per second, the
parent's history length and the outbox deliveries.
Citus runs on the local three-node cluster (as the tests do) when the citus extension
is installed, else it is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import flows_core as flows
from benchmarks.common import PgServer, log
from flows_memory import MemoryStore


@flows.workflow("bench-child")
async def child(ctx: flows.WorkflowContext, i: int) -> int:
    return i


@flows.workflow("bench-fanout")
async def fanout(ctx: flows.WorkflowContext, n: int) -> int:
    handles = [ctx.start_child(child, i) for i in range(n)]
    total = 0
    for handle in handles:
        total += await handle
    return total


@contextlib.asynccontextmanager
async def memory_store() -> AsyncIterator[Any]:
    yield MemoryStore()


@contextlib.asynccontextmanager
async def postgres_store(dsn: str) -> AsyncIterator[Any]:
    from flows_pg import PostgresStore

    store = PostgresStore(dsn, schema=f"bench_children_{uuid.uuid4().hex[:8]}", max_size=20)
    await store.migrate()
    try:
        yield store
    finally:
        await drop(store)


@contextlib.asynccontextmanager
async def citus_store(dsn: str) -> AsyncIterator[Any]:
    from flows_citus import CitusStore

    store = CitusStore(dsn, schema=f"bench_children_{uuid.uuid4().hex[:8]}", max_size=20)
    await store.migrate(shards=32)
    try:
        yield store
    finally:
        await drop(store)


async def drop(store: Any) -> None:
    import psycopg

    schema = store.schema
    await store.close()
    async with await psycopg.AsyncConnection.connect(store._conninfo, autocommit=True) as conn:
        await conn.execute(
            psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema))
        )


async def run_fanout(store: Any, n: int) -> dict[str, float]:
    engine = flows.Engine(store, workflows=[fanout, child])
    worker = flows.Worker(store, workflows=[fanout, child], concurrency=32, poll_interval=0.2)
    task = asyncio.ensure_future(worker.run())
    try:
        started = time.perf_counter()
        run = await engine.start(fanout, n)
        first_commit = None
        while first_commit is None:
            info = await engine.query(run.workflow_id)
            if info.history_length > 1:
                first_commit = time.perf_counter() - started
            else:
                await asyncio.sleep(0.01)
        total = await run.result(timeout=3600)
        done = time.perf_counter() - started
        assert total == n * (n - 1) // 2, total
        children = await engine.list(name="bench-child", limit=1, status="completed")
        last_child = max(c.updated_at for c in children) if children else None
        info = await engine.query(run.workflow_id)
        return {
            "first_commit_s": first_commit,
            "parent_done_s": done,
            "children_per_s": n / done,
            "parent_history": float(info.history_length),
            "delivered": float(worker.counters["outbox_delivered"]),
            "workflow_tasks": float(worker.counters["workflow_tasks"]),
            "last_child_ts": last_child.timestamp() if last_child else 0.0,
        }
    finally:
        await worker.stop()
        await task


async def main_async(args: argparse.Namespace) -> list[str]:
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    lines = [
        "| adapter | children | parent's first commit (s) | parent done (s) | children/s "
        "| parent history events | outbox deliveries |",
        "|---|---|---|---|---|---|---|",
    ]
    server: PgServer | None = None
    cluster = None

    def row(name: str, r: dict[str, float]) -> str:
        return (
            f"| {name} | {args.n} | {r['first_commit_s']:.2f} | {r['parent_done_s']:.1f} "
            f"| {r['children_per_s']:.0f} | {int(r['parent_history'])} | {int(r['delivered'])} |"
        )

    try:
        if "memory" in adapters:
            log(f"memory: fan-out of {args.n}")
            async with memory_store() as store:
                lines.append(row("memory", await run_fanout(store, args.n)))
        if "postgres" in adapters:
            server = PgServer(args.dsn)
            dsn = server.start()
            log(f"postgres: fan-out of {args.n}")
            async with postgres_store(dsn) as store:
                lines.append(row("postgres", await run_fanout(store, args.n)))
        if "citus" in adapters:
            from flows_citus._cluster import LocalCitusCluster, find_citus_pg_bin

            citus_dsn = os.environ.get("FLOWS_CITUS_DSN")
            if not citus_dsn:
                pg_bin = find_citus_pg_bin()
                if pg_bin is None:
                    lines.append("| citus | skipped: no citus extension here | | | | | |")
                    return lines
                cluster = LocalCitusCluster(
                    Path(tempfile.mkdtemp(prefix="flows-bench-citus-")), pg_bin
                )
                citus_dsn = cluster.start()
            log(f"citus: fan-out of {args.n}")
            async with citus_store(citus_dsn) as store:
                lines.append(row("citus (3 local nodes)", await run_fanout(store, args.n)))
    finally:
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="children (default 10000)")
    parser.add_argument("--adapters", default="memory,postgres,citus")
    parser.add_argument(
        "--dsn", default=None, help="a PostgreSQL server instead of an embedded one"
    )
    args = parser.parse_args()
    print("\n".join(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
