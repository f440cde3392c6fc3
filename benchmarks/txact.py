"""Per-step cost of a transactional activity against a normal one:
``python -m benchmarks.txact [--workflows 100] [--steps 5] [--rounds 3]``.

Four kinds of step, each a workflow of ``--steps`` sequential steps, run side by side
(rounds interleaved, A B C D A B C D ...) on one server (default: the embedded
PostgreSQL 18 in a temporary directory; ``--dsn`` for another):

* ``normal``: a normal async activity that touches no database (the cost of a step);
* ``normal + insert``: a normal async activity inserting one row on its own connection
  from an application pool (autocommit: what one writes without the feature; at least
  once);
* ``transactional``: an async transactional activity inserting the same row in the
  transaction that records its result (exactly once);
* ``transactional sync``: the same as a sync function (a thread, a sync connection).

Per kind: latency (one workflow at a time: its duration / steps, median of
``--latency-runs``) and throughput (``--workflows`` started at once, worker concurrency
``--concurrency``: steps per second, median of the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import flows_core as flows

from .common import PgServer, log
from .scenarios import drop_schema, fresh_schema

KINDS = ("normal", "normal + insert", "transactional", "transactional sync")


def build(
    schema: str, app_pool: AsyncConnectionPool[Any]
) -> tuple[dict[str, flows.Workflow[int, int]], list[flows.Activity[int, int]]]:
    """One workflow per kind, and the activities they run."""
    table = sql.Identifier(schema, "bench_effects")
    insert = sql.SQL("INSERT INTO {} (workflow_id, step) VALUES (%s, %s)").format(table)

    @flows.activity("normal")
    async def normal(step: int) -> int:
        return step

    @flows.activity("normal-insert")
    async def normal_insert(step: int) -> int:
        async with app_pool.connection() as conn:
            await conn.execute(insert, (flows.activity_info().workflow_id, step))
        return step

    @flows.activity("tx", transactional=True)
    async def tx(conn: psycopg.AsyncConnection, step: int) -> int:
        await conn.execute(insert, (flows.activity_info().workflow_id, step))
        return step

    @flows.activity("tx-sync", transactional=True)
    def tx_sync(conn: psycopg.Connection, step: int) -> int:
        conn.execute(insert, (flows.activity_info().workflow_id, step))
        return step

    activities = [normal, normal_insert, tx, tx_sync]
    workflows = {kind: _workflow(kind, act) for kind, act in zip(KINDS, activities, strict=True)}
    return workflows, activities


def _workflow(kind: str, act: flows.Activity[int, int]) -> flows.Workflow[int, int]:
    @flows.workflow(f"bench-{kind.replace(' ', '-').replace('+', 'plus')}")
    async def wf(ctx: flows.WorkflowContext, steps: int) -> int:
        total = 0
        for step in range(steps):
            total += await ctx.execute(act, step)
        return total

    return wf


async def run(args: argparse.Namespace, dsn: str) -> dict[str, dict[str, float]]:
    from flows_pg import PostgresStore

    schema = fresh_schema("txact")
    app_pool = AsyncConnectionPool(dsn, min_size=2, max_size=args.concurrency, open=False)
    await app_pool.open()
    store = PostgresStore(dsn, schema=schema, max_size=args.concurrency + 4)
    try:
        await store.migrate()
        async with app_pool.connection() as conn:
            await conn.execute(
                sql.SQL("CREATE TABLE {} (workflow_id text, step int)").format(
                    sql.Identifier(schema, "bench_effects")
                )
            )
        workflows, activities = build(schema, app_pool)
        engine = flows.Engine(store, workflows=list(workflows.values()))
        worker = flows.Worker(
            store,
            workflows=list(workflows.values()),
            activities=activities,
            concurrency=args.concurrency,
            poll_interval=0.05,
        )
        task = asyncio.ensure_future(worker.run())
        latency: dict[str, list[float]] = {k: [] for k in KINDS}
        throughput: dict[str, list[float]] = {k: [] for k in KINDS}
        for kind in KINDS:  # warm-up
            await (await engine.start(workflows[kind], args.steps)).result(timeout=60)
        for _ in range(args.latency_runs):
            for kind in KINDS:
                started = time.perf_counter()
                await (await engine.start(workflows[kind], args.steps)).result(timeout=60)
                latency[kind].append((time.perf_counter() - started) / args.steps)
        for r in range(args.rounds):
            for kind in KINDS:
                started = time.perf_counter()
                runs = [
                    await engine.start(workflows[kind], args.steps) for _ in range(args.workflows)
                ]
                for one in runs:
                    await one.result(timeout=300)
                seconds = time.perf_counter() - started
                throughput[kind].append(args.workflows * args.steps / seconds)
                log(f"round {r + 1} {kind}: {throughput[kind][-1]:.0f} steps/s")
        await worker.stop()
        await task
        return {
            kind: {
                "latency_ms_per_step": 1000 * statistics.median(latency[kind]),
                "steps_per_s": statistics.median(throughput[kind]),
            }
            for kind in KINDS
        }
    finally:
        await store.close()
        await app_pool.close()
        await drop_schema(dsn, schema)


def report(numbers: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    base = numbers["normal"]["latency_ms_per_step"]
    lines = [
        f"Transactional activities, per step ({args.steps} steps per workflow; latency: one "
        f"workflow at a time, median of {args.latency_runs}; throughput: {args.workflows} "
        f"workflows at once, concurrency {args.concurrency}, median of {args.rounds} rounds)",
        f"{'kind':<22}{'ms/step':>10}{'vs normal':>11}{'steps/s':>10}",
    ]
    for kind in KINDS:
        n = numbers[kind]
        extra = n["latency_ms_per_step"] - base
        lines.append(
            f"{kind:<22}{n['latency_ms_per_step']:>10.2f}{extra:>+11.2f}{n['steps_per_s']:>10.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.txact", description=__doc__)
    parser.add_argument("--workflows", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dsn", help="a PostgreSQL server (default: embedded, temporary)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    server = PgServer(args.dsn)
    dsn = server.start()
    try:
        numbers = asyncio.run(run(args, dsn))
    finally:
        server.stop()
    print(report(numbers, args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(numbers, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
