"""Subprocess entry points: ``python -m benchmarks.runner '<json spec>'``.

Throughput rounds (Flows, DBOS, absurd) each run in a fresh process, so that peers'
globals never meet, and so that every database connection of a round is closed when
the process exits: PostgreSQL then flushes its statistics, which makes the
``xact_commit`` delta the parent reads exact. The last stdout line is a JSON result.

``worker`` mode is a Flows worker process for the multi-process scenario: it prints
``ready``, starts on a ``go`` line on stdin and stops on ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

WARMUP = 10


async def flows_round(spec: dict[str, Any]) -> dict[str, Any]:
    import flows_core as flows

    from . import apps

    store = apps.pg_store(spec["dsn"], spec["schema"], max_size=spec.get("pool", 10))
    n, c = spec["n"], spec["concurrency"]
    io = spec.get("workload") == "io"
    workflow, activity = (apps.three_io, apps.io_wait) if io else (apps.three, apps.inc)
    async with store:
        eager = flows.EagerStarts()  # the engine starts workflows on this worker
        engine = flows.Engine(store, eager=eager)
        worker = flows.Worker(
            store,
            workflows=[workflow],
            activities=[activity],
            concurrency=c,
            poll_interval=1.0,
            eager=eager,
        )
        running = asyncio.create_task(worker.run())
        tracker = store.tracker
        tracker.expect(WARMUP)
        await apps.start_many(engine, workflow, list(range(WARMUP)), spec["starters"])
        await asyncio.wait_for(tracker.all_done.wait(), 60)
        tracker.expect(n)
        store.calls.clear()
        c0 = time.process_time()
        t0 = time.perf_counter()
        await apps.start_many(engine, workflow, list(range(n)), spec["starters"])
        t_started = time.perf_counter()
        await asyncio.wait_for(tracker.all_done.wait(), spec.get("timeout", 300))
        t1 = time.perf_counter()
        c1 = time.process_time()
        calls = dict(store.calls)
        await worker.stop()
        await running
    return {
        "calls": calls,
        "elapsed": t1 - t0,
        "cpu": c1 - c0,
        "start_phase": t_started - t0,
        "n": n,
        "stats": dict(worker.counters),
        "own_queries": 0,
    }


async def flows_starts(spec: dict[str, Any]) -> dict[str, Any]:
    """Starts alone: no worker runs; ``starters`` start calls in flight."""
    import flows_core as flows

    from . import apps

    store = apps.pg_store(spec["dsn"], spec["schema"], max_size=spec.get("pool", 10))
    async with store:
        engine = flows.Engine(store)
        await apps.start_many(engine, apps.three, list(range(WARMUP)), spec["starters"])
        c0 = time.process_time()
        t0 = time.perf_counter()
        await apps.start_many(engine, apps.three, list(range(spec["n"])), spec["starters"])
        t1 = time.perf_counter()
        c1 = time.process_time()
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "n": spec["n"], "own_queries": 0}


async def dbos_starts(spec: dict[str, Any]) -> dict[str, Any]:
    from . import peers

    return await peers.dbos_starts(spec, WARMUP)


async def absurd_starts(spec: dict[str, Any]) -> dict[str, Any]:
    from . import peers

    return await peers.absurd_starts(spec, WARMUP)


async def dbos_round(spec: dict[str, Any]) -> dict[str, Any]:
    from . import peers

    return await peers.dbos_round(spec, WARMUP)


async def absurd_round(spec: dict[str, Any]) -> dict[str, Any]:
    from . import peers

    return await peers.absurd_round(spec, WARMUP)


async def worker_process(spec: dict[str, Any]) -> dict[str, Any]:
    import flows_core as flows

    from . import apps

    store = apps.pg_store(spec["dsn"], spec["schema"], max_size=spec.get("pool", 10))
    loop = asyncio.get_running_loop()
    async with store:
        worker = flows.Worker(
            store,
            workflows=apps.WORKFLOWS,
            activities=apps.ACTIVITIES,
            concurrency=spec["concurrency"],
            poll_interval=1.0,
        )
        await store.list_workers()  # warm the pool
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return {"stats": {}}
        running = asyncio.create_task(worker.run())
        await loop.run_in_executor(None, sys.stdin.readline)
        await worker.stop()
        await running
    return {"stats": dict(worker.counters)}


async def dbos_setup(spec: dict[str, Any]) -> dict[str, Any]:
    from . import peers

    peers.dbos_setup(spec["url"])
    return {}


MODES = {
    "dbos_setup": dbos_setup,
    "flows": flows_round,
    "dbos": dbos_round,
    "absurd": absurd_round,
    "flows_starts": flows_starts,
    "dbos_starts": dbos_starts,
    "absurd_starts": absurd_starts,
    "worker": worker_process,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = asyncio.run(MODES[spec["mode"]](spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
