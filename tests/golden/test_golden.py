"""The wire format is a promise: histories recorded by earlier code (the committed
golden files) still decode, lose nothing when read, and replay against the same
workflow code with the same commands and the same outcome.

A failure here after a change of flows_core/events.py means stored histories would
break: add fields only as optional with a default; never rename or remove an event tag
or a field (README_REPLAY.md, "Evolving events").
"""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core import events as ev
from tests.golden import workflows as w

HERE = Path(__file__).parent
GOLDEN = sorted(p for p in HERE.glob("*.json"))
PATCH_BEFORE = [p for p in GOLDEN if p.name.startswith("patch_before_")]
OWN = [p for p in GOLDEN if p.name != "evolve_address_v1.json"]
"""The files recorded by record.py (evolve_address_v1.json belongs to
test_values_evolution.py, which replays it against its own code)."""

ENDINGS = (
    ev.WorkflowCompleted,
    ev.WorkflowFailedEvent,
    ev.WorkflowCancelledEvent,
    ev.WorkflowContinuedAsNew,
)


def load(path: Path) -> flows.ExportedHistory:
    return flows.load_history(path.read_bytes())


def code_for(path: Path) -> list[Any]:
    return [w.fraud_before] if path in PATCH_BEFORE else w.WORKFLOWS


def all_events() -> list[ev.Event]:
    return [event for path in GOLDEN for event in load(path).events]


def test_there_are_golden_files() -> None:
    assert len(OWN) >= 10, [p.name for p in GOLDEN]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_a_golden_file_loses_nothing_when_read(path: Path) -> None:
    """Every field of every stored event is still read: decoding and encoding again
    gives back each key with its value (a renamed or removed field would be dropped, a
    changed type would not decode). Fields added since may appear, with defaults."""
    raw = msgspec.json.decode(path.read_bytes())
    stored = raw if isinstance(raw, list) else raw["events"]
    history = load(path)
    assert len(history.events) == len(stored)
    for before, event in zip(stored, history.events, strict=True):
        after = msgspec.json.decode(ev.encode_event(event))
        lost = {k: v for k, v in before.items() if after.get(k, object()) != v}
        assert not lost, f"{path.name}: {before['type']} loses {lost} when read"
        assert ev.decode_event(ev.encode_event(event)) == event


def test_the_golden_files_cover_every_event_type_and_shape() -> None:
    seen = all_events()
    kinds = {type(e) for e in seen}
    assert kinds == set(typing.get_args(ev.Event)), set(typing.get_args(ev.Event)) - kinds

    starts = [e for e in seen if isinstance(e, ev.WorkflowStarted)]
    assert any(e.execution_timeout is None and e.rerun_of is None for e in starts)
    assert any(e.execution_timeout is not None for e in starts)
    assert any(e.rerun_of is not None for e in starts)
    assert any(e.parent is not None for e in starts)
    ended = {e.status for e in seen if isinstance(e, ev.ChildWorkflowEnded)}
    assert ended == {"completed", "failed", "cancelled"}
    waits = [e for e in seen if isinstance(e, ev.SignalWaitStarted)]
    assert {e.timeout_at is None for e in waits} == {True, False}
    kinds_of_side_effects = {e.kind for e in seen if isinstance(e, ev.SideEffectRecorded)}
    assert kinds_of_side_effects == set(typing.get_args(ev.SideEffectKind))
    cancelled = [e for e in seen if isinstance(e, ev.WorkflowCancelledEvent)]
    assert any(e.error is not None for e in cancelled)
    assert any(bytes(e.output) != b"null" for e in cancelled)
    reasons = {e.reason for e in seen if isinstance(e, ev.StepCancelled)}
    for shape in (
        "another step of the race finished first",
        "the race timed out",
        "another step of the gather failed",
        "workflow cancel requested",
        "signal was already buffered",
    ):
        assert shape in reasons, (shape, reasons)
    fired = {e.seq for e in seen if isinstance(e, ev.TimerFired)}
    assert ev.DEADLINE_SEQ in fired
    assert len(fired) > 1


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.stem)
def test_a_golden_history_replays_with_no_new_step(path: Path) -> None:
    history = load(path)
    result = flows.Replayer(code_for(path)).replay(history).check()
    assert result.new_events == [], [ev.event_summary(e) for e in result.new_events]
    ended = isinstance(history.events[-1], ENDINGS)
    assert result.finished == ended
    assert (result.workflow_id, result.name) == (history.workflow_id, history.name)


def ended_by_the_code(path: Path) -> bool:
    """Read without the event classes, so that a broken schema fails a test, not the
    collection."""
    last = msgspec.json.decode(path.read_bytes())["events"][-1]["type"]
    return last in {
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
        "workflow_continued_as_new",
    }


@pytest.mark.parametrize("path", [p for p in OWN if ended_by_the_code(p)], ids=lambda p: p.stem)
def test_a_golden_history_ends_the_same_way_again(path: Path) -> None:
    """Without its last event, the history makes the code end the run again: the same
    terminal event, output and error included."""
    history = load(path)
    *head, ending = history.events
    result = flows.Replayer(code_for(path)).replay(head).check()
    assert result.finished
    assert len(result.new_events) == 1, [ev.event_summary(e) for e in result.new_events]
    again = result.new_events[0]
    assert msgspec.structs.replace(again, at=ending.at) == ending


def test_the_terminated_history_replays_up_to_where_it_was_ended() -> None:
    history = load(HERE / "terminated.json")
    assert isinstance(history.events[-1], ev.WorkflowTerminatedEvent)
    result = flows.Replayer(w.WORKFLOWS).replay(history).check()
    assert not result.finished
    assert result.new_events == []


def test_a_golden_history_replayed_against_changed_code_says_where() -> None:
    """The check that makes the golden test worth having: code that no longer does
    what the history recorded is reported at the step, with both sides as JSON."""

    @flows.workflow("golden-fail")
    async def changed(ctx: flows.WorkflowContext, order: w.Order) -> str:
        await ctx.execute(w.refund, order)
        raise ValueError("unreachable")

    result = flows.Replayer([changed]).replay_file(HERE / "failed.json")
    problem = result.problem
    assert problem is not None
    assert problem.kind == "nondeterminism"
    assert (problem.workflow_id, problem.step) == ("golden-fail-1", 1)
    assert problem.recorded is not None
    assert '"name":"golden-charge"' in problem.recorded
    assert problem.now is not None
    assert '"name":"golden-refund"' in problem.now
    with pytest.raises(flows.NonDeterminismError, match="step #1"):
        result.check()


CODE_EVENTS = (
    ev.ActivityScheduled,
    ev.TimerStarted,
    ev.SignalWaitStarted,
    ev.SideEffectRecorded,
    ev.StepCancelled,
    ev.PatchMarker,
    *ENDINGS,
)
"""What the code records (the rest comes from outside: the start, results, timer
firings, signals, cancel requests, termination)."""


def comparable(event: ev.Event) -> Any:
    """``event`` without what depends on the moment the code ran (the replay runs at
    the time of the last event it was given)."""
    fields: dict[str, Any] = msgspec.structs.asdict(event)
    fields.pop("at")
    fields.pop("fire_at", None)
    fields.pop("timeout_at", None)
    if isinstance(event, ev.SideEffectRecorded) and event.kind != "random":
        fields.pop("value")
    return type(event).__name__, msgspec.json.encode(fields)


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.stem)
def test_each_workflow_task_takes_the_recorded_steps_again(path: Path) -> None:
    """At every point where the code ran (after the outside events, before the steps it
    recorded), replaying the history up to there gives exactly the steps the history
    records next, in order: the same commands, not just no divergence."""
    events = load(path).events
    replayer = flows.Replayer(code_for(path))
    points = [
        k
        for k in range(1, len(events))
        if isinstance(events[k], CODE_EVENTS) and not isinstance(events[k - 1], CODE_EVENTS)
    ]
    assert points
    for k in points:
        result = replayer.replay(events[:k]).check()
        recorded = []
        for event in events[k:]:
            if not isinstance(event, CODE_EVENTS):
                break
            recorded.append(event)
        taken = [comparable(e) for e in result.new_events]
        assert taken == [comparable(e) for e in recorded], f"{path.name} after event {k}"


def test_the_recorder_never_overwrites_a_golden_file() -> None:
    from tests.golden import record

    with pytest.raises(FileExistsError, match="never re-recorded"):
        asyncio.run(record.record("tour"))
