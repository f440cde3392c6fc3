"""Workflow-code mistakes end the same way on every store: at once, with a clear error,
each activity run as many times as it has counted attempts (NaN and infinity: see
test_contract_hostile_values.py).

- ``asyncio.timeout`` in workflow code parks the workflow before the step runs;
- a bug (AttributeError) parks it with its history intact; ``retry`` after the fix resumes it;
- ``flows.gather`` raises the first failure although another branch waits for a signal;
- ``flows.race`` drops the losing timer.
"""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core.events import StepCancelled, TimerFired, WorkflowFailedEvent
from tests.contract.adapters import Adapter
from tests.contract.test_contract_engine import checked_history, eventually, result, running, worker

RUNS: collections.Counter[str] = collections.Counter()
BUG = {"on": True}


@flows.activity("cm-step", retry=flows.RetryPolicy(max_attempts=3))
async def cm_step(key: str) -> str:
    RUNS[key] += 1
    if key.startswith("fail"):
        raise flows.TerminalError(f"{key} failed")
    return f"did:{key}"


@flows.workflow("cm-timeout")
async def cm_timeout(ctx: flows.WorkflowContext, key: str) -> str:
    async with asyncio.timeout(5):
        return str(await ctx.execute(cm_step, key))


@flows.workflow("cm-bug")
async def cm_bug(ctx: flows.WorkflowContext, key: str) -> str:
    first = await ctx.execute(cm_step, key)
    if BUG["on"]:
        first.no_such_method()
    second = await ctx.execute(cm_step, key + "-2")
    return f"{first} {second}"


@flows.workflow("cm-gather")
async def cm_gather(ctx: flows.WorkflowContext, key: str) -> str:
    try:
        await flows.gather(ctx.execute(cm_step, key), ctx.wait_for_signal("never", str))
    except flows.ActivityFailed as exc:
        return exc.message
    return "not reached"


@flows.workflow("cm-race")
async def cm_race(ctx: flows.WorkflowContext, key: str) -> int:
    won = await flows.race(ctx.sleep(timedelta(days=1)), ctx.execute(cm_step, key))
    return won.winner


WORKFLOWS = [cm_timeout, cm_bug, cm_gather, cm_race]


async def _start(adapter: Adapter, wf: flows.Workflow[str, Any], key: str) -> Any:
    engine = flows.Engine(adapter.store, workflows=WORKFLOWS)
    run = await engine.start(wf, key, tenant_id=f"t-{adapter.ns}")
    return engine, run


async def test_asyncio_timeout_parks_before_the_step_runs(adapter: Adapter) -> None:
    RUNS.clear()
    async with running(worker(adapter.store, workflows=WORKFLOWS, activities=[cm_step])):
        _, run = await _start(adapter, cm_timeout, "guarded")
        info = await eventually(run.query, lambda i: i.status == flows.WorkflowStatus.PARKED)
    assert info.error.type == "IllegalAwaitError"
    assert "flows.race(step, timeout=" in info.error.message
    assert RUNS["guarded"] == 0


async def test_bug_parks_and_retry_after_the_fix_resumes(adapter: Adapter) -> None:
    """Activities run as their own tasks here, so the first result is recorded before
    the workflow task that meets the bug (an inline result is recorded with its workflow
    task, which parks without committing: the worker's side)."""
    RUNS.clear()
    BUG["on"] = True
    make = worker(adapter.store, workflows=WORKFLOWS, activities=[cm_step], max_inline_steps=0)
    async with running(make):
        engine, run = await _start(adapter, cm_bug, "k")
        info = await eventually(run.query, lambda i: i.status == flows.WorkflowStatus.PARKED)
        assert info.error.type == "WorkflowCodeError"
        assert "AttributeError" in info.error.message
        history = await engine.history(run.workflow_id, tenant_id=run.tenant_id)
        assert not any(isinstance(e, WorkflowFailedEvent) for e in history)
        BUG["on"] = False
        await engine.retry(run.workflow_id, tenant_id=run.tenant_id)
        assert await result(run) == "did:k did:k-2"
    assert RUNS == {"k": 1, "k-2": 1}
    await checked_history(adapter.store, run)


async def test_gather_raises_the_first_failure_at_once(adapter: Adapter) -> None:
    RUNS.clear()
    async with running(worker(adapter.store, workflows=WORKFLOWS, activities=[cm_step])):
        _, run = await _start(adapter, cm_gather, "fail-g")
        assert await result(run) == "fail-g failed"
    history = await checked_history(adapter.store, run)
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [2]
    assert RUNS == {"fail-g": 1}


async def test_race_drops_the_losing_timer(adapter: Adapter) -> None:
    RUNS.clear()
    async with running(worker(adapter.store, workflows=WORKFLOWS, activities=[cm_step])):
        _, run = await _start(adapter, cm_race, "quick")
        assert await result(run) == 1
    history = await checked_history(adapter.store, run)
    assert [e.seq for e in history if isinstance(e, StepCancelled)] == [1]
    assert not any(isinstance(e, TimerFired) for e in history)
