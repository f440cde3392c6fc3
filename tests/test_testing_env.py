"""TestEnvironment: every wait times out in real seconds, and ``await env.advance()`` is
safe right after a signal (the workflow reaches its sleep before time moves)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import flows_core as flows
from flows_memory import TestEnvironment


@flows.workflow("env-waits-forever")
async def waits_forever(ctx: flows.WorkflowContext, _: None) -> str:
    return await ctx.wait_for_signal("nobody-sends-this", str)


@flows.workflow("env-signal-then-sleep")
async def signal_then_sleep(ctx: flows.WorkflowContext, _: None) -> str:
    got = await ctx.wait_for_signal("go", str)
    start = ctx.now()
    await ctx.sleep(timedelta(hours=1))
    return f"{got} after {ctx.now() - start}"


@pytest.mark.parametrize("time_skipping", [True, False])
async def test_run_result_timeout_counts_real_seconds(time_skipping: bool) -> None:
    async with TestEnvironment(workflows=[waits_forever], time_skipping=time_skipping) as env:
        run = await env.engine.start(waits_forever, None)
        with pytest.raises(TimeoutError, match=r"still running after 0.2 s \(real time\)"):
            await run.result(timeout=0.2)
        with pytest.raises(TimeoutError, match="real time"):
            await env.result(run, timeout=0.2)
        with pytest.raises(TimeoutError, match="it is running"):
            await env.wait_until(run, lambda i: i.finished, timeout=0.2)


async def test_advance_right_after_a_signal_lets_the_workflow_reach_its_sleep() -> None:
    async with TestEnvironment(workflows=[signal_then_sleep], time_skipping=False) as env:
        run = await env.engine.start(signal_then_sleep, None)
        await env.engine.signal(run.workflow_id, "go", "ready")
        before = env.clock.now()
        await env.advance(timedelta(hours=1))
        info = await run.query()
        assert info.status == flows.WorkflowStatus.COMPLETED
        assert await run.result(timeout=5) == "ready after 1:00:00"
        assert env.clock.now() - before == timedelta(hours=1)


async def test_advance_short_of_the_timer_leaves_the_workflow_sleeping() -> None:
    async with TestEnvironment(workflows=[signal_then_sleep], time_skipping=False) as env:
        run = await env.engine.start(signal_then_sleep, None)
        await env.engine.signal(run.workflow_id, "go", "ready")
        await env.advance(timedelta(minutes=59))
        assert (await run.query()).status == flows.WorkflowStatus.RUNNING
        await env.advance(60)
        assert (await run.query()).status == flows.WorkflowStatus.COMPLETED


async def test_advance_cannot_go_backwards() -> None:
    async with TestEnvironment(workflows=[waits_forever], time_skipping=False) as env:
        with pytest.raises(flows.InvalidArgument, match="backwards"):
            await env.advance(-1)
