"""Debounced starts on the TestEnvironment: the README's snippet, and windows that close
while the environment skips time."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flows_core as flows
from flows_memory import MemoryStore, TestEnvironment

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


class DebounceBroken(MemoryStore):
    """A store whose debounce statements fail (say, a schema not yet migrated to 013)."""

    async def claim_pending_starts(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise flows.StoreError('relation "pending_starts" does not exist')

    async def next_pending_start_due(self, *args: Any, **kwargs: Any) -> Any:
        raise flows.StoreError('relation "pending_starts" does not exist')


async def test_failing_debounce_stops_neither_workflows_nor_schedules() -> None:
    store = DebounceBroken()
    worker = flows.Worker(store, workflows=[echo], poll_interval=0.05)
    task = asyncio.ensure_future(worker.run())
    try:
        engine = flows.Engine(store, workflows=[echo])
        run = await engine.start(echo, 7)
        assert await run.result(timeout=10) == 7
        spec = flows.ScheduleSpec(cron="0 3 1 1 *")
        await engine.schedule("yearly", echo, 8, spec=spec, paused=True)
        fired = await engine.trigger_schedule("yearly")
        for _ in range(1000):  # the scheduler fires it at its next poll
            if await engine.list(id_prefix="yearly@"):
                break
            await asyncio.sleep(0.01)
        assert await engine.wait_for_result(fired, timeout=10) == 8
        assert worker.counters["store_errors"] >= 1
    finally:
        await worker.stop()
        await task


async def test_a_key_whose_workflow_id_would_be_too_long_is_refused() -> None:
    engine = flows.Engine(MemoryStore(), workflows=[echo])
    with pytest.raises(flows.InvalidArgument, match="debounced workflow id"):
        await engine.start(echo, 1, debounce=timedelta(seconds=1), debounce_key="x" * 190)
    run = await engine.start(echo, 1, debounce=timedelta(seconds=1), debounce_key="x" * 150)
    assert run.workflow_id.startswith("x" * 150 + "@")


async def test_a_debounced_start_takes_no_priority() -> None:
    engine = flows.Engine(MemoryStore(), workflows=[echo])
    extra: dict[str, Any] = {"priority": 5}
    with pytest.raises(flows.InvalidArgument, match="no priority"):
        await engine.start(echo, 1, debounce=timedelta(seconds=1), debounce_key="k", **extra)
