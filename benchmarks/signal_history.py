"""Signal-to-resume latency against the history size, with and without the sticky cache.

::

    python -m benchmarks.signal_history                      # embedded PostgreSQL 18
    python -m benchmarks.signal_history --sizes 0,5000,20000 --samples 30
    python -m benchmarks.signal_history --main /work/main    # also the code of a checkout
    python -m benchmarks.signal_history --dsn postgresql://...

One workflow per measurement: its first task records ``size`` side effects (one history
event each), then it waits for signals in a loop; each signal runs one activity (inline)
that records ``time.time()``. The client takes ``time.time()`` just before
``engine.signal``; the difference is the latency. The worker is idle on LISTEN
(``poll_interval=1s``) when each signal is sent. Modes, interleaved per size, each point
in a fresh process and schema on the same server:

* ``replay``: ``Worker(sticky_cache_size=0)``: every task claims and replays the whole
  history (what main does);
* ``sticky``: the default worker: the claim returns the events after the cached length
  and the cached instance goes on;
* ``main`` (with ``--main PATH``): this script run against the flows packages of the
  checkout at PATH (before the sticky cache).

Prints a markdown table (p50, p95 per size and mode) and, with ``--json PATH``, writes
the raw numbers. The harness can call ``measure_point`` or run this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import flows_core as flows

MODES = ("replay", "sticky")
WAKE: dict[str, asyncio.Future[float]] = {}


@flows.activity("sh-mark")
async def mark(wid: str) -> float:
    now = time.time()
    fut = WAKE.get(wid)
    if fut is not None and not fut.done():
        fut.set_result(now)
    return now


@flows.workflow("sh-waiter")
async def waiter(ctx: flows.WorkflowContext, size: int) -> int:
    for _ in range(size):
        ctx.random()  # one SideEffectRecorded event each
    rounds = 0
    while True:
        n = await ctx.wait_for_signal("go", int)
        if n < 0:
            return rounds
        await ctx.execute(mark, ctx.workflow_id)
        rounds += 1


async def measure_point(dsn: str, size: int, mode: str, samples: int) -> dict[str, Any]:
    """Latencies (ms) of ``samples`` signals to a workflow with ``size`` history events."""
    import psycopg
    from psycopg import sql

    from flows_pg import PostgresStore

    schema = f"bench_sh_{uuid.uuid4().hex[:8]}"
    kwargs: dict[str, Any] = {} if mode != "replay" else {"sticky_cache_size": 0}
    lat: list[float] = []
    store = PostgresStore(dsn, schema=schema)
    try:
        async with store:
            await store.migrate()
            engine = flows.Engine(store)
            worker = flows.Worker(
                store,
                workflows=[waiter],
                activities=[mark],
                concurrency=8,
                poll_interval=1.0,
                workflow_task_deadlock=None,
                **kwargs,
            )
            running = asyncio.ensure_future(worker.run())
            try:
                wid = f"sh-{uuid.uuid4().hex}"
                await engine.start(waiter, size, workflow_id=wid)
                while True:  # the first task (the side effects) has committed
                    info = await store.get_workflow("default", wid)
                    if info.history_length >= size + 2 and not info.workflow_task_pending:
                        break
                    await asyncio.sleep(0.05)
                loop = asyncio.get_running_loop()
                for i in range(samples + 1):
                    await asyncio.sleep(1.2 if i == 0 else random.uniform(0.02, 0.05))
                    fut: asyncio.Future[float] = loop.create_future()
                    WAKE[wid] = fut
                    sent = time.time()
                    await engine.signal(wid, "go", i)
                    resumed = await asyncio.wait_for(fut, 60)
                    if i > 0:  # the first one may find the cache cold (first claim)
                        lat.append((resumed - sent) * 1000)
                length = (await store.get_workflow("default", wid)).history_length
                counters = dict(worker.counters)
            finally:
                await worker.stop()
                await running
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
    return {
        "size": size,
        "mode": mode,
        "history_length": length,
        "latencies_ms": lat,
        "sticky_hits": counters.get("sticky_hits"),
    }


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _run_point(dsn: str, size: int, mode: str, samples: int, main: str | None) -> dict[str, Any]:
    """One point in a fresh process (``main``: with the packages of that checkout)."""
    env = dict(os.environ)
    if mode == "main":
        assert main is not None
        env["PYTHONPATH"] = os.pathsep.join([main, env.get("PYTHONPATH", "")])
    args = [sys.executable, str(Path(__file__).resolve()), "--point", f"{size}:{mode}"]
    args += ["--dsn", dsn, "--samples", str(samples)]
    out = subprocess.run(args, env=env, check=True, stdout=subprocess.PIPE, text=True)
    point: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    point["mode"] = mode
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL server (default: an embedded one)")
    parser.add_argument("--sizes", default="0,5000,20000")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--main", help="also measure the flows packages of this checkout")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        size, mode = args.point.split(":")
        point = asyncio.run(measure_point(args.dsn, int(size), mode, args.samples))
        print(json.dumps(point))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.common import PgServer

    server = PgServer(args.dsn)
    dsn = server.start()
    modes = (["main"] if args.main else []) + list(MODES)
    points = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            for mode in modes:
                print(f"size {size}, {mode}...", file=sys.stderr, flush=True)
                points.append(_run_point(dsn, size, mode, args.samples, args.main))
    finally:
        server.stop()
    print("| history events | mode | p50 ms | p95 ms | max ms | cache hits |")
    print("|---:|---|---:|---:|---:|---:|")
    for p in points:
        lat = p["latencies_ms"]
        print(
            f"| {p['history_length']:,} | {p['mode']} | {_percentile(lat, 50):.1f} | "
            f"{_percentile(lat, 95):.1f} | {max(lat):.1f} | {p['sticky_hits']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=1))


if __name__ == "__main__":
    main()
