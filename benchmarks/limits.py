"""Flow control measured on PostgreSQL: achieved against configured rate, the throughput
cost of limits, and tenant fairness under a 100,000-task backlog.

``python -m benchmarks.limits [--dsn DSN] [--seconds 10] [--rate 10] [--only CASE]``

Without ``--dsn`` an embedded PostgreSQL 18 runs in a temporary directory (stopped and
deleted at the end). Every case uses a fresh schema.

* rate: a backlog of workflows of one step with ``rate_limit="<rate>/s"`` worked by two
  workers (each its own store and pool) for ``--seconds``; the achieved rate is the
  completions per second between the first and the last start, and the largest number
  of starts in any one-second window is reported against the limit (+1, plus the late-claim grace).
* overhead: the same workflows (one activity each) with no limit (inline, and queued to
  a second worker) and with ``max_concurrent=100``, more than the worker's 20 at once
  (it never binds: queued, plus the slot transactions), started as a backlog;
  workflows per second for each.
* fairness: 100,000 queued workflow tasks of one tenant, then one of a quiet tenant:
  is the quiet one in the next claim batch (10), and what does that claim cost, with
  the fair claim and with the plain (first in, first out) one.
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
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

import flows_core as flows
from flows_core.store import ClaimRequest
from flows_pg import PostgresStore


@contextlib.asynccontextmanager
async def fresh_store(dsn: str, **kwargs: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(dsn, schema=f"bench_{uuid.uuid4().hex[:12]}", **kwargs)
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')


@contextlib.asynccontextmanager
async def running(*workers: flows.Worker) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            await w.stop(grace_period=1.0)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def case_rate(dsn: str, seconds: float, rate: int) -> dict[str, Any]:
    starts: list[float] = []

    async def call(i: int) -> int:
        starts.append(time.monotonic())
        return i

    act = flows.activity("bench-rate", rate_limit=f"{rate}/s")(call)

    @flows.workflow("bench-rate-wf")
    async def wf(ctx: flows.WorkflowContext, i: int) -> int:
        return await ctx.execute(act, i)

    backlog = int(rate * seconds * 1.5)  # more than the window can take
    async with fresh_store(dsn) as store:
        other = PostgresStore(dsn, schema=store.schema)
        await other.open()
        try:
            engine = flows.Engine(store)
            for i in range(backlog):  # one step each: no workflow replays a large fan-out
                await engine.start(wf, i)
            workers = [
                flows.Worker(
                    store, workflows=[wf], activities=[act], concurrency=20, poll_interval=0.2
                ),
                flows.Worker(other, activities=[act], concurrency=20, poll_interval=0.2),
            ]
            async with running(*workers):
                await asyncio.sleep(seconds)
        finally:
            await other.close()
    starts.sort()
    window_most = 0
    j = 0
    for i, at in enumerate(starts):
        while starts[j] <= at - 1.0:
            j += 1
        window_most = max(window_most, i - j + 1)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    achieved = (len(starts) - 1) / span if span else 0.0
    return {
        "configured_per_s": rate,
        "runs": len(starts),
        "span_s": round(span, 2),
        "achieved_per_s": round(achieved, 2),
        "achieved_vs_configured": round(achieved / rate, 3),
        "most_in_any_1s": window_most,
    }


async def case_overhead(dsn: str, count: int) -> dict[str, Any]:
    """Workflows of one activity each: unlimited (run inline by the workflow's worker),
    unlimited but queued (the activity served by a second worker only), and limited
    (queued too: a limited step never runs inline, plus its slot transactions)."""
    results: dict[str, Any] = {}
    cases: list[tuple[str, dict[str, Any], bool]] = [
        ("no limit, inline", {}, False),
        ("no limit, queued", {}, True),
        ("max_concurrent=100", {"max_concurrent": 100}, False),
    ]
    for label, limits, queued in cases:
        act, wf = _one_step(f"bench-{len(results)}", limits)
        async with fresh_store(dsn) as store:
            engine = flows.Engine(store)
            runs = [await engine.start(wf, i) for i in range(count)]
            workers = [
                flows.Worker(
                    store,
                    workflows=[wf],
                    activities=[] if queued else [act],
                    concurrency=20,
                    poll_interval=0.05,
                )
            ]
            if queued:
                workers.append(
                    flows.Worker(store, activities=[act], concurrency=20, poll_interval=0.05)
                )
            started = time.monotonic()
            async with running(*workers):
                for run in runs:
                    await run.result(timeout=300)
            elapsed = time.monotonic() - started
        results[label] = {
            "workflows": count,
            "seconds": round(elapsed, 2),
            "per_s": round(count / elapsed, 1),
        }
    limited = results["max_concurrent=100"]["per_s"]
    results["limited_vs_inline"] = round(limited / results["no limit, inline"]["per_s"], 3)
    results["limited_vs_queued"] = round(limited / results["no limit, queued"]["per_s"], 3)
    return results


def _one_step(name: str, limits: dict[str, Any]) -> tuple[Any, Any]:
    async def step(i: int) -> int:
        return i

    act = flows.activity(f"{name}-step", **limits)(step)

    @flows.workflow(f"{name}-wf")
    async def wf(ctx: flows.WorkflowContext, i: int) -> int:
        return await ctx.execute(act, i)

    return act, wf


async def case_fairness(dsn: str, backlog: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fair in (True, False):
        async with fresh_store(dsn, fair_tenants=fair) as store:
            s = f'"{store.schema}"'
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(
                    f"""INSERT INTO {s}.workflows (shard_key, tenant_id, workflow_id, name,
                            version, status, input, history_length)
                        SELECT 'fair-wf-shard-0', 'noisy', 'n' || g, 'fair-wf', 1, 'running',
                               'null', 0 FROM generate_series(1, %s) g""",
                    (backlog,),
                )
                await conn.execute(
                    f"""INSERT INTO {s}.tasks (shard_key, tenant_id, task_id, workflow_id,
                            kind, queue, visible_at, created_at)
                        SELECT 'fair-wf-shard-0', 'noisy', gen_random_uuid(), 'n' || g,
                               'workflow', 'w:fair-wf:1',
                               now() - interval '1 hour' + g * interval '1 ms', now()
                        FROM generate_series(1, %s) g""",
                    (backlog,),
                )
                await conn.execute(f"ANALYZE {s}.tasks")
                await conn.execute(f"ANALYZE {s}.workflows")

            @flows.workflow("fair-wf")
            async def fair_wf(ctx: flows.WorkflowContext, x: int) -> int:
                return x

            quiet = await flows.Engine(store).start(fair_wf, 1, tenant_id="quiet")
            request = ClaimRequest(
                owner="bench",
                workflow_types=[("fair-wf", 1)],
                activity_names=[],
                limit=10,
                lease=timedelta(seconds=30),
            )
            started = time.perf_counter()
            batch = await store.claim(request)
            claim_ms = (time.perf_counter() - started) * 1000
            second = time.perf_counter()
            await store.claim(request)
            again_ms = (time.perf_counter() - second) * 1000
            served = any(c.lease.workflow_id == quiet.workflow_id for c in batch)
            results["fair" if fair else "fifo"] = {
                "quiet_in_first_batch": served,
                "first_claim_ms": round(claim_ms, 1),
                "next_claim_ms": round(again_ms, 1),
                "batch": len(batch),
            }
    return results


async def main(dsn: str, seconds: float, rate: int, only: str | None = None) -> None:
    if only in (None, "fairness"):
        print("fairness (100,000 queued tasks of one tenant, then one quiet):")
        print(" ", await case_fairness(dsn, 100_000))
    if only in (None, "rate"):
        print(f"rate ({rate}/s over {seconds:.0f} s, 2 workers):")
        print(" ", await case_rate(dsn, seconds, rate))
    if only in (None, "overhead"):
        print("overhead (one activity per workflow):")
        print(" ", await case_overhead(dsn, 400))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("FLOWS_BENCH_DSN"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--only", choices=["fairness", "rate", "overhead"])
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(main(args.dsn, args.seconds, args.rate, args.only))
        return
    from flows_pg import embedded

    base = tempfile.mkdtemp(prefix="flows-limits-bench-")
    os.chmod(base, 0o755)
    data_dir = Path(base) / "pg"
    dsn = embedded.ensure_started(data_dir)
    try:
        asyncio.run(main(dsn, args.seconds, args.rate, args.only))
    finally:
        embedded.stop(data_dir, delete=True)


if __name__ == "__main__":
    cli()
