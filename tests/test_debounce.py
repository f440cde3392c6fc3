"""Debounced starts on the TestEnvironment: the README's snippet, and windows that close
while the environment skips time."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import flows_core as flows
from flows_memory import TestEnvironment

README = Path(__file__).resolve().parents[1] / "README.md"


@flows.workflow("deb-env")
async def echo(ctx: flows.WorkflowContext, n: int) -> int:
    return n


async def test_the_readme_debounce_snippet_runs() -> None:
    section = README.read_text().split("### Flow control: debounce\n", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python snippet in the README's debounce section"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    await namespace["main"]()


async def test_result_skips_time_to_the_window_on_a_skipping_environment() -> None:
    async with TestEnvironment(workflows=[echo]) as env:
        day = timedelta(days=1)
        first = await env.engine.start(echo, 1, debounce=day, debounce_key="k")
        last = await env.engine.start(echo, 2, debounce=day, debounce_key="k")
        assert await env.result(last) == 2
        assert env.clock.now() >= first.fires_at
