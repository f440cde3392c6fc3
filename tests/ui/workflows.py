"""Workflows the dashboard tests run with a real Worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

import flows_core as flows


class Approval(msgspec.Struct):
    by: str
    note: str = ""


@flows.activity("shout", retry=flows.RetryPolicy(initial_interval=timedelta(milliseconds=1)))
async def shout(text: str) -> str:
    return text.upper() + "!"


FLAKY_FAILURES = {"left": 0}


@flows.activity(
    "flaky-step",
    retry=flows.RetryPolicy(initial_interval=timedelta(milliseconds=1), jitter=0.0),
)
async def flaky_step(text: str) -> str:
    if FLAKY_FAILURES["left"] > 0:
        FLAKY_FAILURES["left"] -= 1
        raise RuntimeError("the flaky step failed, as planned")
    return f"done {text}"


@flows.activity("explode", retry=flows.RetryPolicy(max_attempts=1))
async def explode(message: str) -> str:
    raise flows.TerminalError(message)


@flows.workflow("greet")
async def greet(ctx: flows.WorkflowContext, name: str) -> str:
    loud = await ctx.execute(shout, name)
    return f"hello {loud}"


@flows.workflow("approval")
async def approval(ctx: flows.WorkflowContext, amount: int) -> str:
    ctx.uuid7()
    decision = await ctx.wait_for_signal("approve", Approval)
    await ctx.execute(flaky_step, f"booking for {decision.by}")
    await ctx.sleep(timedelta(milliseconds=1))
    return f"{amount} approved by {decision.by}"


@flows.workflow("steps")
async def steps(ctx: flows.WorkflowContext, text: str) -> str:
    first = await ctx.execute(flaky_step, text)
    await ctx.sleep(timedelta(milliseconds=5))
    ctx.now()
    return first


@flows.workflow("failing")
async def failing(ctx: flows.WorkflowContext, message: str) -> str:
    return await ctx.execute(explode, message)


@flows.workflow("chatty")
async def chatty(ctx: flows.WorkflowContext, count: int) -> int:
    for _ in range(count):
        ctx.now()
    return count


BROKEN = {"on": False}
"""While on, ``fragile`` takes a timer where its history has a signal wait: its next
workflow task is non-deterministic and the worker parks it (a dead letter)."""


@flows.workflow("fragile")
async def fragile(ctx: flows.WorkflowContext, text: str) -> str:
    if BROKEN["on"]:
        await ctx.sleep(0)
    got = await ctx.wait_for_signal("go", str)
    return f"{text} went {got}"


HOSTILE = "<script>alert(1)</script>\"'&"


@flows.workflow(HOSTILE)
async def hostile(ctx: flows.WorkflowContext, payload: dict[str, str]) -> dict[str, str]:
    await ctx.execute(shout, payload["short"])
    return payload


WORKFLOWS: list[flows.Workflow[Any, Any]] = [
    greet,
    approval,
    steps,
    failing,
    fragile,
    hostile,
    chatty,
]
ACTIVITIES: list[flows.Activity[Any, Any]] = [shout, flaky_step, explode]
SIGNAL_TYPES: dict[str, dict[str, Any]] = {
    "approval": {"approve": Approval},
    "fragile": {"go": str},
}
