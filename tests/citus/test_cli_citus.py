"""The `flows` command line on Citus: `migrate` finds Citus by itself (or --citus, with
--shards/--sharding), and every other command then uses the Citus store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from conftest_pg import fresh_schema
from psycopg import sql

pytestmark = pytest.mark.citus


def flows(dsn: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows_cli", "--dsn", dsn, "--schema", schema, *args]
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DSN"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_on_citus(citus_dsn: str) -> None:
    schema = fresh_schema("ccli")
    try:
        out = ok(flows(citus_dsn, schema, "migrate", "--shards", "8", "--sharding", "tenant"))
        assert "8 shard keys by tenant" in out
        assert "8 shard keys by tenant" in ok(flows(citus_dsn, schema, "migrate"))
        refused = flows(citus_dsn, schema, "migrate", "--no-citus", "--shards", "8")
        assert refused.returncode == 2
        assert (
            refused.stderr.strip()
            == "error: --shards and --sharding apply to Citus only (flows migrate --citus)"
        )
        started = ok(
            flows(
                citus_dsn,
                schema,
                "start",
                "cli-wf",
                "--input",
                "1",
                "--id",
                "c1",
                "--tenant",
                "acme",
                "--force",
            )
        )
        assert started.strip() == "c1"
        ok(flows(citus_dsn, schema, "signal", "c1", "go", "--payload", "2", "--tenant", "acme"))
        shown = ok(flows(citus_dsn, schema, "show", "c1", "--tenant", "acme"))
        assert "running" in shown
        listed = ok(flows(citus_dsn, schema, "list", "--tenant", "acme"))
        assert "c1" in listed
        stats = json.loads(ok(flows(citus_dsn, schema, "stats", "--json")))
        assert stats["workflows"] == {"running": 1}
        ok(flows(citus_dsn, schema, "cancel", "c1", "--tenant", "acme"))
        ok(flows(citus_dsn, schema, "start", "cli-wf", "--input", "1", "--id", "c2"))
        terminated = ok(flows(citus_dsn, schema, "terminate", "c2", "--reason", "done"))
        assert terminated.strip() == "c2: terminated; its pending steps were dropped"
        with psycopg.connect(citus_dsn) as conn:
            distributed = conn.execute(
                "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE %s",
                (f"{schema}.%",),
            ).fetchone()
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = %s"
                " AND tablename <> 'schema_migrations'",
                (schema,),
            ).fetchone()
        assert distributed == tables, "flows migrate --citus distributed every table"
    finally:
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
