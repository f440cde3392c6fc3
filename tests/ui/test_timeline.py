"""The timeline and steps computed from real histories."""

from __future__ import annotations

from datetime import timedelta

import pytest

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityScheduled, SignalReceived, StepCancelled
from flows_memory import TestEnvironment
from flows_ui._timeline import build_timeline, pretty

from .workflows import FLAKY_FAILURES, approval, steps


async def test_activity_attempts_and_durations(env: TestEnvironment) -> None:
    FLAKY_FAILURES["left"] = 2
    run = await env.engine.start(steps, "t", workflow_id="tl-1")
    await env.result(run)
    history = await env.engine.history("tl-1")
    timeline = build_timeline(history)
    assert [e.position for e in timeline.entries] == list(range(1, len(history) + 1))
    scheduled = next(e for e in history if isinstance(e, ActivityScheduled))
    completed = next(e for e in history if isinstance(e, ActivityCompleted))
    activity, timer, side_effect = timeline.steps
    assert (activity.kind, activity.name, activity.outcome) == (
        "activity",
        "flaky-step",
        "completed",
    )
    assert activity.attempts == 3
    assert activity.duration == completed.at - scheduled.at
    assert timer.kind == "timer"
    assert timer.outcome == "fired"
    assert timer.duration is not None
    assert timer.duration >= timedelta(milliseconds=5)  # virtual clock: exact
    assert side_effect.kind == "side effect"
    assert side_effect.outcome == "recorded"
    assert not timeline.open_steps
    entry = next(e for e in timeline.entries if e.label == "Activity completed")
    assert entry.duration == activity.duration
    assert entry.attempts == 3
    assert entry.payload == '"done t"'


async def test_signal_waits_matched_first_in_first_out(env: TestEnvironment) -> None:
    waiting = await env.engine.start(approval, 1, workflow_id="tl-2")
    await env.wait_until(waiting, lambda i: i.history_length >= 3)
    timeline = build_timeline(await env.engine.history("tl-2"))
    [wait] = timeline.open_steps
    assert (wait.kind, wait.name, wait.outcome) == ("signal wait", "approve", "pending")
    await env.advance(timedelta(seconds=30))
    await env.engine.signal("tl-2", "approve", {"by": "eve"})
    await env.result(waiting)
    history = await env.engine.history("tl-2")
    timeline = build_timeline(history)
    wait = next(s for s in timeline.steps if s.kind == "signal wait")
    signal = next(e for e in history if isinstance(e, SignalReceived))
    assert wait.outcome == "received"
    assert wait.ended_at == signal.at
    assert wait.duration is not None
    assert wait.duration >= timedelta(seconds=30)
    assert not timeline.open_steps


async def test_cancelled_wait_is_closed(env: TestEnvironment) -> None:
    run = await env.engine.start(approval, 2, workflow_id="tl-3")
    await env.wait_until(run, lambda i: i.history_length >= 3)
    await env.engine.cancel("tl-3", reason="no")
    with pytest.raises(flows.WorkflowCancelled):
        await env.result(run)
    history = await env.engine.history("tl-3")
    timeline = build_timeline(history)
    wait = next(s for s in timeline.steps if s.kind == "signal wait")
    assert any(isinstance(e, StepCancelled) for e in history)
    assert wait.outcome == "cancelled"
    assert [e.label for e in timeline.entries][-1] == "Workflow cancelled"


def test_pretty_cuts_long_payloads() -> None:
    assert pretty(b'{"a":[1,2]}') == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert pretty(b"not json") == "not json"
    cut = pretty(b'"' + b"x" * 300 + b'"', limit=100)
    assert cut.startswith('"' + "x" * 99)
    assert cut.endswith("(202 more characters)")


async def test_an_ended_workflow_leaves_no_pending_step(env: TestEnvironment) -> None:
    run = await env.engine.start(approval, 3, workflow_id="tl-4")
    await env.wait_until(run, lambda i: i.history_length >= 3)
    await env.engine.terminate("tl-4", reason="stuck")
    with pytest.raises(flows.WorkflowTerminated):
        await env.result(run)
    timeline = build_timeline(await env.engine.history("tl-4"))
    assert not timeline.open_steps
    wait = next(s for s in timeline.steps if s.kind == "signal wait")
    assert (wait.outcome, wait.detail) == ("dropped", "the workflow ended")
