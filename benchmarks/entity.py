"""Entity workflow benchmark: signal-to-resume latency against the number of signals
handled, with and without continue-as-new.

One entity workflow waits for a signal in a loop; each signal's payload is the client's
``time.time()`` just before ``engine.signal``, and the workflow passes it to an activity
that records ``time.time() - sent``: the signal-to-resume latency, including the claim
(which re-reads and replays the run's history) and the commit. Signals go one at a time
(the next is sent once the activity ran). With ``--every N`` the workflow continues as
new every N signals, so its history stays under about 4 N events; with ``--every 0`` it
never does, and its history grows by 4 events per signal.

Reported: the p50 (and p95) latency per bucket of signals, per adapter and mode::

    python -m benchmarks.entity                                   # defaults below
    python -m benchmarks.entity --adapters memory --signals 100000 --every 500
    python -m benchmarks.entity --adapters postgres --signals 20000 --baseline 2000

``--baseline K`` adds a run of K signals with ``--every 0`` (the growth continue-as-new
avoids). PostgreSQL is an embedded server in a temporary directory (or ``--dsn``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, ClassVar

import msgspec

import flows_core as flows
from flows_memory import MemoryStore


class EntityState(msgspec.Struct, frozen=True):
    every: int
    """Continue as new after this many signals in a run (0: never)."""
    handled: int = 0


class _Probe:
    """Where the activity reports each latency (one benchmark at a time)."""

    latencies: ClassVar[list[float]] = []
    ran: ClassVar[asyncio.Event] = asyncio.Event()


@flows.activity("bench-entity-mark")
async def mark(sent: float) -> None:
    _Probe.latencies.append(time.time() - sent)
    _Probe.ran.set()


@flows.workflow("bench-entity")
async def entity(ctx: flows.WorkflowContext, state: EntityState) -> int:
    handled = 0
    while True:
        sent = await ctx.wait_for_signal("tick", float)
        if sent < 0:
            return state.handled + handled
        await ctx.execute(mark, sent)
        handled += 1
        ctx.set_status({"handled": state.handled + handled})
        if state.every and handled >= state.every:
            ctx.continue_as_new(EntityState(every=state.every, handled=state.handled + handled))


@contextlib.asynccontextmanager
async def store_for(adapter: str, dsn: str | None) -> AsyncIterator[Any]:
    if adapter == "memory":
        yield MemoryStore()
        return
    from flows_pg import PostgresStore

    if dsn is not None:
        async with PostgresStore(dsn, schema=f"entity_{int(time.time())}") as store:
            await store.migrate()
            yield store
        return
    from flows_pg import embedded

    with tempfile.TemporaryDirectory(prefix="flows-entity-") as data_dir:
        server = embedded.ensure_started(data_dir)
        try:
            async with PostgresStore(server, schema="entity") as store:
                await store.migrate()
                yield store
        finally:
            embedded.stop(data_dir, delete=True)


async def measure(adapter: str, dsn: str | None, signals: int, every: int) -> list[float]:
    """Latencies (seconds) of ``signals`` signals sent one at a time to one entity."""
    _Probe.latencies = []
    _Probe.ran = asyncio.Event()
    async with store_for(adapter, dsn) as store:
        engine = flows.Engine(store, workflows=[entity])
        worker = flows.Worker(
            store, workflows=[entity], activities=[mark], poll_interval=1.0, concurrency=4
        )
        task = asyncio.ensure_future(worker.run())
        try:
            run = await engine.start(entity, EntityState(every=every))
            started = time.monotonic()
            for i in range(signals):
                _Probe.ran.clear()
                await engine.signal(run.workflow_id, "tick", time.time())
                await asyncio.wait_for(_Probe.ran.wait(), 60)
                if (i + 1) % max(1, signals // 10) == 0:
                    elapsed = time.monotonic() - started
                    print(
                        f"  {adapter} every={every}: {i + 1} signals, {elapsed:.0f} s",
                        file=sys.stderr,
                    )
            await engine.signal(run.workflow_id, "tick", -1.0)
            assert await run.result(timeout=60) == signals
            info = await run.query()
            print(f"  {adapter} every={every}: {info.run_number} run(s)", file=sys.stderr)
        finally:
            await worker.stop(grace_period=timedelta(seconds=1).total_seconds())
            await task
    return list(_Probe.latencies)


def buckets(latencies: list[float], size: int) -> list[tuple[int, float, float]]:
    """(signals up to, p50 ms, p95 ms) per bucket of ``size`` signals."""
    rows = []
    for start in range(0, len(latencies), size):
        chunk = sorted(latencies[start : start + size])
        p95 = chunk[min(len(chunk) - 1, int(0.95 * len(chunk)))]
        rows.append((start + len(chunk), statistics.median(chunk) * 1000, p95 * 1000))
    return rows


def table(title: str, rows: list[tuple[int, float, float]]) -> str:
    lines = [f"### {title}", "", "| signals up to | p50 ms | p95 ms |", "|---:|---:|---:|"]
    lines += [f"| {n:,} | {p50:.2f} | {p95:.2f} |" for n, p50, p95 in rows]
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.entity", description=__doc__)
    parser.add_argument("--adapters", default="memory,postgres")
    parser.add_argument("--signals", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=500, help="continue as new every N")
    parser.add_argument("--bucket", type=int, default=10_000, help="signals per reported row")
    parser.add_argument(
        "--baseline", type=int, default=3_000, help="signals without continue-as-new (0: none)"
    )
    parser.add_argument("--baseline-bucket", type=int, default=500)
    parser.add_argument("--dsn", default=None, help="a PostgreSQL server instead of embedded")
    args = parser.parse_args(argv)
    for adapter in args.adapters.split(","):
        latencies = await measure(adapter, args.dsn, args.signals, args.every)
        title = f"{adapter}: {args.signals:,} signals, continue-as-new every {args.every}"
        print(table(title, buckets(latencies, args.bucket)) + "\n", flush=True)
        if args.baseline:
            latencies = await measure(adapter, args.dsn, args.baseline, 0)
            title = f"{adapter}: {args.baseline:,} signals, no continue-as-new"
            print(table(title, buckets(latencies, args.baseline_bucket)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
