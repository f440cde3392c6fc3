"""Record golden histories: real runs of tests/golden/workflows.py on a MemoryStore,
through the Engine and a Worker, exported with ``flows.export_history``.

Run it ONLY to ADD a golden file (a new scenario for a new event type or feature), never
to overwrite one: the committed files are histories recorded by earlier code, and the
point of them is that today's code still reads and replays them. It refuses to write a
file that exists::

    python tests/golden/record.py            # record every scenario whose files are missing
    python tests/golden/record.py shapes     # record one scenario (if its files are missing)

A new scenario: add its workflow to workflows.py (and to WORKFLOWS), a function here
that drives it and names its files, and an entry in SCENARIOS.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script: make ``golden`` and the packages importable
    sys.path.insert(0, str(HERE.parent.parent))

import flows_core as flows  # noqa: E402
from flows_memory import TestEnvironment  # noqa: E402
from tests.golden import workflows as w  # noqa: E402

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ORDER = w.Order(order_id="o-1", amount=250)

Files = dict[str, str]
"""File name (without .json) -> workflow id to export."""


async def settle(env: TestEnvironment, *, steps: int = 50) -> None:
    """Let the workers run, moving the virtual clock to each next due timer, until
    nothing is left to do or due (a workflow may still wait for a signal)."""
    for _ in range(steps):
        await env.wait_idle()
        due = await env.store.next_due(None)
        if due is None:
            return
        env.clock.set(max(due, env.clock.now()))
        env.store.notify_work()
    raise RuntimeError("the scenario did not settle")


def environment(workflows: list[flows.Workflow[w.Order, object]] | None = None) -> TestEnvironment:
    return TestEnvironment(
        workflows=workflows if workflows is not None else w.WORKFLOWS,
        activities=w.ACTIVITIES,
        start=T0,
        time_skipping=False,
    )


async def tour(env: TestEnvironment) -> Files:
    run = await env.engine.start(w.tour, ORDER, workflow_id="golden-tour-1")
    await env.engine.signal(run.workflow_id, "approve", "yes")
    await env.engine.signal(run.workflow_id, "note", "fragile")
    await settle(env)
    await run.result(timeout=10)
    return {"tour_completed": run.workflow_id}


async def endings(env: TestEnvironment) -> Files:
    failed = await env.engine.start(w.fail, ORDER, workflow_id="golden-fail-1")
    compensated = await env.engine.start(w.compensate, ORDER, workflow_id="golden-compensate-1")
    plain = await env.engine.start(w.cancel_plain, ORDER, workflow_id="golden-cancel-1")
    waiting = await env.engine.start(w.wait, ORDER, workflow_id="golden-wait-1")
    await env.wait_idle()
    await env.engine.cancel(compensated.workflow_id, reason="customer changed their mind")
    await env.engine.cancel(plain.workflow_id, reason="no longer needed")
    await env.engine.terminate(waiting.workflow_id, reason="operator ended it")
    await settle(env)
    for run in (failed, compensated, plain):
        info = await run.query()
        assert info.status in flows.store.TERMINAL_STATUSES, info
    return {
        "failed": failed.workflow_id,
        "cancelled_with_output": compensated.workflow_id,
        "cancelled_with_error": plain.workflow_id,
        "terminated": waiting.workflow_id,
    }


async def deadline(env: TestEnvironment) -> Files:
    run = await env.engine.start(
        w.deadline, ORDER, workflow_id="golden-deadline-1", execution_timeout=timedelta(days=1)
    )
    await settle(env)
    again = await env.engine.rerun(run.workflow_id, new_workflow_id="golden-deadline-2")
    await settle(env)
    for each in (run, again):
        assert (await each.query()).status == flows.WorkflowStatus.FAILED
    return {"deadline_failed": run.workflow_id, "deadline_rerun": again.workflow_id}


async def shapes(env: TestEnvironment) -> Files:
    run = await env.engine.start(w.shapes, ORDER, workflow_id="golden-shapes-1")
    await env.engine.signal(run.workflow_id, "go", "now")
    await settle(env)
    await run.result(timeout=10)
    return {"race_gather": run.workflow_id}


async def patch_before(env: TestEnvironment) -> Files:
    """``golden-fraud`` run by the code BEFORE the patch: one run finished, one in
    flight past the patch point, one in flight before it."""
    finished = await env.engine.start(w.fraud_before, ORDER, workflow_id="fraud-old-finished")
    past = await env.engine.start(w.fraud_before, ORDER, workflow_id="fraud-old-past-point")
    before = await env.engine.start(w.fraud_before, ORDER, workflow_id="fraud-old-before-point")
    await env.wait_idle()
    for run in (finished, past):
        await env.engine.signal(run.workflow_id, "packed", "box 7")
    await env.wait_idle()
    await env.engine.signal(finished.workflow_id, "delivered", "door")
    await settle(env)
    await finished.result(timeout=10)
    return {
        "patch_before_finished": finished.workflow_id,
        "patch_before_past_point": past.workflow_id,
        "patch_before_before_point": before.workflow_id,
    }


async def children(env: TestEnvironment) -> Files:
    run = await env.engine.start(w.family, ORDER, workflow_id="golden-family-1")
    await settle(env)
    await run.result(timeout=10)
    left = await env.engine.query("golden-family-left")
    assert left.status == flows.WorkflowStatus.TERMINATED, left
    return {"children_parent": run.workflow_id, "children_child": "golden-family-1/child-1"}


async def continued(env: TestEnvironment) -> Files:
    run = await env.engine.start(w.entity, ORDER, workflow_id="golden-entity-1")
    for value in (1, 2, 3):
        await env.engine.signal(run.workflow_id, "add", value)
    await settle(env)
    assert await run.result(timeout=10) == ORDER.amount + 1 + 2
    return {"continued_run1": f"{run.workflow_id}@1", "continued_run2": run.workflow_id}


Scenario = Callable[[TestEnvironment], Awaitable[Files]]
SCENARIOS: dict[str, tuple[Scenario, list[flows.Workflow[w.Order, object]] | None]] = {
    "tour": (tour, None),
    "endings": (endings, None),
    "deadline": (deadline, None),
    "shapes": (shapes, None),
    "patch_before": (patch_before, [w.fraud_before]),
    "children": (children, None),
    "continued": (continued, None),
}

SCENARIO_FILES: dict[str, list[str]] = {
    "tour": ["tour_completed"],
    "endings": ["failed", "cancelled_with_output", "cancelled_with_error", "terminated"],
    "deadline": ["deadline_failed", "deadline_rerun"],
    "shapes": ["race_gather"],
    "patch_before": [
        "patch_before_finished",
        "patch_before_past_point",
        "patch_before_before_point",
    ],
    "children": ["children_parent", "children_child"],
    "continued": ["continued_run1", "continued_run2"],
}


async def record(name: str) -> list[Path]:
    """Run scenario ``name`` and write its files; refuses if any of them exists."""
    targets = [HERE / f"{stem}.json" for stem in SCENARIO_FILES[name]]
    existing = [p.name for p in targets if p.exists()]
    if existing:
        raise FileExistsError(
            f"scenario {name!r}: {', '.join(existing)} exist(s); golden files are never "
            "re-recorded (they are what earlier code stored)"
        )
    scenario, workflows = SCENARIOS[name]
    env = environment(workflows)
    async with env:
        files = await scenario(env)
        assert sorted(files) == sorted(SCENARIO_FILES[name]), files
        written = []
        for stem, workflow_id in files.items():
            if "@" in workflow_id:  # an earlier run (continue-as-new): "id@run"
                workflow_id, run_number = workflow_id.split("@")
                events = await env.engine.history(workflow_id, run_number=int(run_number))
                data = flows.ExportedHistory.of(events, status="continued").to_json()
            else:
                data = await flows.export_history(env.store, flows.DEFAULT_TENANT, workflow_id)
            path = HERE / f"{stem}.json"
            path.write_bytes(data)
            written.append(path)
    return written


def exists(stem: str) -> bool:
    return (HERE / f"{stem}.json").exists()


async def main(names: list[str]) -> int:
    recorded = {n for n, stems in SCENARIO_FILES.items() if all(exists(s) for s in stems)}
    chosen = names or [n for n in SCENARIO_FILES if n not in recorded]
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    if not chosen:
        print("every scenario has its golden files; nothing to record")
    for name in chosen:
        try:
            written = await record(name)
        except FileExistsError as exc:
            print(exc)
            return 1
        for path in written:
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
