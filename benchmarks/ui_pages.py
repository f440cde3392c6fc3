"""Time the dashboard's pages against a large backlog on PostgreSQL.

``python -m benchmarks.ui_pages [--rows 1000000] [--requests 20] [--out DIR]``

Starts an embedded PostgreSQL 18 in a temporary directory (stopped and deleted at the
end), migrates a fresh schema, runs a few hundred real workflows through an Engine and a
Worker (so a workflow page has a real history), then inserts ``--rows`` workflow rows
with one ``INSERT ... SELECT FROM generate_series`` straight into ``workflows`` (20
tenants, 5 names, mostly completed with some running, failed, cancelled and parked,
created over the last 30 days; no history rows: the listing does not read them), runs
ANALYZE, and requests each page of ``flows_ui.create_app`` in-process through
``httpx.ASGITransport`` (from 127.0.0.1, no token). Deep pages are reached by following
the "next" links once; then each page is requested ``--requests`` times. Prints a
markdown table (median and p95, milliseconds) and writes it, with the setup, to
``benchmarks/results/ui-pages-<date>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx

import flows_core as flows
from flows_core.store import ListQuery

TENANTS = 20
NAMES = ("checkout", "invoice", "shipment", "refund", "signup")
ENGINE_WORKFLOWS = 300
NEXT_PAGE = re.compile(r'href="([^"]+)" rel="next"')
LISTED_ID = re.compile(r'class="mono" href="[^"]*">([^<]+)</a>')

# Status by g % 100: 85 completed, 7 failed, 5 running, 2 cancelled, 1 parked.
BACKLOG_SQL = """
INSERT INTO {schema}.workflows
    (shard_key, tenant_id, workflow_id, name, version, status, input, output, error,
     created_at, updated_at, history_length, next_seq)
SELECT
    n.name || '-shard-' || (g %% 9), t.tenant, 'wf-' || lpad(g::text, 8, '0'), n.name, 1,
    s.status, '{{"order": 1}}'::json,
    CASE WHEN s.status = 'completed' THEN '"ok"'::json END,
    CASE WHEN s.status IN ('failed', 'parked')
         THEN '{{"type": "RuntimeError", "message": "synthetic failure"}}'::json END,
    c.created_at, c.created_at + interval '2 seconds', 6, 7
FROM (SELECT g, %(now)s::timestamptz - interval '30 days' * random() - interval '1 hour'
      AS created_at FROM generate_series(1, %(rows)s) AS g) AS c
CROSS JOIN LATERAL (SELECT 'tenant-' || lpad((g %% {tenants})::text, 2, '0') AS tenant) t
CROSS JOIN LATERAL (SELECT (%(names)s::text[])[1 + (g / 7) %% {names}] AS name) n
CROSS JOIN LATERAL (SELECT CASE
    WHEN g %% 100 < 85 THEN 'completed' WHEN g %% 100 < 92 THEN 'failed'
    WHEN g %% 100 < 97 THEN 'running' WHEN g %% 100 < 99 THEN 'cancelled'
    ELSE 'parked' END AS status) s
"""


@flows.activity("bench-step")
async def bench_step(n: int) -> int:
    return n + 1


@flows.workflow("bench-order")
async def bench_order(ctx: flows.WorkflowContext, n: int) -> int:
    for _ in range(5):
        n = await ctx.execute(bench_step, n)
    return n


@dataclass
class Timing:
    page: str
    url: str
    median_ms: float
    p95_ms: float
    rows: int
    size_kb: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def run_engine_workflows(store: object, count: int) -> str:
    """Run ``count`` real workflows to completion; the id of one of them."""
    worker = flows.Worker(
        store,  # type: ignore[arg-type]
        workflows=[bench_order],
        activities=[bench_step],
        concurrency=32,
        poll_interval=0.05,
        worker_id="ui-bench",
    )
    task = asyncio.ensure_future(worker.run())
    engine = flows.Engine(store, workflows=[bench_order])  # type: ignore[arg-type]
    try:
        runs = [
            await engine.start(bench_order, n, workflow_id=f"real-{n:04d}") for n in range(count)
        ]
        for run in runs:
            await run.result(timeout=120)
    finally:
        await worker.stop(grace_period=2.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return runs[count // 2].workflow_id


async def insert_backlog(dsn: str, schema: str, rows: int) -> float:
    import psycopg
    from psycopg import sql

    ident = sql.Identifier(schema).as_string(None)
    statement = BACKLOG_SQL.format(schema=ident, tenants=TENANTS, names=len(NAMES))
    began = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(
            statement,
            {"rows": rows, "names": list(NAMES), "now": datetime.now(UTC)},
        )
        await conn.execute(sql.SQL("VACUUM ANALYZE {}.workflows").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("ANALYZE {}.history").format(sql.Identifier(schema)))
    return time.perf_counter() - began


async def follow(client: httpx.AsyncClient, url: str, pages: int) -> tuple[str, float]:
    """The URL of page ``pages`` (1 = ``url``) reached by the next links, and the
    seconds the walk took."""
    began = time.perf_counter()
    for _ in range(pages - 1):
        page = await client.get(url)
        page.raise_for_status()
        found = NEXT_PAGE.search(page.text)
        if found is None:
            raise RuntimeError(f"the listing ended before page {pages} at {url}")
        url = html.unescape(found.group(1))
    return url, time.perf_counter() - began


async def time_page(client: httpx.AsyncClient, label: str, url: str, requests: int) -> Timing:
    warm = await client.get(url)
    if warm.status_code != 200:
        raise RuntimeError(f"{label}: {url} answered {warm.status_code}: {warm.text[:300]}")
    samples = []
    for _ in range(requests):
        began = time.perf_counter()
        response = await client.get(url)
        samples.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    timing = Timing(
        label,
        url if len(url) < 70 else url[:67] + "...",
        statistics.median(samples),
        p95(samples),
        len(LISTED_ID.findall(warm.text)),
        len(warm.content) / 1024,
    )
    log(f"  {label}: median {timing.median_ms:.1f} ms, p95 {timing.p95_ms:.1f} ms")
    return timing


async def time_call(label: str, call: Callable[[], Awaitable[object]], requests: int) -> Timing:
    await call()
    samples = []
    for _ in range(requests):
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    timing = Timing(label, "(direct call)", statistics.median(samples), p95(samples), 0, 0)
    log(f"  {label}: median {timing.median_ms:.1f} ms, p95 {timing.p95_ms:.1f} ms")
    return timing


async def bench(dsn: str, rows: int, requests: int) -> tuple[list[Timing], dict[str, str]]:
    import psycopg

    from flows_pg import PostgresStore
    from flows_ui import create_app

    setup: dict[str, str] = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SHOW server_version")
        found = await cur.fetchone()
        setup["PostgreSQL version"] = str(found[0]) if found else "?"
    schema = "uibench"
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    try:
        await store.migrate()
        began = time.perf_counter()
        real_id = await run_engine_workflows(store, ENGINE_WORKFLOWS)
        setup["engine workflows"] = (
            f"{ENGINE_WORKFLOWS} x 5 activities, run by a Worker in "
            f"{time.perf_counter() - began:.1f} s"
        )
        log(f"{ENGINE_WORKFLOWS} engine workflows done; inserting {rows:,} rows")
        seconds = await insert_backlog(dsn, schema, rows)
        setup["backlog insert + VACUUM ANALYZE"] = f"{seconds:.1f} s"
        log(f"backlog inserted in {seconds:.1f} s")

        engine = flows.Engine(store, workflows=[bench_order])
        app = create_app(engine)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        timings: list[Timing] = []
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1:8080", timeout=120
        ) as client:
            middle = f"wf-{rows // 2:08d}"
            wide_digits = max(2, len(str(rows // 100)) - 1)  # about 1% of the rows
            wide, narrow = middle[:-wide_digits], middle[:-2]
            day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
            page10, walk10 = await follow(client, "/workflows", 10)
            page200, walk200 = await follow(client, "/workflows", 200)
            setup["walk to page 10 / 200 (once, following next links)"] = (
                f"{walk10:.1f} s / {walk200:.1f} s"
            )
            status200, _ = await follow(client, "/workflows?status=completed", 200)
            pages = [
                ("workflows, first page", "/workflows"),
                ("workflows, page 10 (cursor)", page10),
                ("workflows, page 200 (cursor)", page200),
                ("status=completed, page 200", status200),
                ("status=running", "/workflows?status=running"),
                ("status=parked", "/workflows?status=parked"),
                ("name=invoice", "/workflows?name=invoice"),
                ("tenant=tenant-07", "/workflows?tenant=tenant-07"),
                ("tenant + status=failed", "/workflows?tenant=tenant-07&status=failed"),
                ("tenant + name", "/workflows?tenant=tenant-07&name=refund"),
                (f"id prefix {wide} ({10**wide_digits:,} rows)", f"/workflows?id={wide}"),
                (f"id prefix {narrow} (100 rows)", f"/workflows?id={narrow}"),
                (
                    "time range (1 day, 10 days ago)",
                    "/workflows?"
                    + urlencode(
                        {
                            "from": (day - timedelta(days=1)).isoformat(),
                            "to": day.isoformat(),
                        }
                    ),
                ),
                ("dead letters", "/dead-letters"),
                ("queues", "/queues"),
                ("workflow page (5 steps)", "/workflow?" + urlencode({"id": real_id})),
            ]
            for label, url in pages:
                timings.append(await time_page(client, label, url, requests))
        # What the pages spend in the store, without the app: stats() is called by every
        # listing page and the queues page; a listing's own query is the rest.
        timings.append(await time_call("store.stats() alone", store.stats, requests))
        first_query = ListQuery(tenant_id=None, limit=51)
        timings.append(
            await time_call(
                "store.list_workflows(), first page, alone",
                lambda: store.list_workflows(first_query),
                requests,
            )
        )
    finally:
        await store.close()
    return timings, setup


def table(timings: list[Timing], requests: int) -> str:
    lines = [
        "| page | median ms | p95 ms | rows shown | KiB | URL |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines[0] = lines[0].replace("median ms", f"median ms (N={requests})")
    for t in timings:
        lines.append(
            f"| {t.page} | {t.median_ms:.1f} | {t.p95_ms:.1f} | {t.rows} | {t.size_kb:.0f} "
            f"| `{t.url}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="backlog rows to insert")
    parser.add_argument("--requests", type=int, default=20, help="requests per page")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.rows < 20_000:
        parser.error("--rows must be at least 20000 (200 pages of 50, plus filters)")

    from flows_pg import embedded

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flows-uibench-") as tmp:
        data_dir = Path(tmp) / "data"
        dsn = embedded.ensure_started(data_dir)
        try:
            timings, setup = asyncio.run(bench(dsn, args.rows, args.requests))
        finally:
            embedded.stop(data_dir, delete=True)
    total = time.perf_counter() - began
    rendered = table(timings, args.requests)
    print(rendered)
    commit = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    setup_lines = "\n".join(f"- {k}: {v}" for k, v in setup.items())
    report = f"""# Dashboard pages on a {args.rows:,}-row backlog

`python -m benchmarks.ui_pages --rows {args.rows}` on commit {commit},
{datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}.

Setup:
- backlog: {args.rows:,} rows inserted with `INSERT ... SELECT generate_series` into
  `workflows` ({TENANTS} tenants, names {", ".join(NAMES)};
  85% completed, 7% failed, 5% running, 2% cancelled, 1% parked;
  created_at uniform over the last 30 days),
  then VACUUM ANALYZE; no history rows for them
{setup_lines}
- server: embedded PostgreSQL, default settings, in a temp dir (Unix socket)
- app: `flows_ui.create_app(Engine(store))`, page size 50, requested in-process through
  `httpx.ASGITransport` from 127.0.0.1 (no token); each URL requested once to warm up,
  then {args.requests} times one after the other
- machine: 2 shared cores (other agents running meanwhile), Python
  {platform.python_version()}; whole run {total:.0f} s

Every listing page (and the queues page) also calls `store.stats()`, which counts the
workflows by status over the whole table.

{rendered}
"""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ui-pages-{datetime.now(UTC).strftime('%Y%m%d')}.md"
    path.write_text(report)
    log(f"written {path} ({total:.0f} s in all)")


if __name__ == "__main__":
    main()
