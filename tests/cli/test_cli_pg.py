"""The `flows` command line against a real PostgreSQL: commands work, errors are one line,
starts and signals are checked against the definitions of --app, and names no worker
serves are refused without --app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_pg import fresh_schema

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parents[2]
APP = "tests.cli.app_for_tests:definitions"


def flows(
    dsn: str | None, *args: str, schema: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows_cli"]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    if schema is not None:
        cmd += ["--schema", schema]
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DSN"}
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


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
        "--force",
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
    one_line_error(flows(pg_dsn, "start", "no-such-wf", schema=schema), "unknown workflow")
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


def test_start_and_signal_are_checked_against_the_app(pg_dsn: str) -> None:
    schema = fresh_schema("cliapp")
    ok(flows(pg_dsn, "migrate", schema=schema))
    bad_input = flows(
        pg_dsn, "start", "cli-greeting", "--app", APP, "--input", '{"nom": "ada"}', schema=schema
    )
    one_line_error(bad_input, "input of workflow 'cli-greeting' does not match GreetIn")
    one_line_error(
        flows(pg_dsn, "start", "cli-greting", "--app", APP, "--input", "{}", schema=schema),
        "has no workflow 'cli-greting' (it has: cli-greeting)",
    )
    started = ok(
        flows(
            pg_dsn,
            "start",
            "cli-greeting",
            "--app",
            APP,
            "--input",
            '{"name": "ada"}',
            "--id",
            "g-1",
            schema=schema,
        )
    )
    assert started.strip() == "g-1"
    # Before any worker ran it, replaying its history already reaches the signal wait.
    early = flows(
        pg_dsn, "signal", "g-1", "approval", "--app", APP, "--payload", "{}", schema=schema
    )
    one_line_error(early, "--payload does not match Approval, which g-1 expects")
    # A signal it does not wait for is buffered: sent, with a note that it was not checked.
    other = flows(pg_dsn, "signal", "g-1", "other", "--app", APP, "--payload", "1", schema=schema)
    assert other.returncode == 0, other.stderr
    assert "the payload was not checked" in other.stderr
    assert "not waiting for signal 'other'" in other.stderr


def test_signal_payload_checked_while_the_workflow_waits(pg_dsn: str) -> None:
    schema = fresh_schema("clisig")
    ok(flows(pg_dsn, "migrate", schema=schema))
    ok(
        flows(
            pg_dsn,
            "start",
            "cli-greeting",
            "--app",
            APP,
            "--input",
            '{"name": "bo"}',
            "--id",
            "g-2",
            schema=schema,
        )
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows_cli",
            "--dsn",
            pg_dsn,
            "--schema",
            schema,
            "worker",
            "--app",
            APP,
            "--poll-interval",
            "0.2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert "serving cli-greeting v1" in worker.stdout.readline()
        shown = ""
        for _ in range(100):
            shown = ok(flows(pg_dsn, "show", "g-2", schema=schema))
            if "waiting for signal 'approval'" in shown:
                break
            time.sleep(0.1)
        assert "waiting for signal 'approval'" in shown, shown
        wrong = flows(
            pg_dsn,
            "signal",
            "g-2",
            "approval",
            "--app",
            APP,
            "--payload",
            '{"approved": "yes"}',
            schema=schema,
        )
        one_line_error(wrong, "--payload does not match Approval, which g-2 expects")
        assert "status    running" in ok(flows(pg_dsn, "show", "g-2", schema=schema))
        sent = ok(
            flows(
                pg_dsn,
                "signal",
                "g-2",
                "approval",
                "--app",
                APP,
                "--payload",
                '{"approved": true, "by": "cy"}',
                schema=schema,
            )
        )
        assert sent.strip() == (
            """signal 'approval' sent to g-2 with payload {"approved":true,"by":"cy"}"""
        )
        for _ in range(100):
            shown = ok(flows(pg_dsn, "show", "g-2", schema=schema))
            if "status    completed" in shown:
                break
            time.sleep(0.1)
        assert 'output    "hello bo x1, approved by cy"' in shown, shown
        late = flows(
            pg_dsn, "signal", "g-2", "approval", "--app", APP, "--payload", "{}", schema=schema
        )
        one_line_error(late, "g-2")
        assert "completed" in late.stderr
        # The worker registered cli-greeting v1: without --app the name is known now.
        assert ok(
            flows(pg_dsn, "start", "cli-greeting", "--input", '{"name": "di"}', schema=schema)
        ).strip()
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_terminate(pg_dsn: str) -> None:
    schema = fresh_schema("cliterm")
    ok(flows(pg_dsn, "migrate", schema=schema))
    ok(
        flows(
            pg_dsn,
            "start",
            "cli-greeting",
            "--app",
            APP,
            "--input",
            '{"name": "ed"}',
            "--id",
            "t-1",
            schema=schema,
        )
    )
    out = ok(flows(pg_dsn, "terminate", "t-1", "--reason", "stuck", schema=schema))
    assert out.strip() == "t-1: terminated; its pending steps were dropped"
    shown = ok(flows(pg_dsn, "show", "t-1", schema=schema))
    assert "status    terminated" in shown
    assert "terminated: stuck" in shown
    again = ok(flows(pg_dsn, "terminate", "t-1", schema=schema))
    assert again.strip() == "t-1: workflow already finished; nothing to terminate"
    one_line_error(flows(pg_dsn, "terminate", "no-such", schema=schema), "not found")


def test_list_aligns_long_ids(pg_dsn: str) -> None:
    schema = fresh_schema("clilist")
    ok(flows(pg_dsn, "migrate", schema=schema))
    long_id = "order-" + "x" * 50
    for wf_id in ("short", long_id):
        ok(
            flows(
                pg_dsn,
                "start",
                "cli-greeting",
                "--app",
                APP,
                "--input",
                '{"name": "f"}',
                "--id",
                wf_id,
                schema=schema,
            )
        )
    lines = ok(flows(pg_dsn, "list", schema=schema)).splitlines()
    assert len(lines) == 3
    starts = {line.index("cli-greeting v1") for line in lines[1:]}
    assert starts == {lines[0].index("name")}, lines
