"""End-to-end behaviour of the public API on the in-memory test environment."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest

import flows_core as flows
from flows_cli.examples.order import (
    FakeServices,
    OrderIn,
    WarehouseConfirmation,
    new_activities,
    new_workflow,
)
from flows_memory import TestEnvironment


class Item(msgspec.Struct):
    name: str
    qty: int


def order_env(svc: FakeServices | None = None, **kw: object) -> tuple[TestEnvironment, object]:
    svc = svc or FakeServices()
    acts = new_activities(svc)
    wf = new_workflow(acts)
    return TestEnvironment(workflows=[wf], activities=list(acts), **kw), wf  # type: ignore[arg-type]


async def test_order_workflow_ships_after_signal_and_one_hour() -> None:
    svc = FakeServices()
    env, wf = order_env(svc)
    async with env:
        run = await env.engine.start(wf, OrderIn(customer_id="c1", items=["a"], total=100))  # type: ignore[arg-type]
        info = await env.wait_until(run, lambda i: i.history_length >= 7)
        assert info.status == flows.WorkflowStatus.RUNNING
        before = env.clock.now()
        await env.engine.signal(run.workflow_id, "warehouse-ready", WarehouseConfirmation("w1"))
        out = await env.result(run)
    assert out.status == "shipped"
    assert out.tracking.startswith("track-")
    assert env.clock.now() - before >= timedelta(hours=1)
    assert [c.split()[0] for c in svc.calls] == ["charge", "reserve", "ship"]


async def test_thirty_day_sleep_takes_no_wall_time() -> None:
    @flows.workflow("sleeper")
    async def sleeper(ctx: flows.WorkflowContext, days: int) -> str:
        start = ctx.now()
        await ctx.sleep(timedelta(days=days))
        return str(ctx.now() - start)

    loop = asyncio.get_running_loop()
    async with TestEnvironment(workflows=[sleeper]) as env:
        t0 = loop.time()
        run = await env.engine.start(sleeper, 30)
        assert await env.result(run) == str(timedelta(days=30))
        assert loop.time() - t0 < 1.0


async def test_retry_policy_retries_then_succeeds() -> None:
    attempts: list[int] = []

    @flows.activity("flaky", retry=flows.RetryPolicy(initial_interval=timedelta(seconds=2)))
    async def flaky(n: int) -> int:
        attempts.append(flows.activity_info().attempt)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return n * 2

    @flows.workflow("uses-flaky")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        return await ctx.execute(flaky, n)

    async with TestEnvironment(workflows=[wf], activities=[flaky]) as env:
        run = await env.engine.start(wf, 21)
        assert await env.result(run) == 42
        history = await env.engine.history(run.workflow_id)
    assert attempts == [1, 2, 3]
    done = [e for e in history if isinstance(e, flows.events.ActivityCompleted)]
    assert len(done) == 1
    assert done[0].attempt == 3


async def test_activity_failure_surfaces_as_activity_failed_with_details() -> None:
    @flows.activity("always-fails", retry=flows.RetryPolicy(max_attempts=3, jitter=0))
    def always_fails(_: None) -> None:
        raise KeyError("no such account")

    @flows.workflow("catches")
    async def wf(ctx: flows.WorkflowContext, _: None) -> dict[str, object]:
        try:
            await ctx.execute(always_fails, None)
        except flows.ActivityFailed as exc:
            return {"type": exc.error_type, "attempts": exc.attempts, "msg": exc.message}
        return {}

    async with TestEnvironment(workflows=[wf], activities=[always_fails]) as env:
        out = await env.result(await env.engine.start(wf, None))
    assert out == {"type": "KeyError", "attempts": 3, "msg": "'no such account'"}


async def test_terminal_error_and_non_retryable_stop_retries_at_once() -> None:
    calls: list[str] = []

    @flows.activity("terminal")
    async def terminal(kind: str) -> None:
        calls.append(kind)
        if kind == "terminal":
            raise flows.TerminalError("card stolen")
        raise ValueError("bad data")

    nonretry = flows.activity("nonretry", retry=flows.RetryPolicy(non_retryable=[ValueError]))(
        terminal.fn
    )

    @flows.workflow("stops")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[int]:
        out = []
        for act, arg in ((terminal, "terminal"), (nonretry, "value")):
            try:
                await ctx.execute(act, arg)
            except flows.ActivityFailed as exc:
                out.append(exc.attempts)
        return out

    async with TestEnvironment(workflows=[wf], activities=[terminal, nonretry]) as env:
        assert await env.result(await env.engine.start(wf, None)) == [1, 1]
    assert calls == ["terminal", "value"]


async def test_uncaught_activity_failure_fails_workflow_with_cause() -> None:
    @flows.activity("boom", retry=flows.RetryPolicy(max_attempts=1))
    async def boom(_: None) -> None:
        raise RuntimeError("kaput")

    @flows.workflow("fails")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await ctx.execute(boom, None)

    async with TestEnvironment(workflows=[wf], activities=[boom]) as env:
        run = await env.engine.start(wf, None)
        with pytest.raises(flows.WorkflowFailed) as err:
            await env.result(run)
        info = await run.query()
    assert err.value.cause.type == "RuntimeError"
    assert "kaput" in err.value.cause.message
    assert info.status == flows.WorkflowStatus.FAILED


async def test_signals_fifo_per_name_each_consumed_once_and_buffered() -> None:
    @flows.workflow("collector")
    async def wf(ctx: flows.WorkflowContext, n: int) -> list[str]:
        got = []
        for _ in range(n):
            got.append(await ctx.wait_for_signal("item", str))
        other = await ctx.wait_for_signal("other", int)
        return [*got, str(other)]

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, 3)
        # sent before anyone waits: buffered, then consumed in order
        for payload in ("a", "b"):
            await env.engine.signal(run.workflow_id, "item", payload)
        await env.engine.signal(run.workflow_id, "other", 7)
        await env.engine.signal(run.workflow_id, "item", "c")
        assert await env.result(run) == ["a", "b", "c", "7"]


async def test_signal_timeout_returns_none_and_late_signal_goes_to_next_wait() -> None:
    @flows.workflow("timeouts")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[str | None]:
        first = await ctx.wait_for_signal("go", str, timeout=timedelta(minutes=5))
        second = await ctx.wait_for_signal("go", str)
        return [first, second]

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        await env.wait_until(run, lambda i: i.history_length >= 4)  # timer fired, 2nd wait
        await env.engine.signal(run.workflow_id, "go", "late")
        assert await env.result(run) == [None, "late"]


async def test_signal_before_timeout_wins_and_drops_timer() -> None:
    @flows.workflow("quick-signal")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str | None:
        return await ctx.wait_for_signal("go", str, timeout=timedelta(days=1))

    async with TestEnvironment(workflows=[wf], time_skipping=False) as env:
        run = await env.engine.start(wf, None)
        await env.wait_until(run, lambda i: i.history_length >= 2)
        await env.engine.signal(run.workflow_id, "go", "now")
        assert await env.result(run) == "now"
        assert env.store.task_count() == 0
        history = await env.engine.history(run.workflow_id)
    assert any(isinstance(e, flows.events.StepCancelled) for e in history)


async def test_bad_signal_payload_raises_payload_error_inside_workflow() -> None:
    @flows.workflow("strict-signal")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        try:
            await ctx.wait_for_signal("item", Item)
        except flows.PayloadError as exc:
            return f"rejected: {'Item' in str(exc)}"
        return "accepted"

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        await env.engine.signal(run.workflow_id, "item", {"name": "x", "qty": "many"})
        assert await env.result(run) == "rejected: True"


async def test_cancel_runs_compensation_then_ends_cancelled() -> None:
    svc = FakeServices()
    env, wf = order_env(svc)
    async with env:
        run = await env.engine.start(wf, OrderIn(customer_id="c2", items=["a"], total=50))  # type: ignore[arg-type]
        await env.wait_until(run, lambda i: i.history_length >= 7)  # waiting for warehouse
        assert await env.engine.cancel(run.workflow_id) == flows.CancelOutcome.REQUESTED
        assert await env.engine.cancel(run.workflow_id) == flows.CancelOutcome.ALREADY_REQUESTED
        with pytest.raises(flows.WorkflowCancelled):
            await env.result(run)
        assert await env.engine.cancel(run.workflow_id) == flows.CancelOutcome.ALREADY_FINISHED
        assert (await run.query()).status == flows.WorkflowStatus.CANCELLED
        assert env.store.task_count() == 0
    assert svc.calls[-1].startswith("refund ")


async def test_cancel_drops_pending_timer() -> None:
    @flows.workflow("long-sleep")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await ctx.sleep(timedelta(days=365))

    async with TestEnvironment(workflows=[wf], time_skipping=False) as env:
        run = await env.engine.start(wf, None)
        await env.wait_until(run, lambda i: i.history_length >= 2)
        assert env.store.task_count() == 1
        await env.engine.cancel(run.workflow_id, reason="customer changed mind")
        with pytest.raises(flows.WorkflowCancelled):
            await env.result(run)
        assert env.store.task_count() == 0


async def test_running_activity_sees_cancellation_at_heartbeat() -> None:
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @flows.activity("long-job")
    async def long_job(_: None) -> None:
        started.set()
        try:
            for _ in range(2000):
                flows.heartbeat()
                await asyncio.sleep(0.005)
        except flows.Cancelled:
            saw_cancel.set()
            raise

    @flows.workflow("long-wf")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await ctx.execute(long_job, None)

    async with TestEnvironment(
        workflows=[wf], activities=[long_job], time_skipping=False, lease=timedelta(seconds=0.06)
    ) as env:
        run = await env.engine.start(wf, None)
        await asyncio.wait_for(started.wait(), 5)
        await env.engine.cancel(run.workflow_id)
        await asyncio.wait_for(saw_cancel.wait(), 5)


async def test_gather_runs_steps_in_parallel_and_keeps_order() -> None:
    @flows.activity("square")
    async def square(n: int) -> int:
        await asyncio.sleep(0.001 * (5 - n))
        return n * n

    @flows.workflow("fan-out")
    async def wf(ctx: flows.WorkflowContext, n: int) -> list[int]:
        async def branch(i: int) -> int:
            a = await ctx.execute(square, i)
            await ctx.sleep(timedelta(minutes=i))
            return a + 1

        results = await flows.gather(*(branch(i) for i in range(n)))
        pair = await flows.gather(ctx.execute(square, 7), ctx.execute(square, 8))
        return [*results, *pair]

    async with TestEnvironment(workflows=[wf], activities=[square]) as env:
        assert await env.result(await env.engine.start(wf, 4)) == [1, 2, 5, 10, 49, 64]


async def test_sync_activity_runs_in_a_thread() -> None:
    import threading

    main = threading.get_ident()

    @flows.activity("sync-act")
    def sync_act(x: int) -> bool:
        return threading.get_ident() != main

    @flows.workflow("uses-sync")
    async def wf(ctx: flows.WorkflowContext, x: int) -> bool:
        return await ctx.execute(sync_act, x)

    async with TestEnvironment(workflows=[wf], activities=[sync_act]) as env:
        assert await env.result(await env.engine.start(wf, 1)) is True


async def test_now_random_uuid7_are_recorded_and_replayed_identically() -> None:
    @flows.workflow("effects")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[str]:
        a = [str(ctx.now()), repr(ctx.random()), str(ctx.uuid7())]
        await ctx.sleep(timedelta(hours=1))
        return [*a, str(ctx.now())]

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        out = await env.result(run)
        history = await env.engine.history(run.workflow_id)
    recorded = [e.value for e in history if isinstance(e, flows.events.SideEffectRecorded)]
    assert recorded[1] == out[1]
    assert recorded[2] == out[2]
    again = flows.replay(wf, history, env.clock.now() + timedelta(days=9))
    assert again.new_events == []
    assert again.park_error is None


async def test_illegal_await_parks_workflow_with_helpful_message() -> None:
    @flows.workflow("bad-await")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        await asyncio.sleep(1)

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        info = await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
    assert info.error is not None
    assert info.error.type == "IllegalAwaitError"
    assert "ctx.sleep()" in info.error.message
    assert info.waiting_reason is not None
    assert "parked" in info.waiting_reason


async def test_version_without_worker_waits_and_query_says_why() -> None:
    @flows.workflow("versioned", version=1)
    async def v1(ctx: flows.WorkflowContext, _: None) -> str:
        return "v1"

    @flows.workflow("versioned", version=2)
    async def v2(ctx: flows.WorkflowContext, _: None) -> str:
        return "v2"

    env = TestEnvironment(workflows=[v1])
    env.engine.registry.add(v2)
    async with env:
        run = await env.engine.start("versioned", None)  # highest registered: v2
        info = await env.wait_until(run, lambda i: i.waiting_reason is not None)
        assert "version 2" in (info.waiting_reason or "")
        assert "[1]" in (info.waiting_reason or "")
        old = await env.engine.start(v1, None)
        assert await env.result(old) == "v1"
        assert (await run.query()).status == flows.WorkflowStatus.RUNNING


async def test_tenants_are_isolated() -> None:
    @flows.workflow("tenant-wf")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        return ctx.tenant_id

    async with TestEnvironment(workflows=[wf]) as env:
        with flows.tenant("acme"):
            run = await env.engine.start(wf, None, workflow_id="same-id")
            assert await env.result(run) == "acme"
        other = await env.engine.start(wf, None, workflow_id="same-id", tenant_id="globex")
        assert await env.result(other) == "globex"
        for call in (
            env.engine.query("same-id", tenant_id="initech"),
            env.engine.history("same-id", tenant_id="initech"),
            env.engine.signal("same-id", "x", tenant_id="initech"),
            env.engine.cancel("same-id", tenant_id="initech"),
        ):
            with pytest.raises(flows.WorkflowNotFound):
                await call
        assert len(await env.engine.list(tenant_id="acme")) == 1
        assert await env.engine.list(tenant_id="initech") == []


async def test_require_tenant() -> None:
    @flows.workflow("needs-tenant")
    async def wf(ctx: flows.WorkflowContext, _: None) -> None:
        return None

    env = TestEnvironment(workflows=[wf])
    engine = flows.Engine(env.store, workflows=[wf], require_tenant=True)
    with pytest.raises(flows.TenantRequired):
        await engine.start(wf, None)
    with flows.tenant("t1"):
        await engine.start(wf, None)


async def test_bad_input_is_rejected_and_nothing_is_stored() -> None:
    @flows.workflow("typed")
    async def wf(ctx: flows.WorkflowContext, item: Item) -> str:
        return item.name

    async with TestEnvironment(workflows=[wf]) as env:
        engine = env.engine
        with pytest.raises(flows.PayloadError, match="does not match"):
            await engine.start(wf, {"name": "x", "qty": "lots"})
        with pytest.raises(flows.PayloadError, match="not serialisable"):
            await engine.start(wf, object())
        with pytest.raises(flows.WorkflowNotRegistered, match="nope"):
            await engine.start("nope", None)
        with pytest.raises(flows.InvalidArgument, match="empty"):
            await engine.start(wf, Item("a", 1), workflow_id="")
        with pytest.raises(flows.InvalidArgument, match="limit"):
            await engine.start(wf, Item("a", 1), workflow_id="x" * 500)
        with pytest.raises(flows.InvalidArgument):
            await engine.signal("whatever", "")
        assert await engine.list() == []
        run = await engine.start(wf, {"name": "ok", "qty": 1}, workflow_id="w1")
        with pytest.raises(flows.WorkflowAlreadyExists):
            await engine.start(wf, Item("other", 2), workflow_id="w1")
        assert await env.result(run) == "ok"
        with pytest.raises(flows.WorkflowNotRunning):
            await engine.signal("w1", "late", 1)
        with pytest.raises(flows.PayloadTooLarge):
            await engine.signal("w1", "big", "x" * (3 * 1024 * 1024))


async def test_non_serialisable_workflow_output_fails_with_payload_error() -> None:
    @flows.workflow("bad-output")
    async def wf(ctx: flows.WorkflowContext, _: None) -> object:
        return object()

    async with TestEnvironment(workflows=[wf]) as env:
        with pytest.raises(flows.WorkflowFailed) as err:
            await env.result(await env.engine.start(wf, None))
    assert err.value.cause.type == "PayloadError"


def test_definition_errors_are_clear() -> None:
    with pytest.raises(flows.InvalidArgument, match="empty"):
        flows.workflow("")
    with pytest.raises(flows.InvalidArgument, match="async def"):

        @flows.workflow("not-async")
        def wf(ctx: flows.WorkflowContext, x: int) -> int:  # type: ignore[arg-type]
            return x

    with pytest.raises(flows.InvalidArgument, match="version"):
        flows.workflow("v", version=0)
    with pytest.raises(flows.InvalidArgument, match="unknown option"):
        flows.activity("a", retries=3)
    with pytest.raises(flows.InvalidArgument, match="max_attempts"):
        flows.RetryPolicy(max_attempts=0)


def test_retry_policy_defaults_match_the_original() -> None:
    p = flows.RetryPolicy()
    assert p.initial_interval == timedelta(seconds=1)
    assert p.backoff == 2.0
    assert p.max_interval == timedelta(hours=1)
    assert p.max_attempts == 10
    assert p.jitter == 0.1
    exact = flows.RetryPolicy(jitter=0)
    assert [exact.delay(n).total_seconds() for n in (1, 2, 3)] == [1, 2, 4]
    assert exact.delay(40) == timedelta(hours=1)
