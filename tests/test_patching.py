"""Patching: ``ctx.patched`` lets running workflows change code without a new version.
Runs recorded before the patch (the golden patch_before_*.json, and live runs of the
old code) take the old path; new runs, and old runs that had not reached the check,
take the new one; ``check_histories`` says when the patch can be retired."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from history_support import T0, started_event
from hypothesis import given, settings
from hypothesis import strategies as st

import flows_core as flows
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    Event,
    PatchMarker,
    SignalReceived,
    SignalWaitStarted,
    TimerFired,
    TimerStarted,
    WorkflowCompleted,
    WorkflowFailedEvent,
)
from flows_memory import MemoryStore, VirtualClock
from tests.golden import workflows as w

GOLDEN = Path(__file__).parent / "golden"
ORDER = w.Order(order_id="o-1", amount=250)


def golden(stem: str) -> flows.ExportedHistory:
    return flows.load_history((GOLDEN / f"{stem}.json").read_bytes())


# -- histories recorded before the patch, replayed by the patched code --


def test_a_run_finished_before_the_patch_replays_its_old_path() -> None:
    result = flows.Replayer([w.fraud_patched]).replay(golden("patch_before_finished")).check()
    assert result.patches == {"fraud-check": "old"}
    assert result.finished
    assert result.new_events == []


def test_a_run_past_the_patch_point_replays_its_old_path() -> None:
    result = flows.Replayer([w.fraud_patched]).replay(golden("patch_before_past_point")).check()
    assert result.patches == {"fraud-check": "old"}
    assert result.new_events == []
    assert not result.finished


def test_a_run_before_the_patch_point_has_not_decided_yet() -> None:
    result = flows.Replayer([w.fraud_patched]).replay(golden("patch_before_before_point")).check()
    assert result.patches == {}
    assert result.new_events == []


def test_a_run_before_the_patch_point_takes_the_new_path_when_it_gets_there() -> None:
    history = golden("patch_before_before_point").events
    packed = SignalReceived(name="packed", payload=msgspec.Raw(b'"box"'), signal_id="s1", at=T0)
    result = flows.Replayer([w.fraud_patched]).replay([*history, packed]).check()
    assert result.patches == {"fraud-check": "new_unrecorded"}
    marker, scheduled = result.new_events
    assert isinstance(marker, PatchMarker)
    assert (marker.patch_id, marker.position) == ("fraud-check", 3)
    assert isinstance(scheduled, ActivityScheduled)
    assert (scheduled.seq, scheduled.name) == (3, "golden-fraud-check")


# -- live: the old code runs, then the patched code takes over on a real Worker --


class Deploy:
    """A MemoryStore whose worker code can be replaced, as a deploy does."""

    def __init__(self) -> None:
        self.clock = VirtualClock(T0)
        self.store = MemoryStore(clock=self.clock)

    @contextlib.asynccontextmanager
    async def code(self, workflow: flows.Workflow[Any, Any]) -> AsyncIterator[flows.Engine]:
        worker = flows.Worker(
            self.store,
            workflows=[workflow],
            activities=w.ACTIVITIES,
            poll_interval=0.02,
            worker_id=f"worker-{workflow.fn.__name__}",
        )
        task = asyncio.ensure_future(worker.run())
        self.worker = worker
        try:
            yield flows.Engine(self.store, workflows=[workflow])
        finally:
            await worker.stop(grace_period=1.0)
            await task

    async def idle(self) -> None:
        async def poll() -> None:
            quiet = 0
            while quiet < 5:
                await asyncio.sleep(0.002)
                busy = not self.worker.idle or self.store.has_claimable_work()
                quiet = 0 if busy else quiet + 1

        await asyncio.wait_for(poll(), 30)

    async def history(self, workflow_id: str) -> list[Event]:
        return await self.store.get_history(flows.DEFAULT_TENANT, workflow_id)

    async def output(self, workflow_id: str) -> Any:
        record = await self.store.get_workflow(flows.DEFAULT_TENANT, workflow_id)
        assert record.status == flows.WorkflowStatus.COMPLETED, (record.status, record.error)
        assert record.output is not None
        return msgspec.json.decode(record.output)


def markers(history: list[Event]) -> list[tuple[str, int]]:
    return [(e.patch_id, e.position) for e in history if isinstance(e, PatchMarker)]


async def test_old_runs_keep_the_old_path_and_new_runs_take_the_new_one() -> None:
    deploy = Deploy()
    async with deploy.code(w.fraud_before) as engine:
        past = await engine.start(w.fraud_before, ORDER, workflow_id="past-point")
        before = await engine.start(w.fraud_before, ORDER, workflow_id="before-point")
        await deploy.idle()
        await engine.signal(past.workflow_id, "packed", "box 1")
        await deploy.idle()
    old_past = await deploy.history("past-point")
    assert isinstance(old_past[-1], SignalWaitStarted)  # waits for "delivered", old path taken

    async with deploy.code(w.fraud_patched) as engine:
        report = await flows.check_histories(deploy.store, [w.fraud_patched])
        assert report.ok, report.text()
        usage = report.patches["fraud-check"]
        assert (usage.old_running, usage.new_running) == (1, 0)
        assert not usage.retire_ready
        assert "keep it: 1 running run(s) took the old path" in report.text()

        new = await engine.start(w.fraud_patched, ORDER, workflow_id="new-run")
        await engine.signal(new.workflow_id, "packed", "box 3")
        await engine.signal(before.workflow_id, "packed", "box 2")
        for run in (past, before, new):
            await engine.signal(run.workflow_id, "delivered", "door")
        await deploy.idle()

    assert await deploy.output("past-point") == ["receipt-o-1-250", "shipped-o-1"]
    assert markers(await deploy.history("past-point")) == []
    new_path = ["receipt-o-1-250", "fraud-check True", "shipped-o-1"]
    assert await deploy.output("before-point") == new_path
    assert await deploy.output("new-run") == new_path
    assert markers(await deploy.history("before-point")) == [("fraud-check", 3)]
    assert markers(await deploy.history("new-run")) == [("fraud-check", 3)]

    report = await flows.check_histories(deploy.store, [w.fraud_patched])
    assert report.ok, report.text()
    assert report.checked == 3
    usage = report.patches["fraud-check"]
    assert (usage.old_finished, usage.new_finished, usage.old_running) == (1, 2, 0)
    assert usage.retire_ready
    assert "can be retired" in report.text()

    # The retired patch: new-path runs still replay, the finished old-path run no longer.
    retired = await flows.check_histories(deploy.store, [w.fraud_deprecated])
    assert [p.workflow_id for p in retired.problems] == ["past-point"]
    assert retired.problems[0].step == 3
    assert retired.exit_code == 1
    running_only = await flows.check_histories(
        deploy.store, [w.fraud_deprecated], statuses=["running"]
    )
    assert running_only.ok
    assert running_only.checked == 0


async def test_a_patched_run_continues_after_a_restart_on_the_patched_code() -> None:
    """The marker is in the history: a fresh worker (no cache) replays the new path."""
    deploy = Deploy()
    async with deploy.code(w.fraud_patched) as engine:
        run = await engine.start(w.fraud_patched, ORDER, workflow_id="restarted")
        await engine.signal(run.workflow_id, "packed", "box")
        await deploy.idle()
    assert markers(await deploy.history("restarted")) == [("fraud-check", 3)]
    async with deploy.code(w.fraud_patched) as engine:
        await engine.signal(run.workflow_id, "delivered", "door")
        await deploy.idle()
    assert await deploy.output("restarted") == [
        "receipt-o-1-250",
        "fraud-check True",
        "shipped-o-1",
    ]


# -- retiring --


def new_path_history() -> list[Event]:
    """A finished run of the patched code (it recorded the marker)."""
    history = golden("patch_before_before_point").events
    replayer = flows.Replayer([w.fraud_patched])
    at = datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
    inputs: list[Event] = [
        SignalReceived(name="packed", payload=msgspec.Raw(b'"b"'), signal_id="s1", at=at),
        ActivityCompleted(seq=3, output=msgspec.Raw(b"true"), at=at),
        ActivityCompleted(seq=4, output=msgspec.Raw(b'"shipped-o-1"'), at=at),
        SignalReceived(name="delivered", payload=msgspec.Raw(b'"d"'), signal_id="s2", at=at),
    ]
    for event in inputs:
        result = replayer.replay([*history, event]).check()
        history = [*history, event, *result.new_events]
    assert isinstance(history[-1], WorkflowCompleted)
    return history


def test_the_retired_patch_still_replays_new_path_runs() -> None:
    history = new_path_history()
    assert markers(history) == [("fraud-check", 3)]
    for code in (w.fraud_deprecated, w.fraud_cleaned, w.fraud_patched):
        result = flows.Replayer([code]).replay(history).check()
        assert result.new_events == []
        assert result.finished


def test_deprecate_patch_keeps_recording_the_marker_so_a_rollback_is_safe() -> None:
    packed = SignalReceived(name="packed", payload=msgspec.Raw(b'"b"'), signal_id="s1", at=T0)
    start = [*golden("patch_before_before_point").events, packed]
    deprecated = flows.Replayer([w.fraud_deprecated]).replay(start).check()
    assert isinstance(deprecated.new_events[0], PatchMarker)
    rolled_back = flows.Replayer([w.fraud_patched]).replay([*start, *deprecated.new_events])
    assert rolled_back.check().patches == {"fraud-check": "new"}

    # Without the marker (the call removed at once), the rollback would take the old path.
    cleaned = flows.Replayer([w.fraud_cleaned]).replay(start).check()
    assert not any(isinstance(e, PatchMarker) for e in cleaned.new_events)
    rolled_back = flows.Replayer([w.fraud_patched]).replay([*start, *cleaned.new_events])
    assert rolled_back.problem is not None
    assert rolled_back.problem.kind == "nondeterminism"
    assert rolled_back.patches == {"fraud-check": "old"}


def test_the_code_before_the_patch_does_not_replay_a_new_path_run() -> None:
    result = flows.Replayer([w.fraud_before]).replay(new_path_history())
    assert result.problem is not None
    assert result.problem.step == 3
    assert result.problem.recorded is not None
    assert "golden-fraud-check" in result.problem.recorded


# -- the rules, on small histories --


def run_code(code: Any, history: list[Event]) -> flows.ReplayResult:
    @flows.workflow("patching-unit")
    async def wf(ctx: flows.WorkflowContext, _: None) -> Any:
        return await code(ctx)

    return flows.Replayer([wf]).replay(history)


def test_patched_is_decided_once_per_run_and_id() -> None:
    seen: list[bool] = []

    async def code(ctx: flows.WorkflowContext) -> None:
        seen.append(ctx.patched("a"))
        await ctx.sleep(1)
        seen.append(ctx.patched("a"))
        seen.append(ctx.patched("b"))

    result = run_code(code, [started_event("patching-unit")])
    assert seen == [True]
    assert [(e.patch_id, e.position) for e in result.new_events if isinstance(e, PatchMarker)] == [
        ("a", 1)
    ]
    fired = [*result.new_events]
    seen.clear()
    result = run_code(code, [started_event("patching-unit"), *fired, TimerFired(seq=1, at=T0)])
    assert seen == [True, True, True]
    assert [e.patch_id for e in result.new_events if isinstance(e, PatchMarker)] == ["b"]


def test_a_marker_checked_at_another_step_is_a_divergence() -> None:
    async def moved(ctx: flows.WorkflowContext) -> None:
        await ctx.sleep(1)
        ctx.patched("a")

    history: list[Event] = [
        started_event("patching-unit"),
        PatchMarker(patch_id="a", position=1, at=T0),
        TimerStarted(seq=1, fire_at=T0, at=T0),
        TimerFired(seq=1, at=T0),
    ]
    result = run_code(moved, history)
    assert result.problem is not None
    assert result.problem.kind == "nondeterminism"
    assert "patch 'a'" in result.problem.message
    assert result.problem.now is not None
    assert '"position":2' in result.problem.now


def test_a_marker_the_code_no_longer_checks_is_ignored() -> None:
    async def nothing(ctx: flows.WorkflowContext) -> str:
        return "done"

    history: list[Event] = [
        started_event("patching-unit"),
        PatchMarker(patch_id="gone", position=1, at=T0),
    ]
    result = run_code(nothing, history).check()
    assert result.finished


def test_after_the_recorded_end_a_check_takes_the_old_path() -> None:
    async def code(ctx: flows.WorkflowContext) -> str:
        return "new" if ctx.patched("late") else "old"

    ended: list[Event] = [
        started_event("patching-unit"),
        WorkflowCompleted(output=msgspec.Raw(b'"old"'), at=T0),
    ]
    result = run_code(code, ended).check()
    assert result.patches == {"late": "old"}


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", 7])
def test_a_bad_patch_id_is_refused(bad: Any) -> None:
    async def code(ctx: flows.WorkflowContext) -> bool:
        return ctx.patched(bad)

    result = run_code(code, [started_event("patching-unit")])
    assert result.ok
    assert result.finished
    failed = result.new_events[-1]
    assert isinstance(failed, WorkflowFailedEvent)
    assert failed.error.type == "InvalidArgument"
    assert "patch id" in failed.error.message


# -- the rule, over generated programs: a deploy at any point never diverges --


def program(kinds: list[str], patch_at: int | None) -> flows.Workflow[None, list[int]]:
    """Steps in sequence (``activity`` or ``timer``); with ``patch_at``, a patched
    extra activity before step ``patch_at`` (or at the end)."""

    @flows.workflow("patching-generated")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[int]:
        out: list[int] = []
        for index in range(len(kinds) + 1):
            if index == patch_at and ctx.patched("extra"):
                out.append(await ctx.execute(w.double, 100))
            if index == len(kinds):
                break
            if kinds[index] == "activity":
                out.append(await ctx.execute(w.double, index))
            else:
                await ctx.sleep(60)
                out.append(-index)
        return out

    return wf


def advance(
    code: flows.Workflow[None, list[int]], history: list[Event]
) -> tuple[list[Event], bool]:
    """One workflow task of ``code`` and the outcome of the step it waits on."""
    result = flows.Replayer([code]).replay(history).check()
    history = [*history, *result.new_events]
    if result.finished:
        return history, True
    waiting = [e for e in result.new_events if isinstance(e, ActivityScheduled | TimerStarted)]
    assert len(waiting) == 1, result.new_events
    step = waiting[0]
    if isinstance(step, ActivityScheduled):
        value = msgspec.json.decode(bytes(step.input))
        done: Event = ActivityCompleted(
            seq=step.seq, output=msgspec.Raw(msgspec.json.encode(value * 2)), at=T0
        )
    else:
        done = TimerFired(seq=step.seq, at=T0)
    return [*history, done], False


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["activity", "timer"]), min_size=0, max_size=5),
    data=st.data(),
)
def test_a_deploy_at_any_point_never_diverges(kinds: list[str], data: st.DataObject) -> None:
    patch_at = data.draw(st.integers(0, len(kinds)), label="patch_at")
    tasks_before = data.draw(st.integers(1, len(kinds) + 1), label="tasks_before")
    old, patched = program(kinds, None), program(kinds, patch_at)

    history: list[Event] = [started_event("patching-generated")]
    finished = False
    for _ in range(tasks_before):  # the old code runs this many workflow tasks
        history, finished = advance(old, history)
        if finished:
            break
    taken = sum(isinstance(e, ActivityScheduled | TimerStarted) for e in history)
    went_past = finished or taken > patch_at

    while not finished:  # the patched code takes over
        history, finished = advance(patched, history)
    result = flows.Replayer([patched]).replay(history).check()
    assert result.new_events == []
    assert result.patches == {"extra": "old" if went_past else "new"}
    output = msgspec.json.decode(bytes(history[-1].output))  # type: ignore[union-attr]
    expected = [index * 2 if kind == "activity" else -index for index, kind in enumerate(kinds)]
    if not went_past:
        expected.insert(patch_at, 200)
    assert output == expected
