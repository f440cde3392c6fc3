"""The history checkers themselves: each invariant, broken once, is reported."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    CancelRequested,
    Event,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCompleted,
    WorkflowStarted,
)
from tests.contract.checks import assert_history_invariants

T = datetime(2030, 1, 1, tzinfo=UTC)
R = msgspec.Raw(b"1")
START = WorkflowStarted(name="w", version=1, workflow_id="i", tenant_id="t", input=R, seed=1, at=T)


def act(seq: int) -> ActivityScheduled:
    return ActivityScheduled(seq=seq, name="a", input=R, at=T)


def done(seq: int) -> ActivityCompleted:
    return ActivityCompleted(seq=seq, output=R, at=T)


def sig(sid: str) -> SignalReceived:
    return SignalReceived(name="s", payload=R, signal_id=sid, at=T)


END = WorkflowCompleted(output=R, at=T)


def test_a_well_formed_history_passes() -> None:
    assert_history_invariants(
        [
            START,
            act(1),
            done(1),
            TimerStarted(seq=2, fire_at=T, at=T),
            SignalWaitStarted(seq=3, name="s", timeout_at=T, at=T),
            SideEffectRecorded(seq=4, kind="now", value="x", at=T),
            sig("a"),
            StepCancelled(seq=3, reason="signal", at=T),
            TimerFired(seq=2, at=T),
            TimerFired(seq=3, at=T),  # the timeout fired while the task dropped it
            CancelRequested(at=T),
            END,
        ]
    )


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([], "empty"),
        ([act(1)], "not WorkflowStarted"),
        ([START, START], "second WorkflowStarted"),
        ([START, act(1), act(1)], "scheduled twice"),
        ([START, act(1), TimerStarted(seq=1, fire_at=T, at=T)], "scheduled twice"),
        ([START, act(2)], "gap"),
        ([START, done(1)], "never taken"),
        ([START, act(1), done(1), done(1)], "resolved twice"),
        ([START, act(1), TimerFired(seq=1, at=T)], "cannot resolve"),
        ([START, SignalWaitStarted(seq=1, name="s", at=T), TimerFired(seq=1, at=T)], "no timeout"),
        ([START, StepCancelled(seq=1, reason="x", at=T)], "never taken"),
        ([START, CancelRequested(at=T), CancelRequested(at=T)], "second CancelRequested"),
        ([START, sig("a"), sig("a")], "recorded twice"),
        ([START, END, END], "after the terminal"),
        ([START, END, sig("late")], "after the terminal"),
        ([START, END, act(1)], "after the terminal"),
    ],
)
def test_each_broken_invariant_is_reported(history: list[Event], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_history_invariants(history)


def test_inbox_events_after_the_end_can_be_tolerated() -> None:
    assert_history_invariants([START, END, sig("late")], terminal_last=False)
    with pytest.raises(AssertionError, match="after the terminal"):
        assert_history_invariants([START, END, act(1)], terminal_last=False)


def test_seq_gaps_can_be_tolerated_but_not_disorder() -> None:
    assert_history_invariants([START, act(1), act(3)], contiguous_seqs=False)
    with pytest.raises(AssertionError, match="taken after"):
        assert_history_invariants([START, act(1), act(3), act(2)], contiguous_seqs=False)
