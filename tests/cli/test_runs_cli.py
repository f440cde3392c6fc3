"""`flows runs` and `flows show --run` against a real PostgreSQL: the runs of an entity
workflow that continued as new, and the history of an earlier run."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from conftest_pg import fresh_schema

import flows_core as flows
from flows_pg import PostgresStore
from tests.cli.test_cli_pg import flows as flows_cli
from tests.cli.test_cli_pg import ok

pytestmark = pytest.mark.pg


class Count(msgspec.Struct, frozen=True):
    total: int = 0


@flows.workflow("cli-counter")
async def counter(ctx: flows.WorkflowContext, count: Count) -> int:
    value = await ctx.wait_for_signal("add", int)
    ctx.set_status({"total": count.total + value})
    if value > 0:
        ctx.continue_as_new(Count(total=count.total + value))
    return count.total


async def run_entity(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        engine = flows.Engine(store, workflows=[counter])
        run = await engine.start(counter, Count(), workflow_id="c-1")
        for value in (2, 3, 0):
            await engine.signal("c-1", "add", value)
        worker = flows.Worker(store, workflows=[counter], poll_interval=0.05)
        task = asyncio.ensure_future(worker.run())
        try:
            assert await run.result(timeout=30) == 5
        finally:
            await worker.stop()
            await task


def test_runs_and_show_run(pg_dsn: str) -> None:
    schema = fresh_schema("cliruns")
    ok(flows_cli(pg_dsn, "migrate", schema=schema))
    asyncio.run(run_entity(pg_dsn, schema))
    runs = ok(flows_cli(pg_dsn, "runs", "c-1", schema=schema))
    lines = runs.splitlines()
    assert lines[0].split() == ["run", "status", "started", "ended", "events"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["1", "continued"],
        ["2", "continued"],
        ["3", "completed"],
    ], runs
    shown = ok(flows_cli(pg_dsn, "show", "c-1", "--run", "1", schema=schema))
    assert "run       3" in shown
    assert 'progress  {"total":5}' in shown
    assert "history of run 1" in shown
    assert "continued as new" in shown
    current = ok(flows_cli(pg_dsn, "show", "c-1", schema=schema))
    assert "started cli-counter v1 (run 3)" in current
    missing = flows_cli(pg_dsn, "show", "c-1", "--run", "9", schema=schema)
    assert missing.returncode != 0
    assert "has no run 9" in missing.stderr
