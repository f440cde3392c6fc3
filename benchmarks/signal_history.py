"""Signal-to-resume latency against the history size, with and without the sticky cache.

::

    python -m benchmarks.signal_history                      # embedded PostgreSQL 18
    python -m benchmarks.signal_history --sizes 0,5000,20000 --samples 30 --rounds 2
    python -m benchmarks.signal_history --main /work/main    # also the code of a checkout
    python -m benchmarks.signal_history --dsn postgresql://...

One workflow per mode and size: its first task records ``size`` side effects (one history
event each), then it waits for signals in a loop; each signal runs one activity (inline)
that records ``time.time()``. The client takes ``time.time()`` just before
``engine.signal``; the difference is the latency. The workers are idle on LISTEN
(``poll_interval=1s``) when each signal is sent. Modes:

* ``replay``: ``Worker(sticky_cache_size=0)``: every task claims and replays the whole
  history (what main does);
* ``sticky``: the default worker: the claim returns the events after the cached length
  and the cached instance goes on;
* ``main`` (with ``--main PATH``): the flows packages of the checkout at PATH (before the
  sticky cache), in a process of its own.

``replay`` and ``sticky`` run in one process per size, each with its own workflow type
and worker, their signals alternating (the load of a shared machine weighs on both
alike); ``main`` runs just before them. Every point uses a fresh schema on the same
server. Prints a markdown table (p50, p95 per size and mode) and, with ``--json PATH``,
writes the raw numbers. The harness can call ``measure_point`` or run this module.
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


def _waiter(name: str) -> flows.Workflow[int, int]:
    @flows.workflow(name)
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

    return waiter


async def measure_point(
    dsn: str, size: int, modes: list[str], samples: int
) -> list[dict[str, Any]]:
    """Latencies (ms) of ``samples`` signals to a workflow with ``size`` history events,
    per mode: each mode has its own workflow type and worker in this process, and the
    signals alternate between them."""
    import psycopg
    from psycopg import sql

    from flows_pg import PostgresStore

    schema = f"bench_sh_{uuid.uuid4().hex[:8]}"
    lat: dict[str, list[float]] = {mode: [] for mode in modes}
    store = PostgresStore(dsn, schema=schema)
    try:
        async with store:
            await store.migrate()
            engine = flows.Engine(store)
            waiters = {mode: _waiter(f"sh-waiter-{mode}") for mode in modes}
            # a store (pool and LISTEN connection) per worker, as in separate processes
            stores = {mode: PostgresStore(dsn, schema=schema) for mode in modes}
            for own in stores.values():
                await own.open()
            workers = {
                mode: flows.Worker(
                    stores[mode],
                    workflows=[waiters[mode]],
                    activities=[mark],
                    concurrency=8,
                    poll_interval=1.0,
                    workflow_task_deadlock=None,
                    **({"sticky_cache_size": 0} if mode == "replay" else {}),
                )
                for mode in modes
            }
            running = [asyncio.ensure_future(w.run()) for w in workers.values()]
            try:
                wids = {mode: f"sh-{mode}-{uuid.uuid4().hex}" for mode in modes}
                for mode in modes:
                    await engine.start(waiters[mode], size, workflow_id=wids[mode])
                for wid in wids.values():
                    while True:  # the first task (the side effects) has committed
                        info = await store.get_workflow("default", wid)
                        if info.history_length >= size + 2 and not info.workflow_task_pending:
                            break
                        await asyncio.sleep(0.05)
                loop = asyncio.get_running_loop()
                await asyncio.sleep(1.2)  # the workers are idle now, waiting on LISTEN
                for i in range(samples + 1):
                    for mode in modes if i % 2 else modes[::-1]:
                        await asyncio.sleep(random.uniform(0.02, 0.05))
                        fut: asyncio.Future[float] = loop.create_future()
                        WAKE[wids[mode]] = fut
                        sent = time.time()
                        await engine.signal(wids[mode], "go", i)
                        resumed = await asyncio.wait_for(fut, 60)
                        if i > 0:  # the first one may find the cache cold (first claim)
                            lat[mode].append((resumed - sent) * 1000)
                lengths = {
                    mode: (await store.get_workflow("default", wid)).history_length
                    for mode, wid in wids.items()
                }
            finally:
                for w in workers.values():
                    await w.stop()
                await asyncio.gather(*running)
                for own in stores.values():
                    await own.close()
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
    return [
        {
            "size": size,
            "mode": mode,
            "history_length": lengths[mode],
            "latencies_ms": lat[mode],
            "sticky_hits": workers[mode].counters.get("sticky_hits"),
        }
        for mode in modes
    ]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _run_point(
    dsn: str, size: int, modes: list[str], samples: int, main: str | None
) -> list[dict[str, Any]]:
    """One point in a fresh process (modes ``["main"]``: with the packages of ``main``)."""
    env = dict(os.environ)
    if modes == ["main"]:
        assert main is not None
        env["PYTHONPATH"] = os.pathsep.join([main, env.get("PYTHONPATH", "")])
    args = [sys.executable, str(Path(__file__).resolve())]
    args += ["--point", f"{size}:{','.join(modes)}", "--dsn", dsn, "--samples", str(samples)]
    out = subprocess.run(args, env=env, check=True, stdout=subprocess.PIPE, text=True)
    points: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL server (default: an embedded one)")
    parser.add_argument("--sizes", default="0,5000,20000")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds, pooled")
    parser.add_argument("--modes", default=",".join(MODES), help="of replay, sticky")
    parser.add_argument("--main", help="also measure the flows packages of this checkout")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        size, modes = args.point.split(":")
        points = asyncio.run(measure_point(args.dsn, int(size), modes.split(","), args.samples))
        print(json.dumps(points))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.common import PgServer

    server = PgServer(args.dsn)
    dsn = server.start()
    groups = ([["main"]] if args.main else []) + [args.modes.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    pooled: dict[tuple[int, str], dict[str, Any]] = {}
    try:
        for round_ in range(args.rounds):
            for size in sizes:
                for group in groups:
                    what = f"round {round_ + 1}, size {size}, {'+'.join(group)}"
                    print(what, file=sys.stderr, flush=True)
                    for point in _run_point(dsn, size, group, args.samples, args.main):
                        key = (size, point["mode"])
                        if key in pooled:
                            pooled[key]["latencies_ms"] += point["latencies_ms"]
                        else:
                            pooled[key] = point
    finally:
        server.stop()
    print("| history events | mode | p50 ms | p95 ms | max ms | samples | cache hits (last) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        for group in groups:
            for mode in group:
                p = pooled[size, mode]
                lat = p["latencies_ms"]
                print(
                    f"| {p['history_length']:,} | {mode} | {_percentile(lat, 50):.1f} | "
                    f"{_percentile(lat, 95):.1f} | {max(lat):.1f} | {len(lat)} | "
                    f"{p['sticky_hits']} |"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(list(pooled.values()), indent=1))


if __name__ == "__main__":
    main()
