"""Mistakes in workflow code get an immediate, clear outcome: the workflow parks with an
error naming the fix (asyncio primitives, activities called directly, bugs), never a
hang, a silent loop or an activity run again; ``retry`` after the fix resumes it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from history_support import T0, started_event

import flows_core as flows
from flows_core.events import WorkflowFailedEvent
from flows_memory import TestEnvironment

RUNS: collections.Counter[str] = collections.Counter()


@flows.activity("mistakes-step")
async def step(key: str) -> str:
    RUNS[key] += 1
    return f"done:{key}"


async def _parked(wf: flows.Workflow[Any, Any], key: str) -> flows.WorkflowInfo:
    RUNS.clear()
    async with TestEnvironment(workflows=[wf], activities=[step]) as env:
        run = await env.engine.start(wf, key)
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        await env.wait_idle()
        info = await run.query()
    assert info.status == flows.WorkflowStatus.PARKED
    assert all(n <= 1 for n in RUNS.values()), RUNS
    assert info.error is not None
    return info


# Each body takes a step first, then makes the mistake while awaiting a second one.
MISUSES: dict[str, tuple[Callable[[flows.WorkflowContext], Awaitable[Any]], str]] = {
    "asyncio.sleep": (lambda ctx: asyncio.sleep(1), "ctx.sleep()"),
    "asyncio.sleep(0)": (lambda ctx: asyncio.sleep(0), "ctx.sleep()"),
    "asyncio.wait_for": (
        lambda ctx: asyncio.wait_for(ctx.execute(step, "second"), 5),
        "flows.race(step, timeout=",
    ),
    "asyncio.create_task": (
        lambda ctx: asyncio.create_task(_branch(ctx)),  # type: ignore[arg-type]
        "flows.gather(",
    ),
    "asyncio.ensure_future": (lambda ctx: asyncio.ensure_future(_branch(ctx)), "flows.gather("),
    "asyncio.gather": (
        lambda ctx: asyncio.gather(ctx.execute(step, "second"), _branch(ctx)),
        "flows.gather(",
    ),
    "asyncio.wait": (
        lambda ctx: asyncio.wait([ctx.execute(step, "second")]),  # type: ignore[list-item]
        "flows.race(",
    ),
    "asyncio.shield": (lambda ctx: asyncio.shield(ctx.execute(step, "second")), "Await the step"),
    "asyncio.to_thread": (lambda ctx: asyncio.to_thread(print, "x"), "ctx.execute(activity"),
    "asyncio.Event().wait": (lambda ctx: asyncio.Event().wait(), "asyncio.Event.wait()"),
}


async def _branch(ctx: flows.WorkflowContext) -> str:
    return await ctx.execute(step, "branch")


@pytest.mark.parametrize("misuse", sorted(MISUSES))
async def test_asyncio_in_workflow_code_parks_naming_the_flows_equivalent(misuse: str) -> None:
    make, equivalent = MISUSES[misuse]

    @flows.workflow(f"misuse-{misuse}")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        first = await ctx.execute(step, key)
        with contextlib.suppress(Exception):  # the park cannot be swallowed by user code
            await make(ctx)
        return first

    info = await _parked(wf, "first")
    assert info.error is not None
    assert info.error.type == "IllegalAwaitError", info.error
    assert equivalent in info.error.message, info.error.message
    assert RUNS["first"] == 1
    assert RUNS["branch"] == 0
    assert RUNS["second"] == 0


async def test_asyncio_timeout_around_a_step_parks_before_the_step_runs() -> None:
    @flows.workflow("misuse-timeout")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        async with asyncio.timeout(5):
            return await ctx.execute(step, key)

    info = await _parked(wf, "guarded")
    assert info.error is not None
    assert info.error.type == "IllegalAwaitError"
    assert "asyncio.timeout()" in info.error.message
    assert "flows.race(step, timeout=" in info.error.message
    assert RUNS["guarded"] == 0


async def test_current_task_and_running_loop_are_not_the_workers() -> None:
    @flows.workflow("misuse-loop")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        asyncio.get_running_loop().call_later(1, print)
        return key

    info = await _parked(wf, "x")
    assert info.error is not None
    assert info.error.type == "IllegalAwaitError"
    assert "event loop" in info.error.message


async def test_logging_and_current_task_names_in_workflow_code_are_fine() -> None:
    @flows.workflow("logs")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        logging.getLogger("flows.test").warning("workflow %s step %s", ctx.workflow_id, key)
        task = asyncio.current_task()
        return f"{await ctx.execute(step, key)} in {task.get_name() if task else None}"

    async with TestEnvironment(workflows=[wf], activities=[step]) as env:
        run = await env.engine.start(wf, "log")
        assert await run.result(timeout=10) == "done:log in flows-workflow-code"


async def test_activity_called_directly_parks_saying_to_use_ctx_execute() -> None:
    @flows.workflow("direct-call")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        return await step(key)

    info = await _parked(wf, "direct")
    assert info.error is not None
    assert info.error.type == "WorkflowCodeError"
    assert "await ctx.execute(step, input)" in info.error.message
    assert RUNS["direct"] == 0


def test_activity_called_directly_outside_workflows_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"ctx.execute\(step, input\)"):
        step("x")


BUGGY = {"on": True}


@flows.workflow("buggy")
async def buggy(ctx: flows.WorkflowContext, key: str) -> str:
    first = await ctx.execute(step, key)
    if BUGGY["on"]:
        return first.upper(1)  # type: ignore[call-arg]  # TypeError
    second = await ctx.execute(step, key + "-2")
    return f"{first}+{second}"


async def test_bug_in_workflow_code_parks_and_retry_after_the_fix_resumes() -> None:
    RUNS.clear()
    BUGGY["on"] = True
    # Activities run as their own tasks (not inline), so the first result is recorded
    # before the workflow task that hits the bug.
    env = TestEnvironment(workflows=[buggy], activities=[step], max_inline_steps=0)
    async with env:
        run = await env.engine.start(buggy, "k")
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        assert info.error is not None
        assert info.error.type == "WorkflowCodeError"
        assert "TypeError" in info.error.message
        assert "engine.retry(" in info.error.message
        assert "test_workflow_mistakes.py" in info.error.message  # where the bug is
        # the history has no terminal event: the run can still go on
        history = await env.engine.history(run.workflow_id)
        assert not any(isinstance(e, WorkflowFailedEvent) for e in history)

        BUGGY["on"] = False  # "deploy the fix"
        await env.engine.retry(run.workflow_id)
        assert await env.result(run) == "done:k+done:k-2"
    # the step recorded before the bug was not run again
    assert RUNS == {"k": 1, "k-2": 1}


@pytest.mark.parametrize(
    "exc",
    [
        AttributeError("no attr"),
        NameError("undefined"),
        ImportError("no module"),
        AssertionError("broken invariant"),
        NotImplementedError("todo"),
        RecursionError("deep"),
    ],
)
async def test_each_code_error_parks(exc: BaseException) -> None:
    @flows.workflow(f"code-error-{type(exc).__name__}")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        await ctx.execute(step, key)
        raise exc

    info = await _parked(wf, "e")
    assert info.error is not None
    assert info.error.type == "WorkflowCodeError"
    assert type(exc).__name__ in info.error.message


async def test_cancelled_error_escaping_workflow_code_parks_it() -> None:
    """Not taken for the worker's own cancellation (which would release and re-run)."""

    @flows.workflow("escaping-cancelled-error")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        await ctx.execute(step, key)
        raise asyncio.CancelledError

    info = await _parked(wf, "c")
    assert info.error is not None
    assert info.error.type == "WorkflowCodeError"
    assert "CancelledError" in info.error.message
    assert RUNS["c"] == 1


@pytest.mark.parametrize(
    ("exc", "declared"),
    [
        (ValueError("bad order"), ()),  # not a code error: fails as before
        (KeyError("missing sku"), ()),
        (NotImplementedError("plan not supported"), (NotImplementedError,)),  # declared
        (TypeError("declared too"), (TypeError, ValueError)),
    ],
)
async def test_other_and_declared_exceptions_fail_the_workflow(
    exc: Exception, declared: tuple[type[BaseException], ...]
) -> None:
    @flows.workflow(f"fails-{type(exc).__name__}", failure_exceptions=declared)
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        await ctx.execute(step, key)
        raise exc

    async with TestEnvironment(workflows=[wf], activities=[step]) as env:
        run = await env.engine.start(wf, "v")
        with pytest.raises(flows.WorkflowFailed) as failed:
            await env.result(run)
    assert type(exc).__name__ in str(failed.value)


def test_failure_exceptions_must_be_exception_classes() -> None:
    with pytest.raises(flows.InvalidArgument, match="failure_exceptions"):
        flows.workflow("bad-decl", failure_exceptions=("ValueError",))  # type: ignore[arg-type]


def test_a_failure_already_recorded_replays_as_recorded() -> None:
    """A history recorded before this rule (TypeError ended the run failed) replays."""

    @flows.workflow("old-failure")
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        raise TypeError("boom")

    history: list[flows.Event] = [
        started_event("old-failure", "k"),
        WorkflowFailedEvent(error=flows.ErrorInfo(type="TypeError", message="boom"), at=T0),
    ]
    act = flows.replay(wf, history, T0 + timedelta(seconds=1))
    assert act.park_error is None
    assert act.finished
