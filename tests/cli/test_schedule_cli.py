"""``flows schedule ...`` against a real PostgreSQL: create (checked against --app),
show, list, pause, resume, trigger (a `flows worker` fires it), delete; bad input is a
one-line error naming the problem."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest_pg import fresh_schema

from tests.cli.test_cli_pg import APP, REPO, flows, ok, one_line_error

pytestmark = pytest.mark.pg


def test_schedule_commands_end_to_end(pg_dsn: str) -> None:
    schema = fresh_schema("clisched")
    ok(flows(pg_dsn, "migrate", schema=schema))
    created = ok(
        flows(
            pg_dsn,
            *("schedule", "create", "nightly", "cli-greeting", "--app", APP),
            *("--cron", "0 3 * * *", "--timezone", "Europe/Paris", "--tenant", "acme"),
            *("--input", '{"name": "Ada"}', "--overlap", "allow_all"),
            schema=schema,
        )
    )
    assert "schedule  nightly  (tenant acme)" in created
    assert "when      cron '0 3 * * *' Europe/Paris" in created
    assert "overlap   allow_all" in created
    # 03:00 in Paris is 01:00 or 02:00 UTC
    fire_times = [ln.strip() for ln in created.splitlines() if ln.startswith("  20")]
    assert len(fire_times) == 5
    assert all(t.endswith(("01:00:00", "02:00:00")) for t in fire_times)

    listed = ok(flows(pg_dsn, "schedule", "list", "--tenant", "acme", schema=schema))
    assert "nightly" in listed
    assert "cron '0 3 * * *' Europe/Paris" in listed
    assert "nightly" not in ok(flows(pg_dsn, "schedule", "list", schema=schema))  # other tenant
    assert "nightly" in ok(flows(pg_dsn, "schedule", "list", "--all-tenants", schema=schema))

    ok(flows(pg_dsn, "schedule", "pause", "nightly", "--tenant", "acme", schema=schema))
    assert "paused" in ok(flows(pg_dsn, "schedule", "list", "--tenant", "acme", schema=schema))
    shown = ok(flows(pg_dsn, "schedule", "show", "nightly", "--tenant", "acme", schema=schema))
    assert "state     paused" in shown
    resumed = ok(flows(pg_dsn, "schedule", "resume", "nightly", "--tenant", "acme", schema=schema))
    assert "resumed; next fire 20" in resumed

    triggered = ok(
        flows(pg_dsn, "schedule", "trigger", "nightly", "--tenant", "acme", schema=schema)
    )
    workflow_id = triggered.strip()
    assert workflow_id.startswith("nightly@")
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
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            shown = flows(pg_dsn, "show", workflow_id, "--tenant", "acme", schema=schema)
            if shown.returncode == 0:
                break
            assert time.monotonic() < deadline, shown.stderr
            time.sleep(0.2)
        assert "started cli-greeting v1" in shown.stdout
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    shown = ok(flows(pg_dsn, "schedule", "show", "nightly", "--tenant", "acme", schema=schema))
    assert f"last      {workflow_id}" in shown

    ok(flows(pg_dsn, "schedule", "delete", "nightly", "--tenant", "acme", schema=schema))
    one_line_error(
        flows(pg_dsn, "schedule", "show", "nightly", "--tenant", "acme", schema=schema),
        "schedule 'nightly' not found",
    )


def test_schedule_errors_are_one_line(pg_dsn: str) -> None:
    schema = fresh_schema("clisched")
    ok(flows(pg_dsn, "migrate", schema=schema))
    create = ("schedule", "create", "s", "cli-greeting", "--app", APP, "--input", '{"name": "x"}')
    one_line_error(
        flows(pg_dsn, *create, "--cron", "0 3 * *", schema=schema),
        "bad cron expression '0 3 * *': Wrong number of fields",
    )
    one_line_error(
        flows(pg_dsn, *create, "--cron", "@daily", "--timezone", "Paris", schema=schema),
        "unknown time zone 'Paris'",
    )
    one_line_error(
        flows(pg_dsn, *create, "--every", "0.5s", schema=schema),
        "every must be a timedelta of at least 1 s",
    )
    one_line_error(
        flows(
            pg_dsn, "schedule", "create", "s", "nope", "--app", APP, "--every", "1h", schema=schema
        ),
        "has no workflow 'nope'",
    )
    one_line_error(
        flows(pg_dsn, "schedule", "trigger", "missing", schema=schema),
        "schedule 'missing' not found",
    )
    one_line_error(
        flows(pg_dsn, "schedule", "delete", "missing", schema=schema),
        "schedule 'missing' not found",
    )
