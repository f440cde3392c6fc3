"""A long transaction holding back vacuum: ``python -m benchmarks.longtx [--seconds 60]``.

Runs the benchmark's throughput scenario (a) (3-step workflows, ``--round`` of them
started at once, worker concurrency ``--concurrency``) round after round for
``--seconds``, twice, side by side in one run on one server:

1. **baseline**: nothing else on the server;
2. **held xmin**: one connection sits in a ``REPEATABLE READ`` transaction that has
   taken an xid (``txid_current()``) and a snapshot, for the whole phase, so no dead row
   younger than it can be removed by vacuum, autovacuum or HOT pruning.

Each phase gets a fresh schema. Reported per phase: wf/s (all rounds, and the first and
last quarter of them), dead tuples (``pg_stat_user_tables.n_dead_tup``) of
tasks / inbox / workflows / history at the end, their size, autovacuum runs, what a
``VACUUM (VERBOSE)`` of ``tasks`` could remove, and what an operator would see in
``pg_stat_activity`` (oldest transaction age, ``age(backend_xmin)``).
Default: the embedded PostgreSQL 18 in a temporary directory; ``--dsn`` for another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .common import PgServer, log, median
from .scenarios import drop_schema, fresh_schema

TABLES = ("tasks", "inbox", "workflows", "history")


@dataclass
class Phase:
    name: str
    rounds: list[float] = field(default_factory=list)  # wf/s of each round
    workflows: int = 0
    seconds: float = 0.0
    dead: dict[str, int] = field(default_factory=dict)  # n_dead_tup at the end
    live: dict[str, int] = field(default_factory=dict)
    size_kb: dict[str, int] = field(default_factory=dict)
    autovacuums: dict[str, int] = field(default_factory=dict)
    dead_series: list[tuple[float, int]] = field(default_factory=list)  # (s, tasks n_dead_tup)
    vacuum_tasks: str = ""  # VACUUM (VERBOSE) tasks: its "tuples:" line
    oldest_xact_s: float | None = None
    max_xmin_age: int | None = None

    @property
    def wf_per_s(self) -> float:
        return self.workflows / self.seconds if self.seconds else 0.0

    def quarter(self, last: bool) -> float:
        k = max(1, len(self.rounds) // 4)
        part = self.rounds[-k:] if last else self.rounds[:k]
        return median(part) if part else 0.0


async def table_stats(dsn: str, schema: str) -> dict[str, tuple[int, int, int, int]]:
    """table -> (n_dead_tup, n_live_tup, size in kB, autovacuum_count)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT relname, n_dead_tup, n_live_tup, "
            "pg_total_relation_size(relid) / 1024, autovacuum_count "
            "FROM pg_stat_user_tables WHERE schemaname = %s",
            (schema,),
        )
        rows = await cur.fetchall()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


async def activity_view(dsn: str) -> tuple[float | None, int | None]:
    """What an operator sees: the oldest open transaction (s) and the largest
    ``age(backend_xmin)`` in pg_stat_activity."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT extract(epoch FROM max(now() - xact_start))::float8, "
            "max(age(backend_xmin)) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        )
        row = await cur.fetchone()
    assert row is not None
    return (
        None if row[0] is None else float(row[0]),
        None if row[1] is None else int(row[1]),
    )


async def vacuum_verbose(dsn: str, schema: str, table: str) -> str:
    """VACUUM (VERBOSE) ``schema.table``; its line saying what it removed and kept."""
    import psycopg
    from psycopg import sql

    lines: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: lines.append(str(d.message_primary or "")))
        conn.add_notice_handler(lambda d: lines.append(str(d.message_detail or "")))
        await conn.execute(
            sql.SQL("VACUUM (VERBOSE) {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        )
    text = "\n".join(lines)
    found = re.search(r"tuples: [^\n]*", text)
    return found.group(0) if found else text[:200]


async def run_phase(
    dsn: str, name: str, seconds: float, n: int, concurrency: int, hold: bool
) -> Phase:
    import psycopg
    from psycopg import sql

    import flows_core as flows

    from . import apps

    phase = Phase(name)
    schema = fresh_schema("longtx")
    store = apps.pg_store(dsn, schema, max_size=10)
    holder: psycopg.AsyncConnection[Any] | None = None
    try:
        async with store:
            await store.migrate()
            if hold:
                holder = await psycopg.AsyncConnection.connect(dsn)
                await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                await holder.execute("SELECT txid_current()")
                await holder.execute(
                    sql.SQL("SELECT count(*) FROM {}.workflows").format(sql.Identifier(schema))
                )
                log(f"{name}: a REPEATABLE READ transaction holds its xid and snapshot")
            engine = flows.Engine(store)
            worker = flows.Worker(
                store,
                workflows=[apps.three],
                activities=[apps.inc],
                concurrency=concurrency,
                poll_interval=1.0,
            )
            running = asyncio.create_task(worker.run())
            tracker = store.tracker
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                tracker.expect(n)
                t0 = time.perf_counter()
                await apps.start_many(engine, apps.three, list(range(n)), 16)
                await asyncio.wait_for(tracker.all_done.wait(), 300)
                elapsed = time.perf_counter() - t0
                phase.rounds.append(n / elapsed)
                phase.workflows += n
                stats = await table_stats(dsn, schema)
                at = time.perf_counter() - began
                phase.dead_series.append((round(at, 1), stats.get("tasks", (0, 0, 0, 0))[0]))
            phase.seconds = time.perf_counter() - began
            await worker.stop()
            await running
            await asyncio.sleep(1.0)  # let the backends flush their statistics
            phase.oldest_xact_s, phase.max_xmin_age = await activity_view(dsn)
            stats = await table_stats(dsn, schema)
            for table in TABLES:
                dead, live, size, autovac = stats.get(table, (0, 0, 0, 0))
                phase.dead[table], phase.live[table] = dead, live
                phase.size_kb[table], phase.autovacuums[table] = size, autovac
            phase.vacuum_tasks = await vacuum_verbose(dsn, schema, "tasks")
    finally:
        if holder is not None:
            await holder.close()
        await drop_schema(dsn, schema)
    log(f"{name}: {phase.workflows} workflows, {phase.wf_per_s:.0f} wf/s, dead {phase.dead}")
    return phase


def report(phases: list[Phase], args: argparse.Namespace, info: dict[str, str]) -> str:
    base, held = phases
    out = [
        f"Long transaction holding back vacuum: scenario (a) (3-step workflows, rounds of "
        f"{args.round}, worker concurrency {args.concurrency}), {args.seconds:.0f} s per phase"
        f"{', held-xmin phase first' if args.held_first else ''}",
        "server: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        f"| metric | {base.name} | {held.name} | change |",
        "|---|---:|---:|---:|",
    ]

    def row(label: str, a: float, b: float, fmt: str = "{:.0f}") -> None:
        change = f"{(b - a) / a * 100:+.0f}%" if a else "-"
        out.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {change} |")

    row("wf/s, whole phase", base.wf_per_s, held.wf_per_s)
    row("wf/s, median round, first quarter", base.quarter(False), held.quarter(False))
    row("wf/s, median round, last quarter", base.quarter(True), held.quarter(True))
    row("workflows completed", base.workflows, held.workflows)
    for table in TABLES:
        row(f"n_dead_tup {table} (end)", base.dead[table], held.dead[table])
    for table in TABLES:
        row(f"size {table} (kB, end)", base.size_kb[table], held.size_kb[table])
    out.append(
        "| autovacuum runs tasks/inbox/workflows/history | "
        + " | ".join("/".join(str(p.autovacuums[t]) for t in TABLES) for p in (base, held))
        + " | |"
    )
    out.append(
        "| oldest open xact (s) / max age(backend_xmin) | "
        + " | ".join(
            f"{'-' if p.oldest_xact_s is None else f'{p.oldest_xact_s:.0f}'} / "
            f"{'-' if p.max_xmin_age is None else p.max_xmin_age}"
            for p in (base, held)
        )
        + " | |"
    )
    out.append("")
    for p in phases:
        out.append(f"VACUUM (VERBOSE) tasks, {p.name}: {p.vacuum_tasks}")
    out.append("")
    for p in phases:
        series = ", ".join(
            f"{s:.0f}s:{d}" for s, d in p.dead_series[:: max(1, len(p.dead_series) // 8)]
        )
        out.append(f"tasks n_dead_tup over time, {p.name}: {series}")
    return "\n".join(out)


async def main_async(args: argparse.Namespace, dsn: str) -> list[Phase]:
    order = [("baseline", False), ("held xmin", True)]
    if args.held_first:
        order.reverse()
    phases = []
    for name, hold in order:
        log(f"phase {name}: {args.seconds:.0f} s")
        phases.append(await run_phase(dsn, name, args.seconds, args.round, args.concurrency, hold))
    phases.sort(key=lambda p: p.name != "baseline")  # the report shows baseline first
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.longtx", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--round", type=int, default=400, help="workflows started per round")
    parser.add_argument("--concurrency", type=int, default=8, help="worker concurrency")
    parser.add_argument("--dsn", help="a PostgreSQL server (default: embedded, temporary)")
    parser.add_argument(
        "--naptime",
        help="set autovacuum_naptime (ALTER SYSTEM, e.g. 5s) so autovacuum visits the tables "
        "within a short phase; default: leave the server's",
    )
    parser.add_argument("--held-first", action="store_true", help="run the held-xmin phase first")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    server = PgServer(args.dsn)
    dsn = server.start()
    try:
        info = {
            k: v
            for k, v in server.info().items()
            if k in ("server_version", "synchronous_commit", "shared_buffers")
        }
        with server.admin() as conn:
            if args.naptime:
                from psycopg import sql

                conn.execute(
                    sql.SQL("ALTER SYSTEM SET autovacuum_naptime = {}").format(
                        sql.Literal(args.naptime)
                    )
                )
                conn.execute("SELECT pg_reload_conf()")
                time.sleep(0.5)
            row = conn.execute("SHOW autovacuum_naptime").fetchone()
            info["autovacuum_naptime"] = str(row[0]) if row else "?"
        phases = asyncio.run(main_async(args, dsn))
    finally:
        server.stop()
    print()
    print(report(phases, args, info))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(p) for p in phases], out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
