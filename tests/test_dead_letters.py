"""Dead letters end to end on the in-memory environment: unexpected worker errors,
nondeterminism, poison tasks (claimants that die), retry in place and rerun."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core._replay import WorkflowInstance
from flows_core.events import WorkflowStarted
from flows_core.store import ClaimRequest
from flows_memory import TestEnvironment


@flows.activity("dl-double")
async def double(x: int) -> int:
    return 2 * x


@flows.workflow("dl-wf")
async def dl_wf(ctx: flows.WorkflowContext, x: int) -> int:
    y = await ctx.execute(double, x)
    await ctx.sleep(timedelta(minutes=5))
    return y + 1


def breaking_apply(monkeypatch: pytest.MonkeyPatch, victim: str) -> list[int]:
    """Make replay raise an unexpected error for workflow ``victim``; returns a list that
    counts the failures. monkeypatch.undo() is the "code fix"."""
    calls: list[int] = []
    original = WorkflowInstance.apply

    def apply(self: WorkflowInstance, events: list[Any], now: Any) -> Any:
        started = next((e for e in events if isinstance(e, WorkflowStarted)), None)
        if started is not None and started.workflow_id == victim:
            calls.append(1)
            raise KeyError("bug in the worker")
        return original(self, events, now)

    monkeypatch.setattr(WorkflowInstance, "apply", apply)
    return calls


async def test_unexpected_worker_error_is_retried_then_dead_lettered_then_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with TestEnvironment(
        workflows=[dl_wf], activities=[double], max_workflow_task_attempts=3
    ) as env:
        calls = breaking_apply(monkeypatch, "victim")
        run = await env.engine.start(dl_wf, 20, workflow_id="victim")
        other = await env.engine.start(dl_wf, 1)
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        assert await env.result(other) == 3  # other workflows keep flowing
        assert len(calls) == 3
        assert info.error is not None
        assert info.error.type == "KeyError"
        assert info.error.attempts == 3
        assert info.waiting_reason is not None
        assert "dead-lettered" in info.waiting_reason
        dead = await env.engine.dead_letters()
        assert [d.workflow_id for d in dead] == ["victim"]
        assert len(await env.engine.history("victim")) == 1  # history untouched

        monkeypatch.undo()  # the code fix
        await env.engine.retry("victim")
        assert await env.result(run) == 41
        assert await env.engine.dead_letters() == []
        with pytest.raises(flows.WorkflowNotDeadLettered):
            await env.engine.retry("victim")
    assert env.workers[0].counters["workflow_task_failures"] == 3


async def test_failing_workflow_task_backs_off() -> None:
    """Attempts are spaced by workflow_task_backoff, doubling (virtual clock)."""
    seen: list[Any] = []

    @flows.workflow("dl-always-broken")
    async def broken(ctx: flows.WorkflowContext, _: None) -> None:
        return None

    async with TestEnvironment(
        workflows=[broken],
        max_workflow_task_attempts=4,
        workflow_task_backoff=timedelta(seconds=10),
    ) as env:
        original = WorkflowInstance.apply

        def apply(self: WorkflowInstance, events: list[Any], now: Any) -> Any:
            seen.append(env.clock.now())
            raise RuntimeError("nope")

        WorkflowInstance.apply = apply  # type: ignore[method-assign]
        try:
            run = await env.engine.start(broken, None)
            info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        finally:
            WorkflowInstance.apply = original  # type: ignore[method-assign]
    assert info.error is not None
    assert info.error.attempts == 4
    gaps = [round((b - a).total_seconds()) for a, b in itertools.pairwise(seen)]
    assert gaps == [10, 20, 40]


async def test_nondeterminism_dead_letters_at_once_with_attempts() -> None:
    @flows.workflow("dl-nondet")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await asyncio.sleep(0)

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        assert info.error is not None
        assert info.error.type == "IllegalAwaitError"
        assert info.error.attempts == 1
        assert [d.workflow_id for d in await env.engine.dead_letters()] == [run.workflow_id]


async def test_poison_task_whose_claimants_die_is_dead_lettered() -> None:
    """Claimants that die (leases expire without a commit) count up; the claim past
    max_workflow_task_attempts dead-letters the workflow without running it."""
    ran: list[str] = []

    @flows.workflow("dl-poison")
    async def poison(ctx: flows.WorkflowContext, _: None) -> str:
        ran.append(ctx.workflow_id)
        return "ran"

    env = TestEnvironment(
        workflows=[poison], max_workflow_task_attempts=3, lease=timedelta(seconds=5)
    )
    run = await env.engine.start(poison, None)
    request = ClaimRequest(
        owner="doomed",
        workflow_types=[("dl-poison", 1)],
        activity_names=[],
        limit=1,
        lease=timedelta(seconds=5),
    )
    for attempt in (1, 2, 3):  # three claimants that crash mid-task
        (claim,) = await env.store.claim(request)
        assert claim.attempt == attempt  # type: ignore[union-attr]
        env.clock.advance(timedelta(seconds=6))
    async with env:
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
    assert ran == []
    assert info.error is not None
    assert info.error.type == "WorkflowTaskCrashed"
    assert info.error.attempts == 3


async def test_rerun_starts_a_new_workflow_with_the_same_input_and_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with TestEnvironment(
        workflows=[dl_wf], activities=[double], max_workflow_task_attempts=1
    ) as env:
        breaking_apply(monkeypatch, "first")
        run = await env.engine.start(dl_wf, 5, workflow_id="first")
        await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        again = await env.engine.rerun("first", new_workflow_id="second")
        assert again.workflow_id == "second"
        assert await env.result(again) == 11
        started = (await env.engine.history("second"))[0]
        assert isinstance(started, WorkflowStarted)
        assert started.rerun_of == "first"
        assert started.version == 1
        # the original stays dead-lettered, untouched
        assert (await env.engine.query("first")).status == flows.WorkflowStatus.PARKED
