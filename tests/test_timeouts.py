"""Schedule-to-close (``schedule_to_close=``, a step's deadline across all retries) and
the whole-workflow ``execution_timeout``, on the in-memory environment (virtual clock:
deadlines of days pass at once)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import msgspec
import pytest

import flows_core as flows
from flows_core._replay import WorkflowInstance
from flows_core.events import (
    DEADLINE_SEQ,
    ActivityScheduled,
    TimerFired,
    TimerStarted,
    WorkflowFailedEvent,
    WorkflowStarted,
    decode_event,
    encode_event,
)
from flows_core.store import ClaimRequest
from flows_memory import TestEnvironment
from tests.contract.checks import assert_history_invariants, assert_record_matches

EVERY_2H = flows.RetryPolicy(
    initial_interval=timedelta(hours=2),
    max_interval=timedelta(hours=2),
    max_attempts=1000,
    jitter=0.0,
)


def make_flaky(name: str, calls: list[int]) -> flows.Activity[None, int]:
    @flows.activity(name, retry=EVERY_2H, schedule_to_close=timedelta(days=1))
    async def flaky(_: None) -> int:
        calls.append(flows.activity_info().attempt)
        raise RuntimeError("still down")

    return flaky


def catching_wf(name: str, act: flows.Activity[None, int]) -> flows.Workflow[None, list[object]]:
    @flows.workflow(name)
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[object]:
        try:
            await ctx.execute(act, None)
        except flows.ActivityFailed as exc:
            return [exc.error_type, exc.attempts]
        return ["done"]

    return wf


async def check_history(env: TestEnvironment, run: flows.Run[object]) -> list[flows.Event]:
    history = await env.engine.history(run.workflow_id)
    assert_history_invariants(history)
    assert_record_matches(await env.store.get_workflow(run.tenant_id, run.workflow_id), history)
    return history


# -- schedule-to-close --


async def test_schedule_to_close_stops_retries_with_a_typed_error() -> None:
    calls: list[int] = []
    act = make_flaky("stc-flaky", calls)
    wf = catching_wf("stc-wf", act)
    async with TestEnvironment(workflows=[wf], activities=[act]) as env:
        started = env.clock.now()
        run = await env.engine.start(wf, None)
        # attempt n runs at (n-1)*2h; after attempt 12 (at 22h) a retry would land at
        # 24h, the deadline: no retry, the step fails at once.
        assert await env.result(run) == ["ScheduleToCloseTimeout", 12]
        assert calls == list(range(1, 13))
        assert env.clock.now() - started == timedelta(hours=22)
        await check_history(env, run)
    assert issubclass(flows.ScheduleToCloseTimeout, flows.ActivityTimeout)


async def test_schedule_to_close_on_the_queue_path_served_by_another_worker() -> None:
    calls: list[int] = []
    act = make_flaky("stc-remote", calls)
    wf = catching_wf("stc-remote-wf", act)
    env = TestEnvironment(workflows=[wf])  # this worker does not run the activity
    activity_worker = flows.Worker(
        env.store, activities=[act], poll_interval=0.05, worker_id="activity-worker"
    )
    env.workers.append(activity_worker)
    async with env:
        run = await env.engine.start(wf, None)
        assert await env.result(run) == ["ScheduleToCloseTimeout", 12]
        assert activity_worker.counters["activity_tasks"] == 12
        await check_history(env, run)


async def test_schedule_to_close_survives_a_crashed_claimant() -> None:
    """The first-scheduled time travels with the task: an attempt claimed after the
    deadline (its previous claimant died) is not run at all."""
    calls: list[int] = []

    @flows.activity("stc-crash", schedule_to_close=timedelta(hours=1))
    async def act(_: None) -> int:
        calls.append(1)
        return 1

    wf = catching_wf("stc-crash-wf", act)
    env = TestEnvironment(workflows=[wf], time_skipping=False)
    async with env:
        run = await env.engine.start(wf, None)
        request = ClaimRequest(
            owner="crashes",
            workflow_types=[],
            activity_names=["stc-crash"],
            limit=1,
            lease=timedelta(minutes=5),
        )
        ghost: list[object] = []
        while not ghost:  # the workflow worker queues the step (no worker here runs it)
            await asyncio.sleep(0.005)
            ghost = list(await env.store.claim(request))
        # ... and the claimant dies.
        # its lease expired, and the step's deadline
        await env.advance(timedelta(hours=2), wait_idle=False)
        late = flows.Worker(env.store, activities=[act], poll_interval=0.05, worker_id="late")
        task = asyncio.ensure_future(late.run())
        try:
            # the dead claimant's attempt is counted (its lease ran out): 1 attempt
            assert await env.result(run) == ["ScheduleToCloseTimeout", 1]
        finally:
            await late.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert calls == []
        await check_history(env, run)


@pytest.mark.parametrize("heartbeat", [False, True])
async def test_schedule_to_close_cuts_a_running_attempt(heartbeat: bool) -> None:
    @flows.activity(
        f"stc-hangs-{heartbeat}",
        schedule_to_close=timedelta(milliseconds=100),
        heartbeat_timeout=timedelta(seconds=5) if heartbeat else None,
    )
    async def hangs(_: None) -> int:
        await asyncio.sleep(10)
        return 0

    wf = catching_wf(f"stc-hangs-wf-{heartbeat}", hangs)
    async with TestEnvironment(workflows=[wf], activities=[hangs]) as env:
        run = await env.engine.start(wf, None)
        assert await env.result(run, timeout=5) == ["ScheduleToCloseTimeout", 1]


async def test_schedule_to_close_does_not_touch_a_step_done_in_time() -> None:
    @flows.activity("stc-ok", schedule_to_close=timedelta(seconds=30), retry=EVERY_2H)
    async def ok(_: None) -> int:
        return 7

    @flows.workflow("stc-ok-wf")
    async def wf(ctx: flows.WorkflowContext, _: None) -> int:
        return await ctx.execute(ok, None)

    async with TestEnvironment(workflows=[wf], activities=[ok]) as env:
        assert await env.result(await env.engine.start(wf, None)) == 7


def test_timeouts_must_be_positive() -> None:
    async def bad(_: None) -> None:
        return None

    for option in ("schedule_to_close", "timeout", "heartbeat_timeout"):
        with pytest.raises(flows.InvalidArgument):
            flows.activity("bad", **{option: timedelta(0)})(bad)


# -- execution timeout --

cleanup: list[str] = []


@flows.workflow("exec-blocked")
async def blocked(ctx: flows.WorkflowContext, _: None) -> str:
    try:
        return str(await ctx.wait_for_signal("never", str))
    finally:
        cleanup.append("finally ran")


@flows.activity("exec-always-down", retry=EVERY_2H)
async def always_down(_: None) -> int:
    raise RuntimeError("down")


@flows.workflow("exec-stuck-on-activity")
async def stuck(ctx: flows.WorkflowContext, _: None) -> int:
    await ctx.sleep(timedelta(hours=1))
    return await ctx.execute(always_down, None)


@flows.workflow("exec-quick")
async def quick(ctx: flows.WorkflowContext, _: None) -> str:
    await ctx.sleep(timedelta(hours=1))
    return "done"


async def test_execution_timeout_fails_a_workflow_blocked_on_a_signal() -> None:
    cleanup.clear()
    async with TestEnvironment(workflows=[blocked]) as env:
        started = env.clock.now()
        run = await env.engine.start(blocked, None, execution_timeout=timedelta(days=3))
        with pytest.raises(flows.WorkflowTimeout) as caught:
            await env.result(run)
        assert isinstance(caught.value, flows.WorkflowFailed)
        assert caught.value.cause.type == "WorkflowTimeout"
        assert env.clock.now() - started == timedelta(days=3)
        info = await run.query()
        assert info.status == flows.WorkflowStatus.FAILED
        assert info.error is not None
        assert info.error.type == "WorkflowTimeout"
        history = await check_history(env, run)
        assert isinstance(history[1], TimerStarted)
        assert history[1].seq == DEADLINE_SEQ
        assert any(isinstance(e, TimerFired) and e.seq == DEADLINE_SEQ for e in history)
        assert isinstance(history[-1], WorkflowFailedEvent)
        # Replay of the recorded history is deterministic: nothing new, no divergence.
        again = flows.replay(blocked, history, env.clock.now())
        assert again.new_events == []
        assert again.park_error is None
        assert again.finished
        # A signal after the end is refused.
        with pytest.raises(flows.WorkflowNotRunning):
            await env.engine.signal(run.workflow_id, "never", "late")
    assert cleanup  # the coroutine was closed: its finally ran (and could take no step)


async def test_execution_timeout_drops_a_step_retrying_on_another_worker() -> None:
    env = TestEnvironment(workflows=[stuck])
    env.workers.append(
        flows.Worker(env.store, activities=[always_down], poll_interval=0.05, worker_id="acts")
    )
    async with env:
        run = await env.engine.start(stuck, None, execution_timeout=timedelta(hours=10))
        with pytest.raises(flows.WorkflowTimeout):
            await env.result(run)
        await check_history(env, run)
        assert await env.store.next_due(None) is None  # its tasks went with it


async def test_workflow_done_in_time_is_not_touched_by_its_deadline() -> None:
    async with TestEnvironment(workflows=[quick]) as env:
        run = await env.engine.start(quick, None, execution_timeout=timedelta(days=1))
        assert await env.result(run) == "done"
        history = await check_history(env, run)
        assert not any(isinstance(e, TimerFired) and e.seq == DEADLINE_SEQ for e in history)
        assert await env.store.next_due(None) is None  # the deadline timer is gone
        assert [e.seq for e in history if isinstance(e, TimerStarted)] == [0, 1]


async def test_deadline_replay_is_deterministic_at_every_prefix() -> None:
    """Replaying any prefix of a timed-out history, then the rest, gives the same
    events: the deadline is step #0 and its firing ends the workflow the same way."""
    async with TestEnvironment(workflows=[stuck], activities=[always_down]) as env:
        run = await env.engine.start(stuck, None, execution_timeout=timedelta(hours=5))
        with pytest.raises(flows.WorkflowTimeout):
            await env.result(run)
        history = await check_history(env, run)
    now = history[-1].at
    for cut in range(1, len(history) + 1):
        instance = WorkflowInstance(stuck)
        first = instance.apply(history[:cut], now)
        assert first.park_error is None
        rest = instance.apply(history[cut:], now)
        assert rest.park_error is None
        full = flows.replay(stuck, history[:cut], now)
        assert [type(e) for e in full.new_events] == [type(e) for e in first.new_events]
    fired = next(i for i, e in enumerate(history) if isinstance(e, TimerFired) and e.seq == 0)
    ended = flows.replay(stuck, history[: fired + 1], now)
    assert [type(e) for e in ended.new_events] == [WorkflowFailedEvent]


async def test_rerun_keeps_the_execution_timeout() -> None:
    async with TestEnvironment(workflows=[blocked]) as env:
        run = await env.engine.start(blocked, None, execution_timeout=timedelta(hours=6))
        with pytest.raises(flows.WorkflowTimeout):
            await env.result(run)
        again = await env.engine.rerun(run.workflow_id)
        started = (await env.engine.history(again.workflow_id))[0]
        assert isinstance(started, WorkflowStarted)
        assert started.execution_timeout == timedelta(hours=6)
        assert started.rerun_of == run.workflow_id
        with pytest.raises(flows.WorkflowTimeout):
            await env.result(again)


async def test_execution_timeout_must_be_positive() -> None:
    async with TestEnvironment(workflows=[quick]) as env:
        with pytest.raises(flows.InvalidArgument):
            await env.engine.start(quick, None, execution_timeout=timedelta(0))


def test_workflow_started_without_execution_timeout_decodes_and_encodes_as_before() -> None:
    old = (
        b'{"type":"workflow_started","at":"2030-01-01T00:00:00Z","name":"w","version":1,'
        b'"workflow_id":"x","tenant_id":"t","input":null,"seed":1}'
    )
    event = decode_event(old)
    assert isinstance(event, WorkflowStarted)
    assert event.execution_timeout is None
    assert b"execution_timeout" not in encode_event(event)
    timed = msgspec.structs.replace(event, execution_timeout=timedelta(minutes=30))
    back = decode_event(encode_event(timed))
    assert isinstance(back, WorkflowStarted)
    assert back.execution_timeout == timedelta(minutes=30)


def test_a_history_without_its_deadline_step_is_nondeterministic() -> None:
    """A deadline recorded in history but not in WorkflowStarted (or the reverse) is a
    divergence, not silently ignored."""
    from datetime import UTC, datetime

    at = datetime(2030, 1, 1, tzinfo=UTC)
    started = WorkflowStarted(
        name="exec-quick",
        version=1,
        workflow_id="w",
        tenant_id="t",
        input=msgspec.Raw(b"null"),
        seed=1,
        at=at,
    )
    history: list[flows.Event] = [
        started,
        TimerStarted(seq=DEADLINE_SEQ, fire_at=at + timedelta(hours=1), at=at),
        TimerStarted(seq=1, fire_at=at + timedelta(hours=1), at=at),
    ]
    assert flows.replay(quick, history, at).park_error is not None
    assert not any(isinstance(e, ActivityScheduled) for e in history)
