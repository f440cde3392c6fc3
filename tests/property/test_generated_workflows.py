"""Generated programs run end to end on the in-memory TestEnvironment.

Each case: a random program (activities that succeed, flake, always fail or fail
terminally; sleeps; signal waits with and without timeout; side effects; gathers; races;
try/except), a random schedule of signals and an optional cancel. The case must reach
a terminal state and satisfy ``prop_support.check_outcome``: replay of the final
history adds nothing and sees the same values, activity results are recorded once,
signals are consumed at most once and FIFO, sequence numbers are gap-free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from prop_support import actions, check_outcome, programs, run_case, scaled


@settings(max_examples=scaled(150))
@given(prog=programs, schedule=actions)
def test_generated_program_is_durable_and_deterministic(
    prog: list[Any], schedule: list[Any]
) -> None:
    out, env = asyncio.run(run_case(prog, schedule))
    check_outcome(out, prog)
    assert env.store.task_count() == 0


@settings(max_examples=scaled(40))
@given(prog=programs, schedule=actions)
def test_generated_program_on_three_workers(prog: list[Any], schedule: list[Any]) -> None:
    out, env = asyncio.run(run_case(prog, schedule, workers=3, concurrency=2))
    check_outcome(out, prog)
    assert env.store.task_count() == 0
