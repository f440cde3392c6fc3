"""``flows_core.replay`` is pure and deterministic, checked without any store.

A pure driver plays the world around a generated program: at each step it replays
the history (twice: identical results), appends the new commands, then appends one
outcome chosen by Hypothesis (an activity result, a timer firing, a signal, a
cancel). The same history fed incrementally to one long-lived instance (the sticky
cache path) must produce the same commands as a replay from scratch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from prop_support import MAX_ATTEMPTS, check_history, interp, programs, scaled

from flows_core import ErrorInfo, replay
from flows_core._replay import WorkflowInstance
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowStarted,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _same(a: Any, b: Any) -> bool:
    return msgspec.json.encode(a) == msgspec.json.encode(b)


def _outcome(e: ActivityScheduled, now: datetime) -> Event:
    inp = msgspec.json.decode(e.input)
    mode = inp["mode"]
    if mode == "always":
        error = ErrorInfo(type="RuntimeError", message="always fails", attempts=MAX_ATTEMPTS)
        return ActivityFailedEvent(seq=e.seq, error=error, at=now)
    if mode == "terminal":
        error = ErrorInfo(type="TerminalError", message="terminal failure", attempts=1)
        return ActivityFailedEvent(seq=e.seq, error=error, at=now)
    output = msgspec.Raw(msgspec.json.encode(f"ok:{inp['k']}"))
    return ActivityCompleted(seq=e.seq, output=output, at=now)


@settings(max_examples=scaled(300))
@given(prog=programs, data=st.data(), seed=st.integers(0, 2**62))
def test_replay_is_pure_and_incremental_replay_agrees(
    prog: list[Any], data: st.DataObject, seed: int
) -> None:
    now = T0
    history: list[Event] = [
        WorkflowStarted(
            name=interp.name,
            version=interp.version,
            workflow_id=f"pure-{seed}",
            tenant_id="t",
            input=msgspec.Raw(msgspec.json.encode(prog)),
            seed=seed,
            at=now,
        )
    ]
    sticky = WorkflowInstance(interp)
    fed = 0
    signals = 0
    cancelled = False
    for _ in range(120):
        first = replay(interp, history, now)
        second = replay(interp, history, now)
        assert first.nondeterminism is None, first.nondeterminism
        assert _same(first.new_events, second.new_events), "replay is not pure"
        assert first.finished == second.finished
        incremental = sticky.apply(history[fed:], now)
        fed = len(history)
        assert incremental.nondeterminism is None, incremental.nondeterminism
        assert _same(incremental.new_events, first.new_events), (
            f"sticky instance: {incremental.new_events}\nfrom scratch: {first.new_events}"
        )
        history.extend(first.new_events)
        check_history(history)
        if first.finished:
            break
        # What the world can do next.
        done = {
            e.seq
            for e in history
            if isinstance(e, ActivityCompleted | ActivityFailedEvent | TimerFired | StepCancelled)
        }
        options: list[Any] = []
        for e in history:
            if (
                e.seq not in done
                if isinstance(e, ActivityScheduled | TimerStarted)
                else (isinstance(e, SignalWaitStarted) and e.timeout_at and e.seq not in done)
            ):
                options.append(e)
        options += ["signal:a", "signal:b"] + ([] if cancelled else ["cancel"])
        choice = data.draw(st.sampled_from(options))
        now += timedelta(seconds=1)
        if isinstance(choice, ActivityScheduled):
            history.append(_outcome(choice, now))
        elif isinstance(choice, TimerStarted | SignalWaitStarted):
            history.append(TimerFired(seq=choice.seq, at=now))
        elif choice == "cancel":
            cancelled = True
            history.append(CancelRequested(at=now))
        else:
            signals += 1
            name = choice.split(":")[1]
            payload = msgspec.Raw(msgspec.json.encode(f"{name}-{signals}"))
            history.append(
                SignalReceived(name=name, payload=payload, signal_id=f"s{signals}", at=now)
            )
    # The whole history replays to nothing new.
    final = replay(interp, history, now)
    assert final.nondeterminism is None
    assert final.new_events == []
