"""Definitions for the CLI tests' ``--app`` (``tests.cli.app_for_tests:definitions``)."""

from __future__ import annotations

from typing import Any

import msgspec

import flows_core as flows


class GreetIn(msgspec.Struct):
    name: str
    times: int = 1


class Approval(msgspec.Struct):
    approved: bool
    by: str


@flows.workflow("cli-greeting")
async def greeting(ctx: flows.WorkflowContext, inp: GreetIn) -> str:
    approval = await ctx.wait_for_signal("approval", Approval)
    return f"hello {inp.name} x{inp.times}, approved by {approval.by}"


def definitions() -> list[Any]:
    return [greeting]
