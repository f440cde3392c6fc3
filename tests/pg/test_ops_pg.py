"""Retention and stats on PostgreSQL, checked on the tables themselves, and their CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest
from conftest_pg import drop_pg_store, fresh_schema, make_pg_store
from psycopg import sql

import flows_core as flows
from flows_cli._commands import parse_age
from flows_pg import PostgresStore
from tests.contract.test_contract_engine import result, running, worker

pytestmark = pytest.mark.pg

TABLES = ("workflows", "history", "inbox", "tasks")


async def table_counts(store: PostgresStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(store.pool.conninfo, autocommit=True) as c:
        for table in TABLES:
            cur = await c.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(store.schema), sql.Identifier(table)
                )
            )
            row = await cur.fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


@flows.activity("pg-ops-double")
async def double(x: int) -> int:
    return 2 * x


@flows.workflow("pg-ops-short")
async def short(ctx: flows.WorkflowContext, x: int) -> int:
    y = await ctx.execute(double, x)
    if x % 10 == 0:
        # some take a signal too (inbox rows, more history)
        return y + await ctx.wait_for_signal("add", int)
    return y


async def test_tables_do_not_grow_without_bound(pg_dsn: str) -> None:
    store = await make_pg_store(pg_dsn)
    try:
        engine = flows.Engine(store)
        w = worker(store, workflows=[short], activities=[double], concurrency=20)
        peaks: list[dict[str, int]] = []
        async with running(w):
            for _ in range(5):
                runs = [await engine.start(short, i, tenant_id=f"t{i % 4}") for i in range(200)]
                for i, run in enumerate(runs):
                    if i % 10 == 0:
                        await engine.signal(run.workflow_id, "add", 1, tenant_id=run.tenant_id)
                outs = [await result(run) for run in runs]
                assert outs == [2 * i + (1 if i % 10 == 0 else 0) for i in range(200)]
                peaks.append(await table_counts(store))
                await asyncio.sleep(0.01)
                assert await engine.prune(timedelta(0), batch=50) == 200
                assert await table_counts(store) == dict.fromkeys(TABLES, 0)
        # every round holds exactly one round's rows at its peak: no growth across rounds
        assert all(p == peaks[0] for p in peaks), peaks
        assert peaks[0]["workflows"] == 200
        assert peaks[0]["tasks"] == 0
    finally:
        await drop_pg_store(store)


def cli(dsn: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows_cli", "--dsn", dsn, "--schema", schema, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def test_cli_prune_and_stats(pg_dsn: str) -> None:
    schema = fresh_schema("ops")
    store = await make_pg_store(pg_dsn, schema)
    try:
        engine = flows.Engine(store)
        async with running(worker(store, workflows=[short], activities=[double])):
            runs = [await engine.start(short, i) for i in range(1, 6)]
            for run in runs:
                await result(run)
        await engine.start(short, 7)  # running, waits for a worker
        stats = await asyncio.to_thread(cli, pg_dsn, schema, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        got = json.loads(stats.stdout)
        assert got["workflows"] == {"completed": 5, "running": 1}
        assert sum(got["queue_depth"].values()) == 1
        assert got["dead_letters"] == 0
        text = await asyncio.to_thread(cli, pg_dsn, schema, "stats")
        assert "dead letters  0" in text.stdout
        kept = await asyncio.to_thread(cli, pg_dsn, schema, "prune", "--older-than", "30d")
        assert kept.returncode == 0, kept.stderr
        assert "pruned 0" in kept.stdout, kept.stderr
        pruned = await asyncio.to_thread(
            cli, pg_dsn, schema, "prune", "--older-than", "0s", "--batch", "2"
        )
        assert pruned.returncode == 0, pruned.stderr
        assert "pruned 5" in pruned.stdout, pruned.stderr
        assert (await store.stats()).workflows == {"running": 1}
        bad = await asyncio.to_thread(cli, pg_dsn, schema, "prune", "--older-than", "soon")
        assert bad.returncode != 0
        assert "Traceback" not in bad.stderr
    finally:
        await drop_pg_store(store)


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("45") == timedelta(seconds=45)
    assert parse_age("2w") == timedelta(weeks=2)
