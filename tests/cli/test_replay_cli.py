"""``flows replay`` and ``flows export`` against a real PostgreSQL: the replay check
passes unchanged code, exits 1 on code that no longer replays a stored run (with the
step, what was recorded and what the code does now), reports patches, filters; the
export is the stored history."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest_pg import fresh_schema, make_pg_store

import flows_core as flows
from flows_core.events import Event, SignalWaitStarted, WorkflowCompleted
from tests.cli.test_cli_pg import flows as flows_cmd
from tests.cli.test_cli_pg import ok, one_line_error
from tests.golden import workflows as w

pytestmark = pytest.mark.pg

APP = "tests.golden.workflows"
ORDER = w.Order(order_id="o-5", amount=40)


async def wait_for(store: Any, tenant: str, workflow_id: str, ok: Any) -> list[Event]:
    for _ in range(1000):
        history: list[Event] = await store.get_history(tenant, workflow_id)
        if ok(history):
            return history
        await asyncio.sleep(0.01)
    raise AssertionError(f"{workflow_id} did not get there: {history[-1]}")


def ended(history: list[Event]) -> bool:
    return isinstance(history[-1], WorkflowCompleted)


def waits_for(name: str) -> Any:
    return lambda h: isinstance(h[-1], SignalWaitStarted) and h[-1].name == name


async def record_runs_of_the_old_code(dsn: str, schema: str) -> list[Event]:
    """One finished run and one run in flight past the patch point, on ``schema``;
    returns the finished run's history."""
    store = await make_pg_store(dsn, schema)
    try:
        engine = flows.Engine(store, workflows=[w.fraud_before])
        worker = flows.Worker(
            store, workflows=[w.fraud_before], activities=w.ACTIVITIES, poll_interval=0.02
        )
        task = asyncio.ensure_future(worker.run())
        try:
            for workflow_id in ("cli-done", "cli-running"):
                await engine.start(w.fraud_before, ORDER, workflow_id=workflow_id, tenant_id="acme")
                await wait_for(store, "acme", workflow_id, waits_for("packed"))
                await engine.signal(workflow_id, "packed", "box", tenant_id="acme")
                await wait_for(store, "acme", workflow_id, waits_for("delivered"))
            await engine.signal("cli-done", "delivered", "door", tenant_id="acme")
            finished = await wait_for(
                store,
                "acme",
                "cli-done",
                lambda h: isinstance(h[-1], flows.events.WorkflowCompleted),
            )
        finally:
            await worker.stop(grace_period=1.0)
            await task
    finally:
        await store.close()
    return finished


def test_replay_and_export(pg_dsn: str, tmp_path: Path) -> None:
    schema = fresh_schema("replay")
    finished = asyncio.run(record_runs_of_the_old_code(pg_dsn, schema))

    same = ok(flows_cmd(pg_dsn, "replay", "--app", f"{APP}:before_app", "--each", schema=schema))
    assert "replayed 2 histories in " in same
    assert "histories/s): 2 ok, 0 with problems" in same
    assert "· acme/cli-done golden-fraud v1: ok" in same

    patched = ok(flows_cmd(pg_dsn, "replay", "--app", f"{APP}:patched_app", schema=schema))
    assert "patch 'fraud-check': old path 2 run(s) (1 running)" in patched
    assert "keep it: 1 running run(s) took the old path" in patched

    retired = flows_cmd(pg_dsn, "replay", "--app", f"{APP}:deprecated_app", schema=schema)
    assert retired.returncode == 1
    one_line_error(retired, "2 of 2 histories do not replay against")
    assert "workflow cli-running (tenant acme, golden-fraud v1): nondeterminism at step #3" in (
        retired.stdout
    )
    assert '  recorded: {"type":"activity_scheduled","seq":3,"name":"golden-ship"' in retired.stdout
    assert '  now:      {"type":"activity_scheduled","seq":3,"name":"golden-fraud-check"' in (
        retired.stdout
    )

    only = flows_cmd(
        pg_dsn,
        "replay",
        "--app",
        f"{APP}:deprecated_app",
        "--status",
        "completed",
        "--tenant",
        "acme",
        "--name",
        "golden-fraud",
        "--older-than",
        "0s",
        "--limit",
        "5",
        schema=schema,
    )
    assert only.returncode == 1
    assert "replayed 1 histories" in only.stdout
    none = ok(
        flows_cmd(
            pg_dsn, "replay", "--app", f"{APP}:deprecated_app", "--id", "ghost", schema=schema
        )
    )
    assert "replayed 0 histories" in none
    assert "not found: ghost" in none
    one_line_error(
        flows_cmd(pg_dsn, "replay", "--app", f"{APP}:before_app", "--limit", "0", schema=schema),
        "--limit must be at least 1",
    )

    exported = ok(flows_cmd(pg_dsn, "export", "cli-done", "--tenant", "acme", schema=schema))
    assert flows.load_history(exported).events == finished
    target = tmp_path / "cli-done.json"
    ok(
        flows_cmd(
            pg_dsn, "export", "cli-done", "--tenant", "acme", "-o", str(target), schema=schema
        )
    )
    assert target.read_text() == exported
    assert flows.Replayer(w.before_app).replay_file(target).check().finished
    one_line_error(flows_cmd(pg_dsn, "export", "ghost", "--tenant", "acme", schema=schema), "ghost")
