"""Peer systems running the same 3-step workflow: DBOS Transact and absurd.

Imported only inside a runner subprocess (DBOS keeps process-wide state).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

# -- DBOS Transact --


IO_DELAY = 0.05
"""Seconds each step of the I/O-bound workflow (scenario i) awaits (as Flows')."""


async def _dbos_inc(x: int) -> int:
    return x + 1


async def _dbos_io(x: int) -> int:
    await asyncio.sleep(IO_DELAY)
    return x + 1


def _dbos_definitions(io: bool = False) -> Any:
    from dbos import DBOS

    inc = DBOS.step(name="bench_inc")(_dbos_inc)
    io_step = DBOS.step(name="bench_io")(_dbos_io)

    @DBOS.workflow(name="bench_three")
    async def three(x: int) -> int:
        x = await inc(x)
        x = await inc(x)
        return await inc(x)

    @DBOS.workflow(name="bench_io_three")
    async def three_io(x: int) -> int:
        x = await io_step(x)
        x = await io_step(x)
        return await io_step(x)

    return three_io if io else three


def dbos_config(url: str) -> dict[str, Any]:
    return {
        "name": "flows-bench",
        "system_database_url": url,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
        "sys_db_pool_size": 10,
    }


def dbos_setup(url: str) -> None:
    """Create/migrate the DBOS system database once (outside the measured rounds)."""
    from dbos import DBOS

    _dbos_definitions()
    DBOS(config=dbos_config(url))  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.destroy()


async def dbos_round(spec: dict[str, Any], warmup: int) -> dict[str, Any]:
    from dbos import DBOS

    three = _dbos_definitions(spec.get("workload") == "io")
    DBOS(config=dbos_config(spec["url"]))  # type: ignore[arg-type]
    DBOS.launch()
    sem = asyncio.Semaphore(spec["concurrency"])

    async def one(x: int) -> int:
        async with sem:
            handle = await DBOS.start_workflow_async(three, x)
            result: int = await handle.get_result()
            return result

    try:
        await asyncio.gather(*(one(i) for i in range(warmup)))
        c0 = time.process_time()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(spec["n"])))
        t1 = time.perf_counter()
        c1 = time.process_time()
        assert all(r == i + 3 for i, r in enumerate(results)), "DBOS returned wrong results"
    finally:
        DBOS.destroy(destroy_registry=True)
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "n": spec["n"], "own_queries": 0}


DBOS_STARTS_QUEUE = "flowsbench_starts"
"""A queue no DBOS process in the harness declares: what is enqueued there stays."""


async def dbos_starts(spec: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Starts alone: ``DBOSClient.enqueue_async`` (the workflow row, ENQUEUED), nothing
    runs them; ``starters`` calls in flight."""
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=spec["url"], system_database_pool_size=10)
    options: Any = {"workflow_name": "bench_three", "queue_name": DBOS_STARTS_QUEUE}
    sem = asyncio.Semaphore(spec["starters"])

    async def one(x: int) -> None:
        async with sem:
            await client.enqueue_async(options, x)

    try:
        await asyncio.gather(*(one(i) for i in range(warmup)))
        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(spec["n"])))
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        client.destroy()
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "n": spec["n"], "own_queries": 0}


# -- absurd --

ABSURD_QUEUE = "flowsbench"
ABSURD_STARTS_QUEUE = "flowsbench_starts"
"""A queue no absurd worker in the harness serves: what is spawned there stays."""


def absurd_setup(dsn: str, sql_path: str) -> None:
    """Apply the absurd schema file and create the benchmark queue."""
    import psycopg

    text = Path(sql_path).read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # type: ignore[call-overload]
        conn.execute("SELECT absurd.create_queue(%s)", (ABSURD_QUEUE,))
        conn.execute("SELECT absurd.create_queue(%s)", (ABSURD_STARTS_QUEUE,))


async def absurd_round(spec: dict[str, Any], warmup: int) -> dict[str, Any]:
    import psycopg
    from absurd_sdk import AsyncAbsurd

    app = AsyncAbsurd(spec["dsn"], queue_name=ABSURD_QUEUE)
    client = AsyncAbsurd(spec["dsn"], queue_name=ABSURD_QUEUE)

    io = spec.get("workload") == "io"

    async def inc(x: int) -> int:
        if io:
            await asyncio.sleep(IO_DELAY)
        return x + 1

    @app.register_task("bench_three")
    async def three(params: Any, ctx: Any) -> int:
        x = int(params["x"])
        x = await ctx.step("s1", lambda: inc(x))
        x = await ctx.step("s2", lambda: inc(x))
        return int(await ctx.step("s3", lambda: inc(x)))

    table = f"absurd.t_{ABSURD_QUEUE}"
    polls = 0

    async def run_batch(n: int, poller: Any) -> None:
        nonlocal polls
        async with poller.cursor() as cur:
            await cur.execute(f"SELECT count(*) FROM {table} WHERE state = 'completed'")
            polls += 1
            row = await cur.fetchone()
            base = int(row[0])
        for i in range(n):
            await client.spawn("bench_three", {"x": i}, queue=ABSURD_QUEUE)
        while True:
            async with poller.cursor() as cur:
                await cur.execute(f"SELECT count(*) FROM {table} WHERE state = 'completed'")
                polls += 1
                row = await cur.fetchone()
            if int(row[0]) - base >= n:
                return
            await asyncio.sleep(0.025)

    worker = asyncio.create_task(
        app.start_worker(concurrency=spec["concurrency"], poll_interval=0.05)
    )
    poller = await psycopg.AsyncConnection.connect(spec["dsn"], autocommit=True)
    try:
        await run_batch(warmup, poller)
        c0 = time.process_time()
        t0 = time.perf_counter()
        await run_batch(spec["n"], poller)
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        app.stop_worker()
        await asyncio.wait([worker], timeout=10)
        await poller.close()
        await app.close()
        await client.close()
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "n": spec["n"], "own_queries": polls}


async def absurd_starts(spec: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Starts alone: ``spawn`` on a queue no worker serves, ``starters`` calls in flight
    (its async client has one connection: they queue on it)."""
    from absurd_sdk import AsyncAbsurd

    client = AsyncAbsurd(spec["dsn"], queue_name=ABSURD_STARTS_QUEUE)
    sem = asyncio.Semaphore(spec["starters"])

    async def one(x: int) -> None:
        async with sem:
            await client.spawn("bench_three", {"x": x}, queue=ABSURD_STARTS_QUEUE)

    try:
        await asyncio.gather(*(one(i) for i in range(warmup)))
        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(spec["n"])))
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        await client.close()
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "n": spec["n"], "own_queries": 0}
