"""The `flows` command line against a real PostgreSQL: commands work, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest_pg import fresh_schema

pytestmark = pytest.mark.pg


def flows(
    dsn: str | None, *args: str, schema: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows_cli"]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    if schema is not None:
        cmd += ["--schema", schema]
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DSN"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120, env=env)


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0], lines[0]


def test_commands_end_to_end(pg_dsn: str) -> None:
    schema = fresh_schema("cli")
    assert flows(pg_dsn, "migrate", schema=schema).returncode == 0
    again = flows(pg_dsn, "migrate", schema=schema)
    assert again.returncode == 0, again.stderr
    started = flows(
        pg_dsn,
        "start",
        "cli-wf",
        "--input",
        '{"a": 1}',
        "--id",
        "cli-1",
        "--tenant",
        "acme",
        schema=schema,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "cli-1"
    sig = flows(
        pg_dsn, "signal", "cli-1", "go", "--payload", "[1,2]", "--tenant", "acme", schema=schema
    )
    assert sig.returncode == 0, sig.stderr
    shown = flows(pg_dsn, "show", "cli-1", "--tenant", "acme", schema=schema)
    assert shown.returncode == 0, shown.stderr
    assert "status    running" in shown.stdout
    assert "started cli-wf v1" in shown.stdout
    listed = flows(pg_dsn, "list", "--tenant", "acme", "--status", "running", schema=schema)
    assert "cli-1" in listed.stdout
    assert "cli-1" not in flows(pg_dsn, "list", "--tenant", "other", schema=schema).stdout
    assert "cli-1" in flows(pg_dsn, "list", "--all-tenants", schema=schema).stdout
    cancel = flows(pg_dsn, "cancel", "cli-1", "--tenant", "acme", schema=schema)
    assert "cancellation requested" in cancel.stdout
    one_line_error(flows(pg_dsn, "show", "cli-1", "--tenant", "other", schema=schema), "not found")


def test_errors_are_one_line(pg_dsn: str) -> None:
    schema = fresh_schema("cli")
    one_line_error(flows("postgresql://nobody@127.0.0.1:1/none", "list"), "cannot connect")
    one_line_error(flows(pg_dsn, "list", schema=schema), "flows migrate")
    assert flows(pg_dsn, "migrate", schema=schema).returncode == 0
    one_line_error(flows(pg_dsn, "show", "no-such-id", schema=schema), "not found")
    one_line_error(flows(pg_dsn, "start", "x", "--input", "{bad", schema=schema), "not valid JSON")
    one_line_error(flows(pg_dsn, "list", schema="x;drop table"), "not a valid name")
    one_line_error(
        flows(pg_dsn, "worker", "--app", "no_such_module:defs", schema=schema), "cannot import"
    )


def test_demo_on_given_dsn(pg_dsn: str) -> None:
    schema = fresh_schema("demo")
    result = flows(pg_dsn, "demo", "--ship-delay", "0.2", schema=schema)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "started order-workflow",
        "payment charged",
        "waiting for warehouse",
        "signal 'warehouse-ready' sent",
        "shipped",
        "history timeline",
    ):
        assert step in out, out
    assert "completed output=" in out
    wf_id = out.split("started order-workflow ", 1)[1].split()[0]
    shown = flows(pg_dsn, "show", wf_id, schema=schema)
    assert "status    completed" in shown.stdout
    assert json.loads(shown.stdout.split("output    ", 1)[1].splitlines()[0])["status"] == "shipped"
