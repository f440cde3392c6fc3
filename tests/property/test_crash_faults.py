"""Generated programs under injected store faults, several workers and short leases.

``MemoryStore.fault_hook`` raises ConnectionError before a write (nothing happened)
or after it (the write happened but the caller saw an error: a lost reply). Workers
retry with backoff and release what they hold; leases of 5 virtual seconds expire
and are re-claimed, so activities may run more than once. The guarantees of
``check_outcome`` must hold all the same: results recorded once, no step scheduled
twice, gap-free sequence numbers, deterministic replay, signals FIFO and once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from prop_support import actions, check_outcome, programs, run_case, scaled, seeded_faults

WORKER_OPS = frozenset(
    {
        "claim",
        "commit_workflow_task",
        "complete_activity",
        "retry_activity",
        "fire_due_timers",
        "park_workflow",
    }
)


@settings(max_examples=scaled(120))
@given(
    prog=programs,
    schedule=actions,
    seed=st.integers(0, 2**32),
    rate=st.sampled_from([0.05, 0.15, 0.3]),
    workers=st.integers(2, 3),
)
def test_program_survives_store_faults(
    prog: list[Any], schedule: list[Any], seed: int, rate: float, workers: int
) -> None:
    hook = seeded_faults(seed, rate, budget=6, ops=WORKER_OPS)
    out, env = asyncio.run(
        run_case(
            prog,
            schedule,
            workers=workers,
            concurrency=2,
            lease=timedelta(seconds=5),
            fault_hook=hook,
        )
    )
    event(f"faults injected: {min(len(hook.log), 3)}{'+' if len(hook.log) >= 3 else ''}")
    check_outcome(out, prog, faults=True)
    assert env.store.task_count() == 0, f"faults {hook.log}"
