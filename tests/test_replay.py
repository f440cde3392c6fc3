"""Unit tests of the pure replay function: histories in, new command events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

import flows_core as flows
from flows_core._replay import WorkflowInstance
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
raw = msgspec.json.encode


@flows.activity("charge")
async def charge(amount: int) -> str:
    return f"ch-{amount}"


@flows.activity("ship")
async def ship(order: str) -> str:
    return f"tr-{order}"


@flows.workflow("order")
async def order(ctx: flows.WorkflowContext, amount: int) -> str:
    charge_id = await ctx.execute(charge, amount)
    await ctx.sleep(timedelta(hours=1))
    return await ctx.execute(ship, charge_id)


def started(amount: object = 10, name: str = "order") -> WorkflowStarted:
    return WorkflowStarted(
        name=name,
        version=1,
        workflow_id="wf-1",
        tenant_id="t",
        input=msgspec.Raw(raw(amount)),
        seed=42,
        at=T0,
    )


def scheduled(seq: int, name: str, value: object) -> ActivityScheduled:
    return ActivityScheduled(seq=seq, name=name, input=msgspec.Raw(raw(value)), at=T0)


def completed(seq: int, value: object) -> ActivityCompleted:
    return ActivityCompleted(seq=seq, output=msgspec.Raw(raw(value)), at=T0)


def test_first_run_schedules_first_activity() -> None:
    act = flows.replay(order, [started()], T0)
    assert act.nondeterminism is None
    assert act.new_events == [scheduled(1, "charge", 10)]


def test_replay_resumes_after_recorded_steps() -> None:
    history = [started(), scheduled(1, "charge", 10), completed(1, "ch-10")]
    act = flows.replay(order, history, T0)
    assert act.new_events == [TimerStarted(seq=2, fire_at=T0 + timedelta(hours=1), at=T0)]
    history += [*act.new_events, TimerFired(seq=2, at=T0)]
    act = flows.replay(order, history, T0)
    assert act.new_events == [scheduled(3, "ship", "ch-10")]
    history += [*act.new_events, completed(3, "tr-ch-10")]
    act = flows.replay(order, history, T0)
    assert act.finished
    assert act.new_events == [WorkflowCompleted(output=msgspec.Raw(b'"tr-ch-10"'), at=T0)]
    history += act.new_events
    final = flows.replay(order, history, T0)
    assert final.new_events == []
    assert final.nondeterminism is None


def test_waiting_workflow_produces_nothing_new() -> None:
    history = [started(), scheduled(1, "charge", 10)]
    act = flows.replay(order, history, T0)
    assert act.new_events == []
    assert not act.finished


@pytest.mark.parametrize(
    ("recorded", "needle"),
    [
        (scheduled(1, "refund", 10), "refund"),  # another activity name
        (scheduled(1, "charge", 99), "99"),  # another input
        (TimerStarted(seq=1, fire_at=T0, at=T0), "a timer"),  # a sleep recorded there
    ],
)
def test_mismatch_is_nondeterminism(recorded: flows.Event, needle: str) -> None:
    act = flows.replay(order, [started(), recorded], T0)
    assert isinstance(act.nondeterminism, flows.NonDeterminismError)
    assert "step #1" in str(act.nondeterminism)
    assert needle in str(act.nondeterminism)
    assert act.new_events == []


def test_recorded_step_the_code_no_longer_takes_is_nondeterminism() -> None:
    @flows.workflow("order")
    async def shorter(ctx: flows.WorkflowContext, amount: int) -> str:
        return "done"

    act = flows.replay(shorter, [started(), scheduled(1, "charge", 10)], T0)
    assert act.nondeterminism is not None
    assert "no longer takes it" in str(act.nondeterminism)


def test_user_code_cannot_swallow_nondeterminism() -> None:
    @flows.workflow("order")
    async def sneaky(ctx: flows.WorkflowContext, amount: int) -> str:
        try:
            await ctx.execute(ship, "x")
        except BaseException:
            return "swallowed"
        return "no"

    act = flows.replay(sneaky, [started(), scheduled(1, "charge", 10)], T0)
    assert act.nondeterminism is not None
    assert act.new_events == []


def test_activity_failure_is_raised_in_workflow() -> None:
    @flows.workflow("order")
    async def catches(ctx: flows.WorkflowContext, amount: int) -> str:
        try:
            await ctx.execute(charge, amount)
        except flows.ActivityFailed as exc:
            return f"{exc.error_type}/{exc.attempts}"
        return "ok"

    error = flows.ErrorInfo(type="CardDeclined", message="no", attempts=3)
    history = [
        started(),
        scheduled(1, "charge", 10),
        ActivityFailedEvent(seq=1, error=error, at=T0),
    ]
    act = flows.replay(catches, history, T0)
    assert act.new_events == [WorkflowCompleted(output=msgspec.Raw(b'"CardDeclined/3"'), at=T0)]


def test_side_effects_replay_recorded_values() -> None:
    @flows.workflow("fx")
    async def fx(ctx: flows.WorkflowContext, _: None) -> list[str]:
        return [str(ctx.now()), repr(ctx.random()), str(ctx.uuid7())]

    first = flows.replay(fx, [started(None, "fx")], T0)
    history = [started(None, "fx"), *first.new_events]
    again = flows.replay(fx, history, T0 + timedelta(days=3))
    assert again.new_events == []
    recorded = [e.value for e in first.new_events if isinstance(e, SideEffectRecorded)]
    out = msgspec.json.decode(bytes(first.new_events[-1].output))  # type: ignore[union-attr]
    assert out == [str(datetime.fromisoformat(recorded[0])), recorded[1], recorded[2]]
    # fresh randomness is a pure function of the seed and seq, not of the machine
    assert flows.replay(fx, [started(None, "fx")], T0).new_events == first.new_events


def test_signals_are_buffered_and_delivered_fifo() -> None:
    @flows.workflow("sig")
    async def sig(ctx: flows.WorkflowContext, _: None) -> list[int]:
        a = await ctx.wait_for_signal("n", int)
        b = await ctx.wait_for_signal("n", int)
        return [a, b]

    def received(v: int) -> SignalReceived:
        return SignalReceived(name="n", payload=msgspec.Raw(raw(v)), signal_id=str(v), at=T0)

    history = [started(None, "sig"), received(1), received(2)]
    act = flows.replay(sig, history, T0)
    kinds = [type(e) for e in act.new_events]
    assert kinds == [SignalWaitStarted, SignalWaitStarted, WorkflowCompleted]
    assert bytes(act.new_events[-1].output) == b"[1,2]"  # type: ignore[union-attr]


def test_signal_arriving_after_timeout_is_kept_for_the_next_wait() -> None:
    @flows.workflow("sig")
    async def sig(ctx: flows.WorkflowContext, _: None) -> list[int | None]:
        a = await ctx.wait_for_signal("n", int, timeout=60)
        b = await ctx.wait_for_signal("n", int)
        return [a, b]

    wait1 = SignalWaitStarted(seq=1, name="n", timeout_at=T0 + timedelta(seconds=60), at=T0)
    late = SignalReceived(name="n", payload=msgspec.Raw(b"5"), signal_id="s", at=T0)
    act = flows.replay(sig, [started(None, "sig"), wait1, TimerFired(seq=1, at=T0), late], T0)
    assert bytes(act.new_events[-1].output) == b"[null,5]"  # type: ignore[union-attr]


def test_cancel_interrupts_pending_step_and_allows_compensation() -> None:
    @flows.workflow("saga")
    async def saga(ctx: flows.WorkflowContext, _: None) -> str:
        try:
            await ctx.sleep(timedelta(days=1))
        except flows.Cancelled:
            await ctx.execute(charge, -1)
            raise
        return "slept"

    timer = TimerStarted(seq=1, fire_at=T0 + timedelta(days=1), at=T0)
    history = [started(None, "saga"), timer, CancelRequested(at=T0)]
    act = flows.replay(saga, history, T0)
    assert act.new_events == [
        StepCancelled(seq=1, reason="workflow cancel requested", at=T0),
        scheduled(2, "charge", -1),
    ]
    history += [*act.new_events, completed(2, "ch--1")]
    act = flows.replay(saga, history, T0)
    assert len(act.new_events) == 1
    assert isinstance(act.new_events[0], WorkflowCancelledEvent)


def test_workflow_exception_fails_workflow() -> None:
    @flows.workflow("bug")
    async def bug(ctx: flows.WorkflowContext, _: None) -> None:
        raise ZeroDivisionError("oops")

    act = flows.replay(bug, [started(None, "bug")], T0)
    assert isinstance(act.new_events[0], WorkflowFailedEvent)
    assert act.new_events[0].error.type == "ZeroDivisionError"


def test_gather_numbering_follows_history_order() -> None:
    @flows.workflow("par")
    async def par(ctx: flows.WorkflowContext, _: None) -> list[str]:
        async def branch(tag: str) -> str:
            first = await ctx.execute(ship, tag)
            return await ctx.execute(ship, first)

        return list(await flows.gather(branch("a"), branch("b")))

    base = [started(None, "par"), scheduled(1, "ship", "a"), scheduled(2, "ship", "b")]
    # b finishes first: its next step takes seq 3
    act = flows.replay(par, [*base, completed(2, "B")], T0)
    assert act.new_events == [scheduled(3, "ship", "B")]
    act = flows.replay(par, [*base, completed(1, "A")], T0)
    assert act.new_events == [scheduled(3, "ship", "A")]


def test_instance_can_be_fed_incrementally_like_full_replay() -> None:
    instance = WorkflowInstance(order)
    history = [started()]
    act = instance.apply(history, T0)
    history += act.new_events
    tail = [completed(1, "ch-10")]
    act = instance.apply(tail, T0)
    history += tail + act.new_events
    full = flows.replay(order, history, T0)
    assert full.new_events == []
    assert full.nondeterminism is None
    assert instance.pending_steps() == [2]


def test_every_event_survives_encode_decode() -> None:
    """Found by the chaos suite: a cancelled workflow's string output did not decode."""
    from flows_core.events import decode_events, encode_event

    out = msgspec.Raw(b'"refunded"')
    error = flows.ErrorInfo(type="E", message="m", attempts=2)
    events: list[flows.Event] = [
        started({"nested": [1, 2.5, None]}),
        scheduled(1, "a", {"k": "v"}),
        completed(1, [1, 2]),
        ActivityFailedEvent(seq=2, error=error, at=T0),
        TimerStarted(seq=3, fire_at=T0, at=T0),
        TimerFired(seq=3, at=T0),
        SignalWaitStarted(seq=4, name="s", timeout_at=T0, at=T0),
        SignalReceived(name="s", payload=msgspec.Raw(b'{"x":1}'), signal_id="i", at=T0),
        SideEffectRecorded(seq=5, kind="random", value="0.5", at=T0),
        StepCancelled(seq=4, reason="r", at=T0),
        CancelRequested(reason="why", at=T0),
        WorkflowCompleted(output=out, at=T0),
        WorkflowFailedEvent(error=error, at=T0),
        WorkflowCancelledEvent(output=out, at=T0),
        WorkflowCancelledEvent(error=error, at=T0),
    ]
    text = b"[" + b",".join(encode_event(e) for e in events) + b"]"
    again = decode_events(text)
    assert [encode_event(e) for e in again] == [encode_event(e) for e in events]
    assert bytes(again[13].output) == b'"refunded"'  # type: ignore[union-attr]
