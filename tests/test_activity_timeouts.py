"""Activity timeouts: start-to-close (``timeout=``) and heartbeat (``heartbeat_timeout=``),
each failing the attempt with a typed error that is retried per the policy."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import flows_core as flows
from flows_memory import TestEnvironment

FAST_RETRY = flows.RetryPolicy(initial_interval=timedelta(milliseconds=1), max_attempts=2)


async def test_start_to_close_timeout_is_retried_then_fails_typed() -> None:
    @flows.activity("slow-once", timeout=timedelta(milliseconds=50), retry=FAST_RETRY)
    async def slow_once(_: None) -> int:
        if flows.activity_info().attempt == 1:
            await asyncio.sleep(10)
        return flows.activity_info().attempt

    @flows.activity("always-slow", timeout=timedelta(milliseconds=50), retry=FAST_RETRY)
    async def always_slow(_: None) -> int:
        await asyncio.sleep(10)
        return 0

    @flows.workflow("timeouts-wf")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[object]:
        first = await ctx.execute(slow_once, None)
        try:
            await ctx.execute(always_slow, None)
        except flows.ActivityFailed as exc:
            return [first, exc.error_type, exc.attempts]
        return [first]

    async with TestEnvironment(workflows=[wf], activities=[slow_once, always_slow]) as env:
        run = await env.engine.start(wf, None)
        assert await env.result(run) == [2, "ActivityTimeout", 2]


async def test_heartbeat_timeout_fails_the_attempt_and_is_retried() -> None:
    @flows.activity(
        "beats-then-stops",
        heartbeat_timeout=timedelta(milliseconds=100),
        retry=FAST_RETRY,
    )
    async def beats(_: None) -> int:
        attempt = flows.activity_info().attempt
        for _i in range(6):  # 300 ms of work, beating every 50 ms: alive
            await asyncio.sleep(0.05)
            if attempt == 2:
                flows.heartbeat()
        return attempt  # attempt 1 never beats: it times out at 100 ms

    @flows.activity("never-beats", heartbeat_timeout=timedelta(milliseconds=50), retry=FAST_RETRY)
    async def never(_: None) -> int:
        await asyncio.sleep(10)
        return 0

    @flows.workflow("heartbeat-wf")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[object]:
        first = await ctx.execute(beats, None)
        try:
            await ctx.execute(never, None)
        except flows.ActivityFailed as exc:
            return [first, exc.error_type, exc.attempts]
        return [first]

    async with TestEnvironment(workflows=[wf], activities=[beats, never]) as env:
        run = await env.engine.start(wf, None)
        assert await env.result(run) == [2, "HeartbeatTimeout", 2]


def test_heartbeat_timeout_is_an_activity_timeout() -> None:
    assert issubclass(flows.HeartbeatTimeout, flows.ActivityTimeout)
