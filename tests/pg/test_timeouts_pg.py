"""Schedule-to-close and execution timeouts on PostgreSQL (real clock, short deadlines):
the first-scheduled time travels in the tasks table, the deadline is a timer row."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import flows_core as flows
from flows_cli._main import build_parser
from flows_core.events import DEADLINE_SEQ, TimerFired
from flows_pg import PostgresStore, SyncClient
from tests.contract.test_contract_engine import checked_history, result, running, worker

pytestmark = pytest.mark.pg

QUICK_RETRY = flows.RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    max_interval=timedelta(milliseconds=200),
    max_attempts=1000,
    jitter=0.0,
)


@flows.activity("pg-stc-down", retry=QUICK_RETRY, schedule_to_close=timedelta(seconds=1))
async def down(_: None) -> int:
    raise RuntimeError("down")


@flows.workflow("pg-stc-wf")
async def stc_wf(ctx: flows.WorkflowContext, _: None) -> list[object]:
    try:
        await ctx.execute(down, None)
    except flows.ActivityFailed as exc:
        return [exc.error_type, exc.attempts > 1]
    return ["done"]


@flows.workflow("pg-exec-blocked")
async def blocked(ctx: flows.WorkflowContext, _: None) -> str:
    return str(await ctx.wait_for_signal("never", str))


async def test_schedule_to_close_on_the_queue_path(store: PostgresStore) -> None:
    engine = flows.Engine(store, workflows=[stc_wf])
    workflows_only = worker(store, workflows=[stc_wf])
    activities_only = worker(store, activities=[down])
    async with running(workflows_only, activities_only):
        run = await engine.start(stc_wf, None)
        assert await result(run) == ["ScheduleToCloseTimeout", True]
        await checked_history(store, run)
    assert activities_only.counters["activity_tasks"] >= 2


async def test_execution_timeout_from_the_sync_client(pg_dsn: str, store: PostgresStore) -> None:
    client = SyncClient(pg_dsn, schema=store.schema, workflows=[blocked])
    wf_id = await asyncio.to_thread(
        client.start, blocked, None, execution_timeout=timedelta(seconds=1)
    )
    engine = flows.Engine(store, workflows=[blocked])
    run: flows.Run[str] = flows.Run(engine, wf_id, flows.DEFAULT_TENANT, blocked.name, str)
    async with running(worker(store, workflows=[blocked])):
        with pytest.raises(flows.WorkflowTimeout):
            await result(run)
        history = await checked_history(store, run)
    assert any(isinstance(e, TimerFired) and e.seq == DEADLINE_SEQ for e in history)


def test_cli_start_takes_a_timeout() -> None:
    args = build_parser().parse_args(["start", "some-wf", "--timeout", "30m"])
    assert args.timeout == timedelta(minutes=30)
    assert build_parser().parse_args(["start", "some-wf"]).timeout is None
