"""PostgreSQL scenarios driven from subprocesses: (a) throughput with peers, (g) processes.

Each round runs in its own process; the parent reads ``pg_stat_database.xact_commit``
of the round's database before and after (from the ``postgres`` database, once the
round's backends have exited and flushed their statistics).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import DATABASES, REPO, PgServer, Row, log, median, sqlalchemy_url, xact_commits
from .scenarios import _fill_pg, drop_schema, fresh_schema


def run_spec(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.runner", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{spec['mode']} round failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


async def _migrate(dsn: str, schema: str) -> None:
    from flows_pg import PostgresStore

    async with PostgresStore(dsn, schema=schema) as store:
        await store.migrate()


class Systems:
    """How to run one round of each system and which database it uses."""

    def __init__(self, server: PgServer, dsns: dict[str, str]) -> None:
        self.server = server
        self.dsns = dsns

    def round(
        self, system: str, n: int, c: int, *, workload: str = "three", starts: bool = False
    ) -> dict[str, Any]:
        db = DATABASES[system]
        dsn = self.dsns[system]
        schema = ""
        mode = f"{system}_starts" if starts else system
        spec: dict[str, Any] = {
            "mode": mode,
            "n": n,
            "concurrency": c,
            "dsn": dsn,
            "workload": workload,
            "starters": 16,
        }
        if system == "flows":
            schema = fresh_schema("tp")
            asyncio.run(_migrate(dsn, schema))
            spec.update(schema=schema, starters=16)
        elif system == "dbos":
            spec["url"] = sqlalchemy_url(dsn)
        before = xact_commits(self.server, db)
        try:
            result = run_spec(spec)
        finally:
            after = xact_commits(self.server, db)
            if schema:
                asyncio.run(drop_schema(dsn, schema))
        result["xacts"] = after - before - int(result.get("own_queries", 0))
        return result


def throughput(
    systems: Systems,
    peers: list[str],
    concurrencies: list[int],
    n_for: Callable[[int], int],
    rounds: int,
) -> list[Row]:
    peers = list(peers)
    log("throughput: baseline rounds (N=0) for transaction counts")
    base = {"flows": systems.round("flows", 0, 8)["xacts"]}
    for peer in list(peers):
        try:
            base[peer] = systems.round(peer, 0, 8)["xacts"]
        except Exception as exc:
            log(f"peer {peer} failed its baseline round, dropped: {exc!r}")
            peers.remove(peer)
    names = ["flows", *peers]
    rows: list[Row] = []
    for c in concurrencies:
        n = n_for(c)
        got: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
        for r in range(rounds):
            for s in names:  # interleaved: ours, peer, ours, peer, ...
                res = systems.round(s, n, c)
                res["rate"] = n / res["elapsed"]
                res["xact_per_wf"] = (res["xacts"] - base[s]) / n
                got[s].append(res)
                log(
                    f"  c={c} round {r + 1} {s}: {res['rate']:,.0f} wf/s, "
                    f"{res['xact_per_wf']:.2f} xact/wf"
                )
        ours = median([x["rate"] for x in got["flows"]])
        ours_x = median([x["xact_per_wf"] for x in got["flows"]])
        case = f"c={c} N={n}, median of {rounds}"
        for peer in peers or [""]:
            pv = median([x["rate"] for x in got[peer]]) if peer else None
            rows.append(
                Row(
                    "a throughput",
                    "postgres",
                    case,
                    "workflows/s",
                    ours,
                    "wf/s",
                    peer=peer,
                    peer_value=pv,
                    note="rounds: " + ", ".join(f"{x['rate']:.0f}" for x in got["flows"]),
                )
            )
        for peer in peers or [""]:
            pv = median([x["xact_per_wf"] for x in got[peer]]) if peer else None
            rows.append(
                Row(
                    "a throughput",
                    "postgres",
                    case,
                    "transactions/workflow",
                    ours_x,
                    "xact",
                    peer=peer,
                    peer_value=pv,
                    goal="<= 5",
                    met=ours_x <= 5.0,
                    note=f"baseline (N=0) {base['flows']} xact subtracted",
                )
            )
        ours_cpu = median([1000 * x.get("cpu", 0.0) / n for x in got["flows"]])
        for peer in peers or [""]:
            pv = median([1000 * x.get("cpu", 0.0) / n for x in got[peer]]) if peer else None
            rows.append(
                Row(
                    "a throughput",
                    "postgres",
                    case,
                    "client CPU/workflow",
                    ours_cpu,
                    "ms",
                    peer=peer,
                    peer_value=pv,
                    note="process CPU time of the round's process (starts, worker, driver)",
                )
            )
        last = got["flows"][-1]
        calls = last.get("calls", {})
        stmts = sum(calls.values()) / n if n else 0.0
        ranked = sorted(calls.items(), key=lambda kv: -kv[1])
        per_wf = ", ".join(f"{k} {v / n:.2f}" for k, v in ranked)
        rows[-1].extra["worker_stats"] = last.get("stats", {})
        rows[-1].extra["store_calls"] = calls
        rows.append(
            Row(
                "a throughput",
                "postgres",
                case,
                "store statements/workflow",
                stmts,
                "stmt",
                goal="<= 5",
                met=stmts <= 5.0,
                note=f"one transaction each; last round: {per_wf}. The rest of "
                "xact_commit is the LISTEN backend reading notifications",
            )
        )
    return rows


def io_bound(systems: Systems, peers: list[str], n: int, c: int) -> list[Row]:
    """(i) ``n`` workflows of 3 activities that each await 50 ms, ``c`` in flight, one
    round per system, against the ideal time ``n * 3 * 50 ms / c``."""
    from .apps import IO_DELAY

    ideal = n * 3 * IO_DELAY / c
    rows: list[Row] = []
    got: dict[str, float] = {}
    for s in ["flows", *peers]:
        try:
            res = systems.round(s, n, c, workload="io")
        except Exception as exc:
            log(f"  (i) {s} failed: {exc!r}")
            continue
        got[s] = res["elapsed"]
        log(
            f"  (i) {s}: {res['elapsed']:.1f} s, {n / res['elapsed']:,.0f} wf/s "
            f"(ideal {ideal:.1f} s)"
        )
    if "flows" not in got:
        raise RuntimeError("(i) the Flows round failed")
    case = f"N={n:,}, 3 x 50 ms activities, c={c}"
    for peer in [p for p in peers if p in got] or [""]:
        pv = n / got[peer] if peer else None
        rows.append(
            Row(
                "i io-bound",
                "postgres",
                case,
                "workflows/s",
                n / got["flows"],
                "wf/s",
                peer=peer,
                peer_value=pv,
                note=f"ideal {n / ideal:,.0f} wf/s",
            )
        )
    for s, elapsed in got.items():
        rows.append(
            Row(
                "i io-bound",
                "postgres",
                case,
                f"time / ideal ({s})",
                elapsed / ideal,
                "x",
                note=f"{elapsed:.1f} s vs ideal {ideal:.1f} s",
            )
        )
    return rows


def starts_alone(systems: Systems, peers: list[str], n: int) -> list[Row]:
    """(j) starts per second with no worker running, 16 start calls in flight."""
    got: dict[str, float] = {}
    for s in ["flows", *peers]:
        try:
            res = systems.round(s, n, 16, starts=True)
        except Exception as exc:
            log(f"  (j) {s} failed: {exc!r}")
            continue
        got[s] = n / res["elapsed"]
        log(f"  (j) {s}: {got[s]:,.0f} starts/s")
    if "flows" not in got:
        raise RuntimeError("(j) the Flows round failed")
    return [
        Row(
            "j starts",
            "postgres",
            f"N={n:,}, 16 start calls in flight, no worker",
            "starts/s",
            got["flows"],
            "starts/s",
            peer=peer,
            peer_value=got[peer] if peer else None,
        )
        for peer in [p for p in peers if p in got] or [""]
    ]


def multi_process(
    server: PgServer,
    dsn: str,
    n: int,
    procs: list[int],
    concurrency: int,
    profile: Path | None = None,
) -> list[Row]:
    rows: list[Row] = []
    rates: dict[int, float] = {}
    for k in procs:
        schema = fresh_schema("mp")
        asyncio.run(_prefill(dsn, schema, n))
        spec = {"mode": "worker", "dsn": dsn, "schema": schema, "concurrency": concurrency}
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.runner", json.dumps(spec)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(k)
        ]
        spy = None
        try:
            for w in workers:
                assert w.stdout is not None
                if w.stdout.readline().strip() != "ready":
                    raise RuntimeError("worker process did not start")
            if profile is not None and k == procs[0]:
                spy = _start_pyspy(workers[0].pid, profile)
            t0 = time.perf_counter()
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("go\n")
                w.stdin.flush()
            polls = _wait_completed(dsn, schema, n, timeout=600)
            elapsed = time.perf_counter() - t0
        finally:
            for w in workers:
                if w.stdin is not None and not w.stdin.closed:
                    w.stdin.write("stop\n")
                    w.stdin.close()
            for w in workers:
                try:
                    w.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    w.kill()
            if spy is not None:
                _finish_pyspy(spy)
            asyncio.run(drop_schema(dsn, schema))
        rates[k] = n / elapsed
        rows.append(
            Row(
                "g processes",
                "postgres",
                f"{k} worker process(es) x c={concurrency}, N={n} prefilled",
                "workflows/s",
                rates[k],
                "wf/s",
                note=f"{polls} completion polls",
            )
        )
        log(f"  {k} process(es): {rates[k]:,.0f} wf/s")
    if len(procs) > 1:
        lo, hi = procs[0], procs[-1]
        rows.append(
            Row(
                "g processes",
                "postgres",
                f"{hi} vs {lo} processes",
                "speed-up",
                rates[hi] / rates[lo],
                "x",
                note=f"{os.cpu_count()} CPUs shared with the PostgreSQL server",
            )
        )
    return rows


async def _prefill(dsn: str, schema: str, n: int) -> None:
    import flows_core as flows
    from flows_pg import PostgresStore

    async with PostgresStore(dsn, schema=schema) as store:
        await store.migrate()
        await _fill_pg(store, flows.Engine(store), n)


def _wait_completed(dsn: str, schema: str, n: int, timeout: float) -> int:
    import psycopg
    from psycopg import sql

    q = sql.SQL("SELECT count(*) FROM {}.workflows WHERE status = 'completed'").format(
        sql.Identifier(schema)
    )
    deadline = time.monotonic() + timeout
    polls = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            polls += 1
            row = conn.execute(q).fetchone()
            if row is not None and row[0] >= n:
                return polls
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {row and row[0]} of {n} workflows completed")
            time.sleep(0.02)


def _start_pyspy(pid: int, out: Path) -> subprocess.Popen[str] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("py-spy not found (pip install py-spy): no profile")
        return None
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let it attach
    return spy


def _finish_pyspy(spy: subprocess.Popen[str]) -> None:
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
