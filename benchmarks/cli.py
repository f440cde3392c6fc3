"""``python -m benchmarks``: run the scenarios, print a markdown table, save results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import scenarios as sc
from .common import DATABASES, RESULTS, PgServer, Row, log, machine_info

ALL_SCENARIOS = "abcdefghij"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Flows benchmarks (memory, embedded PostgreSQL 18, Citus) side by side "
        "with DBOS Transact and absurd.",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, one round (~1 min)")
    p.add_argument(
        "--scenarios",
        default=ALL_SCENARIOS,
        help="letters of the scenarios to run (default abcdefghij): a throughput, "
        "b per-step, c signal, d timer, e replay, f claim backlog, g processes, "
        "h signal vs history size, i I/O-bound, j starts alone",
    )
    p.add_argument(
        "--adapters",
        default="memory,postgres,citus",
        help="comma list of memory, postgres, citus (default all)",
    )
    p.add_argument(
        "--dsn",
        help="use this PostgreSQL server instead of an embedded one "
        "(the harness creates and drops databases named flowsbench_*)",
    )
    p.add_argument("--peers", default="dbos", help="comma list: dbos, absurd ('' for none)")
    p.add_argument(
        "--absurd-sql",
        metavar="PATH",
        help="absurd's schema file (absurd.sql); enables the absurd peer",
    )
    p.add_argument("--concurrency", help="worker concurrency sweep for (a), e.g. 1,8,32")
    p.add_argument("--n", type=int, help="workflows per throughput round (default by concurrency)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per system (median)")
    p.add_argument("--backlog", type=int, help="claim backlog for (f) (default 100000)")
    p.add_argument("--samples", type=int, help="samples for (c) and (d)")
    p.add_argument(
        "--history", help="history sizes (events) for (h), e.g. 0,5000,20000 (the default)"
    )
    p.add_argument("--io-n", type=int, help="workflows for (i) (default 10000)")
    p.add_argument("--io-concurrency", type=int, help="concurrency for (i) (default 500)")
    p.add_argument("--starts-n", type=int, help="starts for (j) (default 3000)")
    p.add_argument(
        "--profile", action="store_true", help="profile one worker process with py-spy during (g)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return p.parse_args(argv)


class Plan:
    def __init__(self, a: argparse.Namespace) -> None:
        q = a.quick
        self.scenarios = set(a.scenarios.lower())
        self.adapters = [x.strip() for x in a.adapters.split(",") if x.strip()]
        self.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
        if a.absurd_sql and "absurd" not in self.peers:
            self.peers.append("absurd")
        if "absurd" in self.peers and not a.absurd_sql:
            log("absurd peer needs --absurd-sql PATH (its schema file): skipped")
            self.peers.remove("absurd")
        default_c = "1,32" if q else "1,8,32"
        self.concurrency = [int(x) for x in (a.concurrency or default_c).split(",")]
        self.rounds = a.rounds or (1 if q else 3)
        self.n = a.n
        self.backlog = a.backlog or (20_000 if q else 100_000)
        self.small_backlog = 2_500
        self.samples = a.samples or (20 if q else 50)
        self.steps_wfs = 5 if q else 10
        self.bulk = 50 if q else 200
        self.memory_n = 1000 if q else 3000
        self.mp_n = 600 if q else 2000
        self.replay_budget = 0.1 if q else 0.3
        self.claim_seconds = 1.5 if q else 3.0
        self.history = [int(x) for x in (a.history or "0,5000,20000").split(",")]
        self.history_samples = 8 if q else 20
        self.io_n = a.io_n or (2000 if q else 10_000)
        self.io_c = a.io_concurrency or 500
        self.starts_n = a.starts_n or (1000 if q else 3000)
        self.quick = q

    def n_for(self, c: int) -> int:
        if self.n:
            return self.n
        if self.quick:
            return 100 if c == 1 else 300
        return 250 if c == 1 else 1000


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args)
    rows: list[Row] = []
    notes: list[str] = []
    extra_md = ""
    failures: list[str] = []
    started = time.monotonic()
    server: PgServer | None = None

    def attempt(what: str, fn: Any) -> None:
        t0 = time.monotonic()
        log(f"{what} ...")
        try:
            got = fn()
            rows.extend(got)
            log(f"{what}: done in {time.monotonic() - t0:.1f}s")
        except Exception as exc:
            failures.append(f"{what}: {exc!r}")
            log(f"{what}: FAILED: {exc!r}")
            traceback.print_exc(file=sys.stderr)

    s = plan.scenarios
    # pure / memory
    if "e" in s:
        attempt(
            "(e) replay cost", lambda: _run(sc.replay_cost([10, 100, 1000], plan.replay_budget))
        )
    if "memory" in plan.adapters:
        mem = sc.Target("memory")
        if "a" in s:
            attempt(
                "(a) memory throughput",
                lambda: _run(sc.throughput_memory(plan.memory_n, plan.concurrency)),
            )
        if "b" in s:
            attempt(
                "(b) memory per-step", lambda: _run(sc.per_step(mem, plan.steps_wfs, 20, plan.bulk))
            )
        if "c" in s:
            attempt("(c) memory signal", lambda: _run(sc.signal_latency(mem, plan.samples)))
        if "d" in s:
            attempt("(d) memory timers", lambda: _run(sc.timer_lateness(mem, plan.samples)))
        if "h" in s:
            attempt(
                "(h) memory signal vs history",
                lambda: _run(sc.signal_history(mem, plan.history, plan.history_samples)),
            )
        if "f" in s:
            attempt(
                "(f) memory claim backlog",
                lambda: _run(
                    sc.claim_rate(mem, [plan.small_backlog, plan.backlog], plan.claim_seconds)
                ),
            )

    if "citus" in plan.adapters:
        _citus_scenarios(plan, notes, attempt)
    for n in notes:
        log(n)

    pg_wanted = "postgres" in plan.adapters and bool(s & set("abcdfghij"))
    try:
        if pg_wanted:
            server = PgServer(args.dsn)
            try:
                server.start()
            except Exception as exc:
                failures.append(f"PostgreSQL did not start: {exc!r}")
                log(f"PostgreSQL did not start: {exc!r}")
                server = None
        if server is not None:
            extra_md = _pg_scenarios(server, plan, args, attempt)
        info = machine_info(server)
    finally:
        if server is not None:
            if not args.dsn:
                server.stop()
            else:
                for db in DATABASES.values():
                    with contextlib.suppress(Exception):
                        server.drop_database(db)

    info["bench_options"] = " ".join(sys.argv[1:]) or "(defaults)"
    info["bench_wall_time"] = f"{time.monotonic() - started:.0f} s"
    if notes or failures:
        extra_md += "\n## Notes\n\n" + "\n".join(f"- {x}" for x in notes + failures) + "\n"
    from . import report

    stamp = time.strftime("%Y%m%d-%H%M%S")
    md_path, png_path, _ = report.write(rows, info, extra_md, args.out, stamp)
    print(report.render(rows, info, extra_md))
    log(f"saved {md_path} and {png_path}")
    return 1 if failures and not rows else 0


def _citus_scenarios(plan: Plan, notes: list[str], attempt: Any) -> None:
    """The in-process scenarios on Citus: FLOWS_CITUS_DSN (a coordinator), else a local
    three-node cluster when a PostgreSQL here has the citus extension installed."""
    from flows_citus._cluster import LocalCitusCluster, find_citus_pg_bin

    dsn = os.environ.get("FLOWS_CITUS_DSN")
    cluster = None
    if not dsn:
        pg_bin = find_citus_pg_bin()
        if pg_bin is None:
            notes.append(
                "Citus: skipped (set FLOWS_CITUS_DSN, or install the citus extension into a "
                "local PostgreSQL)."
            )
            return
        cluster = LocalCitusCluster(Path(tempfile.mkdtemp(prefix="flows-bench-citus-")), pg_bin)
        dsn = cluster.start()
        notes.append(f"Citus: local 3-node cluster from {pg_bin} (coordinator + 2 workers).")
    try:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT citus_version(), current_setting('server_version')"
            ).fetchone()
        if row is not None:
            version = row[0].split(" on ")[0]
            notes.append(f"Citus: {version}, PostgreSQL {row[1]}; 32 shard keys.")
        citus = sc.Target("citus", dsn)
        s = plan.scenarios
        if "a" in s:
            attempt(
                "(a) citus throughput",
                lambda: _run(sc.throughput_inprocess(citus, plan.n_for(8) // 2, plan.concurrency)),
            )
        if "b" in s:
            attempt(
                "(b) citus per-step",
                lambda: _run(sc.per_step(citus, plan.steps_wfs, 20, plan.bulk)),
            )
        if "c" in s:
            attempt("(c) citus signal", lambda: _run(sc.signal_latency(citus, plan.samples)))
        if "d" in s:
            attempt("(d) citus timers", lambda: _run(sc.timer_lateness(citus, plan.samples)))
    finally:
        if cluster is not None:
            cluster.stop()


def _pg_scenarios(server: PgServer, plan: Plan, args: argparse.Namespace, attempt: Any) -> str:
    from . import pgruns

    extra = ""
    dsns = {"flows": server.recreate_database(DATABASES["flows"])}
    pg = sc.Target("postgres", dsns["flows"])
    s = plan.scenarios
    peers = []
    systems = pgruns.Systems(server, dsns)
    if s & set("aij"):
        for peer in plan.peers:
            try:
                dsns[peer] = server.recreate_database(DATABASES[peer])
                if peer == "dbos":
                    from .common import sqlalchemy_url

                    pgruns.run_spec({"mode": "dbos_setup", "url": sqlalchemy_url(dsns[peer])})
                elif peer == "absurd":
                    from . import peers as peer_mod

                    peer_mod.absurd_setup(dsns[peer], args.absurd_sql)
                peers.append(peer)
            except Exception as exc:
                log(f"peer {peer} setup failed, skipped: {exc!r}")
    if "a" in s:
        attempt(
            "(a) postgres throughput vs peers",
            lambda: pgruns.throughput(systems, peers, plan.concurrency, plan.n_for, plan.rounds),
        )
    if "b" in s:
        attempt(
            "(b) postgres per-step", lambda: _run(sc.per_step(pg, plan.steps_wfs, 20, plan.bulk))
        )
    if "c" in s:
        attempt("(c) postgres signal", lambda: _run(sc.signal_latency(pg, plan.samples)))
    if "d" in s:
        attempt("(d) postgres timers", lambda: _run(sc.timer_lateness(pg, plan.samples)))
    if "h" in s:
        attempt(
            "(h) postgres signal vs history",
            lambda: _run(sc.signal_history(pg, plan.history, plan.history_samples)),
        )
    if "i" in s:
        attempt(
            "(i) postgres I/O-bound vs peers",
            lambda: pgruns.io_bound(systems, peers, plan.io_n, plan.io_c),
        )
    if "j" in s:
        attempt(
            "(j) postgres starts alone vs peers",
            lambda: pgruns.starts_alone(systems, peers, plan.starts_n),
        )
    if "f" in s:
        attempt(
            "(f) postgres claim backlog",
            lambda: _run(sc.claim_rate(pg, [plan.small_backlog, plan.backlog], plan.claim_seconds)),
        )
    if "g" in s:
        prof = None
        if args.profile:
            args.out.mkdir(parents=True, exist_ok=True)
            prof = args.out / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        attempt(
            "(g) postgres worker processes",
            lambda: pgruns.multi_process(server, dsns["flows"], plan.mp_n, [1, 2], 32, prof),
        )
        if prof is not None and prof.exists():
            from . import profile

            extra += "\n## Profile: one worker process, scenario (g), c=32\n\n"
            extra += f"Raw collapsed stacks: `{prof.name}`\n\n" + profile.markdown(prof)
    return extra
