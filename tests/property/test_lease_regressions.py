"""Deterministic regressions for lease bugs the generated cases found."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import flows_core as flows
from flows_core._replay import Activation
from flows_memory import TestEnvironment


def test_long_inline_chain_renews_its_lease() -> None:
    """Activities that together outlast the lease (none heartbeats) ran inline under the
    workflow task's lease, which nobody renewed: it expired mid-chain, the task was
    re-claimed and replayed from the start, and the same happened on every try (a
    livelock; each activity ran again and again). The worker now renews the lease
    between inline steps, so each activity runs once."""
    calls: list[int] = []
    env: TestEnvironment

    @flows.activity("slow-step")
    async def slow_step(n: int) -> int:
        calls.append(n)
        env.clock.advance(timedelta(seconds=20))  # 20 s of work, no heartbeat
        await asyncio.sleep(0.06)  # long enough for the other worker to poll
        return n

    @flows.workflow("slow-chain")
    async def chain(ctx: flows.WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.execute(slow_step, i)
        return total

    async def main() -> int:
        nonlocal env
        env = TestEnvironment(
            workflows=[chain], activities=[slow_step], workers=2, lease=timedelta(seconds=30)
        )
        async with env:
            run = await env.engine.start(chain, 5)
            return await env.result(run, timeout=5.0)

    assert asyncio.run(main()) == 10
    assert calls == [0, 1, 2, 3, 4]


def test_zombie_stops_before_its_next_inline_step() -> None:
    """A claimant whose lease expired and was taken over kept running the inline steps
    that followed, for steps the new owner never takes (here: after a cancel)."""
    ran: list[int] = []
    gate: asyncio.Event
    started: asyncio.Event
    env: TestEnvironment

    @flows.activity("gated-step")
    async def gated(n: int) -> int:
        ran.append(n)
        started.set()
        if n == 1:
            await gate.wait()
        return n

    @flows.workflow("gated-chain")
    async def chain(ctx: flows.WorkflowContext, n: int) -> int:
        await ctx.execute(gated, 1)
        await ctx.execute(gated, 2)
        return n

    async def main() -> flows.WorkflowStatus:
        nonlocal env, gate, started
        gate, started = asyncio.Event(), asyncio.Event()
        env = TestEnvironment(workflows=[chain], activities=[gated], workers=2)
        async with env:
            run = await env.engine.start(chain, 0)
            await asyncio.wait_for(started.wait(), 5.0)
            await env.engine.cancel(run.workflow_id)
            env.advance(timedelta(minutes=5))  # the lease of the running task expires
            await env.wait_until(run, lambda i: i.finished, timeout=5.0)
            gate.set()  # the zombie's activity returns after its task was taken over
            await env.wait_idle(timeout=5.0)
            return (await run.query()).status

    assert asyncio.run(main()) == flows.WorkflowStatus.CANCELLED
    assert 2 not in ran, ran


def test_cancel_during_inline_activity_keeps_history_replayable() -> None:
    """A cancel (or signal, timer, queued result) that arrived while a workflow task ran
    its inline activities was stored *before* the task's events, though the code had
    decided them without seeing it: replaying the final history cancelled step #1,
    ended Cancelled instead of Completed and reported non-determinism (the next task
    parked the workflow). Whatever arrives during a task must be ordered after the
    task's events."""
    gate: asyncio.Event

    @flows.activity("held-step")
    async def held(n: int) -> int:
        await gate.wait()
        return n

    @flows.workflow("held-chain")
    async def chain(ctx: flows.WorkflowContext, n: int) -> list[int]:
        return [await ctx.execute(held, 1), await ctx.execute(held, 2)]

    async def main() -> tuple[flows.WorkflowStatus, Activation]:
        nonlocal gate
        gate = asyncio.Event()
        async with TestEnvironment(workflows=[chain], activities=[held]) as env:
            run = await env.engine.start(chain, 0)
            await asyncio.sleep(0.02)
            await env.engine.cancel(run.workflow_id)
            gate.set()
            await env.wait_until(run, lambda i: i.finished, timeout=5.0)
            await env.wait_idle(timeout=5.0)
            history = await env.engine.history(run.workflow_id)
            return (await run.query()).status, flows.replay(chain, history, env.clock.now())

    status, activation = asyncio.run(main())
    assert activation.nondeterminism is None, activation.nondeterminism
    assert activation.new_events == []
    assert status in (flows.WorkflowStatus.COMPLETED, flows.WorkflowStatus.CANCELLED)
