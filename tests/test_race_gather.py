"""``flows.gather`` fails at the first failure and cancels the rest; ``flows.race`` waits
for the first step and cancels the others (StepCancelled recorded, timers dropped)."""

from __future__ import annotations

import collections
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core.events import StepCancelled, TimerFired
from flows_memory import TestEnvironment

RUNS: collections.Counter[str] = collections.Counter()


@flows.activity("rg-work")
async def work(key: str) -> str:
    RUNS[key] += 1
    if key.startswith("fail"):
        raise flows.TerminalError(f"{key} failed")
    return f"did:{key}"


async def _final(env: TestEnvironment, run: flows.Run[object]) -> list[flows.Event]:
    await env.wait_until(run, lambda i: i.finished)
    return await env.engine.history(run.workflow_id)


async def _history_of(wf: flows.Workflow[None, Any], expected: object) -> list[flows.Event]:
    """Run ``wf`` to its end, check its result, and return its history."""
    RUNS.clear()
    async with TestEnvironment(workflows=[wf], activities=[work]) as env:
        run = await env.engine.start(wf, None)
        assert await run.result(timeout=10) == expected
        return await _final(env, run)


def _replays_cleanly(wf: flows.Workflow[object, object], history: list[flows.Event]) -> None:
    act = flows.replay(wf, history, history[-1].at)
    assert act.park_error is None, act.park_error
    assert act.new_events == []
    assert act.finished


@pytest.mark.parametrize("combine", [flows.gather, flows.race])
async def test_first_failure_is_raised_at_once_and_the_rest_cancelled(combine: Any) -> None:
    """A failed activity plus a signal nobody sends used to leave a gather waiting forever;
    a race whose first step to finish fails raises that failure the same way."""

    @flows.workflow(f"rg-{combine.__name__}-fails")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        try:
            await combine(ctx.execute(work, "fail-1"), ctx.wait_for_signal("never", str))
        except flows.ActivityFailed as exc:
            return f"caught {exc.error_type}"
        return "not reached"

    history = await _history_of(wf, "caught TerminalError")
    cancelled = [e for e in history if isinstance(e, StepCancelled)]
    assert [e.seq for e in cancelled] == [2]
    assert combine.__name__ in cancelled[0].reason
    assert RUNS == {"fail-1": 1}
    _replays_cleanly(wf, history)


async def test_gather_return_exceptions_collects_every_outcome() -> None:
    @flows.workflow("rg-gather-all")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[str]:
        results = await flows.gather(
            ctx.execute(work, "fail-a"),
            ctx.execute(work, "ok-b"),
            ctx.sleep(timedelta(hours=1)),
            return_exceptions=True,
        )
        return [type(r).__name__ if isinstance(r, Exception) else str(r) for r in results]

    history = await _history_of(wf, ["ActivityFailed", "did:ok-b", "None"])
    assert not any(isinstance(e, StepCancelled) for e in history)
    assert any(isinstance(e, TimerFired) for e in history)  # it waited for every step
    _replays_cleanly(wf, history)


async def test_gather_cancels_branch_coroutines_which_can_clean_up() -> None:
    @flows.workflow("rg-gather-branches")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        async def waits_for_approval() -> str:
            try:
                return await ctx.wait_for_signal("approved", str)
            except flows.Cancelled:
                await ctx.execute(work, "cleanup")
                raise

        try:
            await flows.gather(waits_for_approval(), ctx.execute(work, "fail-x"))
        except flows.ActivityFailed:
            return "failed fast"
        return "not reached"

    history = await _history_of(wf, "failed fast")
    # the branch's cleanup ran (once) before gather raised
    assert RUNS == {"fail-x": 1, "cleanup": 1}
    # the activity is seq 1 (taken as gather's arguments are built), the branch's wait 2
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [2]
    _replays_cleanly(wf, history)


async def test_race_returns_the_winner_and_drops_the_losing_timer() -> None:
    @flows.workflow("rg-race-activity")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[object]:
        won = await flows.race(ctx.sleep(timedelta(days=1)), ctx.execute(work, "quick"))
        return [won.winner, won.value]

    RUNS.clear()
    async with TestEnvironment(workflows=[wf], activities=[work]) as env:
        start = env.clock.now()
        run = await env.engine.start(wf, None)
        assert await run.result(timeout=10) == [1, "did:quick"]
        history = await _final(env, run)
        assert env.clock.now() - start < timedelta(days=1)  # the dropped timer never fired
        assert await env.store.next_due(None) is None
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [1]
    assert not any(isinstance(e, TimerFired) for e in history)
    _replays_cleanly(wf, history)


async def test_race_a_signal_against_a_timer() -> None:
    @flows.workflow("rg-race-signal")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        won = await flows.race(ctx.wait_for_signal("go", str), ctx.sleep(timedelta(hours=1)))
        return f"signal {won.value}" if won.winner == 0 else "timer"

    async with TestEnvironment(workflows=[wf], time_skipping=False) as env:
        run = await env.engine.start(wf, None)
        await env.wait_idle()
        await env.engine.signal(run.workflow_id, "go", "now")
        assert await run.result(timeout=10) == "signal now"
        history = await _final(env, run)
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [2]
    _replays_cleanly(wf, history)


async def test_race_timeout_raises_timeout_error_and_frees_the_signal() -> None:
    """The losing signal wait is cancelled: the next signal goes to the next wait."""

    @flows.workflow("rg-race-timeout")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[str]:
        seen = []
        try:
            await flows.race(ctx.wait_for_signal("answer", str), timeout=timedelta(minutes=5))
        except TimeoutError as exc:
            seen.append(str(exc))
        seen.append(await ctx.wait_for_signal("answer", str))
        return seen

    async with TestEnvironment(workflows=[wf], time_skipping=False) as env:
        run = await env.engine.start(wf, None)
        await env.advance(timedelta(minutes=6))
        await env.engine.signal(run.workflow_id, "answer", "late")
        out = await run.result(timeout=10)
        history = await _final(env, run)
    assert out == ["flows.race: no step finished within 0:05:00", "late"]
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [1]
    _replays_cleanly(wf, history)


async def test_race_needs_a_step() -> None:
    @flows.workflow("rg-race-empty")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await flows.race()

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        with pytest.raises(flows.WorkflowFailed, match="at least one step"):
            await run.result(timeout=10)
