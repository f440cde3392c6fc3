"""A cached (sticky) workflow instance is equivalent to a replay of the whole history.

The worker's sticky path: after a workflow task commits, the worker keeps the instance
and, on the next task, feeds it only the events stored after the length it committed (the
claim's ``history_from``). The instance never sees its own commands again, and when
another worker ran the workflow meanwhile, it sees that worker's commands and results as
ordinary history. Inside one task, results of inline activities are fed to the instance
right after the commands it produced.

A pure driver plays two workers, each with its own cached instance, on generated
programs: Hypothesis picks which worker runs each task (or evicts its entry), which
outcomes the world delivers before it (a batch, like an inbox), and which just-scheduled
activities run inline. After every apply, the cached instance's new events, finished
flag and park error must be byte for byte those of a fresh replay of the same history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st
from prop_support import MAX_ATTEMPTS, check_history, interp, programs, scaled

from flows_core import ErrorInfo
from flows_core._replay import Activation, WorkflowInstance
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


def _encoded(events: list[Event]) -> bytes:
    return msgspec.json.encode(events)


def _outcome(e: ActivityScheduled, now: datetime) -> Event:
    mode = msgspec.json.decode(e.input)["mode"]
    if mode in ("always", "terminal"):
        attempts = MAX_ATTEMPTS if mode == "always" else 1
        error = ErrorInfo(type="RuntimeError", message=f"{mode} fails", attempts=attempts)
        return ActivityFailedEvent(seq=e.seq, error=error, at=now)
    output = msgspec.Raw(msgspec.json.encode(f"ok:{msgspec.json.decode(e.input)['k']}"))
    return ActivityCompleted(seq=e.seq, output=output, at=now)


def _open_steps(history: list[Event]) -> list[Event]:
    """Commands the world can still answer: activities and timers (and signal waits
    with a timeout) not yet resolved."""
    done = {
        e.seq
        for e in history
        if isinstance(e, ActivityCompleted | ActivityFailedEvent | TimerFired | StepCancelled)
    }
    return [
        e
        for e in history
        if (isinstance(e, ActivityScheduled | TimerStarted) and e.seq not in done)
        or (isinstance(e, SignalWaitStarted) and e.timeout_at and e.seq not in done)
    ]


def _assert_same(cached: Activation, fresh: Activation, history: list[Event]) -> None:
    assert _encoded(cached.new_events) == _encoded(fresh.new_events), (
        f"cached: {cached.new_events}\nfresh: {fresh.new_events}\nhistory: {history}"
    )
    assert cached.finished == fresh.finished
    assert type(cached.park_error) is type(fresh.park_error)


class _Worker:
    """A worker's sticky cache for the one workflow: an instance and the history
    length it holds (None: not cached)."""

    def __init__(self) -> None:
        self.instance: WorkflowInstance | None = None
        self.length = 0


@settings(max_examples=scaled(300))
@given(prog=programs, data=st.data(), seed=st.integers(0, 2**62))
def test_cached_instance_matches_fresh_replay(
    prog: list[Any], data: st.DataObject, seed: int
) -> None:
    now = T0
    history: list[Event] = [
        WorkflowStarted(
            name=interp.name,
            version=interp.version,
            workflow_id=f"sticky-{seed}",
            tenant_id="t",
            input=msgspec.Raw(msgspec.json.encode(prog)),
            seed=seed,
            at=now,
        )
    ]
    workers = [_Worker(), _Worker()]
    inbox: list[Event] = []  # delivered before the task, like a claim's inbox move
    signals = 0
    cancelled = False
    hits = 0
    for _ in range(60):
        # The task: a worker claims; its history holds the inbox now.
        before_move = len(history)
        history.extend(inbox)
        inbox = []
        worker = workers[data.draw(st.integers(0, 1), label="worker")]
        if data.draw(st.integers(0, 3), label="evict") == 0:
            worker.instance = None
        if worker.instance is None:  # a miss: full replay, then the instance is cached
            worker.instance = WorkflowInstance(interp)
            worker.length = 0
        else:
            hits += 1
            if worker.length < before_move:
                event("a cached instance continued a history another worker extended")
        feed = history[worker.length :]
        finished = False
        while True:
            fresh = WorkflowInstance(interp).apply(history, now)
            cached = worker.instance.apply(feed, now)
            _assert_same(cached, fresh, history)
            assert fresh.park_error is None, fresh.park_error
            history.extend(cached.new_events)
            check_history(history)
            finished = cached.finished
            # Inline: some of the activities just scheduled finish within the task.
            scheduled = [
                e
                for e in cached.new_events
                if isinstance(e, ActivityScheduled) and worker.instance.is_pending(e.seq)
            ]
            inline = [e for e in scheduled if data.draw(st.booleans(), label="inline")]
            if finished or not inline:
                break
            now += timedelta(milliseconds=10)
            feed = [_outcome(e, now) for e in inline]
            history.extend(feed)
        worker.length = len(history)  # committed
        if finished:
            break
        # What the world delivers before the next task (one or more events).
        for _ in range(data.draw(st.integers(1, 3), label="batch")):
            answered = {
                e.seq
                for e in inbox
                if isinstance(e, ActivityCompleted | ActivityFailedEvent | TimerFired)
            }
            options: list[Any] = [e for e in _open_steps(history) if e.seq not in answered]
            options += ["signal:a", "signal:b"] + ([] if cancelled else ["cancel"])
            choice = data.draw(st.sampled_from(options), label="outcome")
            now += timedelta(seconds=1)
            if isinstance(choice, ActivityScheduled):
                inbox.append(_outcome(choice, now))
            elif isinstance(choice, TimerStarted | SignalWaitStarted):
                inbox.append(TimerFired(seq=choice.seq, at=now))
            elif choice == "cancel":
                cancelled = True
                inbox.append(CancelRequested(at=now))
            else:
                signals += 1
                name = choice.split(":")[1]
                payload = msgspec.Raw(msgspec.json.encode(f"{name}-{signals}"))
                inbox.append(
                    SignalReceived(name=name, payload=payload, signal_id=f"s{signals}", at=now)
                )
    event(f"cache hits: {min(hits, 5)}{'+' if hits >= 5 else ''}")
    final = WorkflowInstance(interp).apply(history, now)
    assert final.park_error is None
    assert final.new_events == []
