"""Durable schedules in memory with the virtual clock: ticks across DST, a day of ticks
through ``TestEnvironment.advance``, catch-up after downtime, jitter and the overlap
policies. (The store contract and several workers: tests/contract/test_contract_schedules.py.)"""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import flows_core as flows
from flows_core._schedules import fire_time, jitter_offset, tick_workflow_id, ticks_after
from flows_memory import MemoryStore, TestEnvironment

PARIS = ZoneInfo("Europe/Paris")
README = Path(__file__).resolve().parents[1] / "README.md"


def local_ticks(spec: flows.ScheduleSpec, start: datetime, count: int) -> list[str]:
    ticks = itertools.islice(ticks_after(spec, start), count)
    return [t.astimezone(PARIS).strftime("%m-%d %H:%M%z") for t in ticks]


@flows.workflow("sched-hello")
async def hello(ctx: flows.WorkflowContext, name: str) -> str:
    return f"hello {name}"


@flows.workflow("sched-waits")
async def waits(ctx: flows.WorkflowContext, _: str) -> str:
    return await ctx.wait_for_signal("done", str)


# -- ticks across DST (Europe/Paris: 2030-03-31 02:00 -> 03:00, 2030-10-27 03:00 -> 02:00)


def test_daily_0230_across_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    spec = flows.ScheduleSpec(cron="30 2 * * *", timezone="Europe/Paris")
    start = datetime(2030, 3, 29, 12, tzinfo=PARIS)
    assert local_ticks(spec, start, 3) == [
        "03-30 02:30+0100",
        "03-31 03:00+0200",  # 02:30 does not exist that day
        "04-01 02:30+0200",
    ]


def test_daily_0230_across_fall_back_fires_once() -> None:
    spec = flows.ScheduleSpec(cron="30 2 * * *", timezone="Europe/Paris")
    start = datetime(2030, 10, 26, 12, tzinfo=PARIS)
    assert local_ticks(spec, start, 3) == [
        "10-27 02:30+0200",  # the first of the two 02:30s only
        "10-28 02:30+0100",
        "10-29 02:30+0100",
    ]


def test_hourly_fires_every_real_hour_across_both_changes() -> None:
    spec = flows.ScheduleSpec(cron="0 * * * *", timezone="Europe/Paris")
    spring = local_ticks(spec, datetime(2030, 3, 31, 0, 30, tzinfo=PARIS), 3)
    assert spring == ["03-31 01:00+0100", "03-31 03:00+0200", "03-31 04:00+0200"]
    fall = local_ticks(spec, datetime(2030, 10, 27, 1, 30, tzinfo=PARIS), 4)
    assert fall == ["10-27 02:00+0200", "10-27 02:00+0100", "10-27 03:00+0100", "10-27 04:00+0100"]
    gaps = list(itertools.islice(ticks_after(spec, datetime(2030, 10, 26, 22, tzinfo=UTC)), 30))
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(gaps))


@pytest.mark.parametrize(
    ("midnight", "day", "daily_tick", "hourly_ticks"),
    [
        # spring forward: no 02:30 (fires at 03:00 CEST), 23 hours
        (datetime(2030, 3, 30, 23, tzinfo=UTC), timedelta(hours=23), "2030-03-31T01:00:00Z", 23),
        # fall back: 02:30 once (the first, CEST), 25 hours
        (datetime(2030, 10, 26, 22, tzinfo=UTC), timedelta(hours=25), "2030-10-27T00:30:00Z", 25),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_a_day_of_a_dst_change_through_the_test_environment(
    midnight: datetime, day: timedelta, daily_tick: str, hourly_ticks: int
) -> None:
    """Advancing the virtual clock over a DST-change day (Paris) fires each tick of a
    02:30 daily and an hourly schedule once, at its time."""
    start = midnight - timedelta(minutes=1)
    async with TestEnvironment(workflows=[hello], start=start) as env:
        daily = flows.ScheduleSpec(cron="30 2 * * *", timezone="Europe/Paris")
        hourly = flows.ScheduleSpec(cron="0 * * * *", timezone="Europe/Paris")
        await env.engine.schedule("daily", hello, "d", spec=daily)
        await env.engine.schedule("hourly", hello, "h", spec=hourly)
        await env.advance(day)  # from 23:59 the day before to 23:59 Paris time
        runs = await env.engine.list(limit=1000)
        daily_runs = sorted(r.workflow_id for r in runs if r.workflow_id.startswith("daily@"))
        assert daily_runs == [f"daily@{daily_tick}"]
        hourly_runs = [r for r in runs if r.workflow_id.startswith("hourly@")]
        assert len(hourly_runs) == hourly_ticks
        assert all(r.status == flows.WorkflowStatus.COMPLETED for r in runs)
        for run in hourly_runs:  # each fired at its tick (the virtual clock stopped there)
            tick = datetime.strptime(run.workflow_id.split("@")[1], "%Y-%m-%dT%H:%M:%SZ")
            assert run.created_at == tick.replace(tzinfo=UTC)


# -- catch-up, jitter, intervals --


async def test_catch_up_fires_every_missed_tick_inside_the_window_only() -> None:
    """Workers down for 10 hours with a 3-hour window: the ticks of the last 3 hours
    fire (all of them, oldest first, as Temporal does); the older ones are skipped."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    env = TestEnvironment(workflows=[hello], start=start, time_skipping=False)
    spec = flows.ScheduleSpec(
        every=timedelta(hours=1),
        catchup_window=timedelta(hours=3),
        overlap=flows.Overlap.ALLOW_ALL,
    )
    await env.engine.schedule("hourly", hello, "x", spec=spec)
    env.clock.advance(timedelta(hours=10, minutes=30))  # no worker runs meanwhile
    async with env:
        await env.wait_idle()
        ids = sorted(r.workflow_id for r in await env.engine.list(limit=100))
    assert ids == [tick_workflow_id("hourly", start + timedelta(hours=h)) for h in (8, 9, 10)]
    info = await env.engine.get_schedule("hourly")
    assert info.next_fire_at == start + timedelta(hours=11)


def test_jitter_is_a_fixed_offset_per_tick_within_bounds() -> None:
    tick = datetime(2030, 1, 1, 3, tzinfo=UTC)
    jitter = timedelta(minutes=10)
    offsets = {jitter_offset("nightly", tick + timedelta(days=d), jitter) for d in range(50)}
    assert all(timedelta(0) <= o <= jitter for o in offsets)
    assert len(offsets) > 40  # spread, not one constant
    assert jitter_offset("nightly", tick, jitter) == jitter_offset("nightly", tick, jitter)
    spec = flows.ScheduleSpec(cron="0 3 * * *", jitter=jitter)
    assert fire_time("nightly", spec, tick) == tick + jitter_offset("nightly", tick, jitter)


async def test_a_jittered_tick_fires_late_with_the_tick_s_id() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    spec = flows.ScheduleSpec(cron="0 3 * * *", jitter=timedelta(minutes=30))
    tick = datetime(2030, 1, 1, 3, tzinfo=UTC)
    fires = fire_time("j", spec, tick)
    async with TestEnvironment(workflows=[hello], start=start, time_skipping=False) as env:
        await env.engine.schedule("j", hello, "x", spec=spec)
        assert fires > tick
        await env.advance(tick - start)
        assert await env.engine.list() == []
        await env.advance(fires - tick)
        (run,) = await env.engine.list()
    assert run.workflow_id == "j@2030-01-01T03:00:00Z"
    assert run.created_at == fires


def test_intervals_are_aligned_on_the_epoch() -> None:
    spec = flows.ScheduleSpec(every=timedelta(minutes=15))
    after = datetime(2030, 1, 1, 10, 7, 30, tzinfo=UTC)
    ticks = list(itertools.islice(ticks_after(spec, after), 2))
    assert ticks == [
        datetime(2030, 1, 1, 10, 15, tzinfo=UTC),
        datetime(2030, 1, 1, 10, 30, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 3 * *"}, "bad cron expression '0 3 \\* \\*': Wrong number of fields"),
        ({"cron": "0 25 * * *"}, "bad cron expression '0 25 \\* \\* \\*': Bad hour"),
        ({"cron": "0 3 * * *", "timezone": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss'"),
        ({"every": timedelta(milliseconds=500)}, "every must be a timedelta of at least 1 s"),
        ({"every": timedelta(seconds=1.5)}, "whole number of seconds"),
        ({"cron": "@daily", "every": timedelta(hours=1)}, "exactly one of cron= or every="),
        ({"cron": "@daily", "jitter": timedelta(seconds=-1)}, "jitter must be"),
        ({"cron": "@daily", "catchup_window": timedelta(0)}, "catchup_window must be"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(flows.InvalidArgument, match=message):
        flows.ScheduleSpec(**kwargs)  # type: ignore[arg-type]


# -- overlap policies (the last tick's workflow waits for a signal: it runs) --


async def ticks_while_running(overlap: flows.Overlap) -> tuple[TestEnvironment, list[str]]:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    env = TestEnvironment(workflows=[waits], start=start, time_skipping=False)
    await env.start()
    spec = flows.ScheduleSpec(every=timedelta(hours=1), overlap=overlap)
    await env.engine.schedule("o", waits, "", spec=spec)
    await env.advance(timedelta(hours=3))  # three ticks; the first run never ends
    ids = sorted(r.workflow_id for r in await env.engine.list())
    return env, ids


async def test_overlap_skip_drops_ticks_while_the_last_run_runs() -> None:
    env, ids = await ticks_while_running(flows.Overlap.SKIP)
    await env.stop()
    assert ids == ["o@2030-01-01T01:00:00Z"]


async def test_overlap_allow_all_starts_every_tick() -> None:
    env, ids = await ticks_while_running(flows.Overlap.ALLOW_ALL)
    await env.stop()
    assert len(ids) == 3


async def test_overlap_buffer_one_starts_one_waiting_tick_when_the_run_ends() -> None:
    env, ids = await ticks_while_running(flows.Overlap.BUFFER_ONE)
    try:
        assert ids == ["o@2030-01-01T01:00:00Z"]
        await env.engine.signal("o@2030-01-01T01:00:00Z", "done", "ok")
        await env.advance(timedelta(minutes=1))  # the buffered tick looks at most a minute on
        ids = sorted(r.workflow_id for r in await env.engine.list())
        assert ids == ["o@2030-01-01T01:00:00Z", "o@2030-01-01T02:00:00Z"]  # the 03:00 dropped
    finally:
        await env.stop()


async def test_overlap_cancel_running_cancels_then_starts() -> None:
    env, ids = await ticks_while_running(flows.Overlap.CANCEL_RUNNING)
    try:
        assert len(ids) == 3
        statuses = {r.workflow_id: r.status for r in await env.engine.list()}
        assert statuses[ids[0]] == flows.WorkflowStatus.CANCELLED
        assert statuses[ids[1]] == flows.WorkflowStatus.CANCELLED
        assert statuses[ids[2]] == flows.WorkflowStatus.RUNNING
    finally:
        await env.stop()


async def test_schedule_again_changes_nothing_and_an_update_recounts_ticks() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    async with TestEnvironment(workflows=[hello], start=start, time_skipping=False) as env:
        spec = flows.ScheduleSpec(every=timedelta(hours=1))
        made = await env.engine.schedule("s", hello, "a", spec=spec)
        env.clock.advance(timedelta(minutes=59, seconds=59))
        again = await env.engine.schedule("s", hello, "a", spec=spec)  # app restarted
        assert again == made
        changed = await env.engine.schedule("s", hello, "b", spec=spec)
        assert changed.input == "b"
        assert changed.next_fire_at == made.next_fire_at  # same spec: same ticks
        daily = await env.engine.update_schedule("s", spec=flows.ScheduleSpec(cron="@daily"))
        assert daily.input == "b"
        assert daily.next_fire_at == datetime(2030, 1, 2, tzinfo=UTC)


async def test_the_readme_schedules_snippet_runs() -> None:
    section = README.read_text().split("### Schedules\n", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python snippet in the README's Schedules section"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    await namespace["main"]()


class SchedulesBroken(MemoryStore):
    """A store whose schedule statements fail (say, a schema not yet migrated)."""

    async def claim_schedules(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise flows.StoreError('relation "schedules" does not exist')

    async def next_schedule_due(self, *args: Any, **kwargs: Any) -> Any:
        raise flows.StoreError('relation "schedules" does not exist')


async def test_a_failing_scheduler_does_not_stop_the_worker() -> None:
    store = SchedulesBroken()
    worker = flows.Worker(store, workflows=[hello], poll_interval=0.05)
    task = asyncio.ensure_future(worker.run())
    try:
        run = await flows.Engine(store, workflows=[hello]).start(hello, "still")
        assert await run.result(timeout=10) == "hello still"
        assert worker.counters["store_errors"] >= 1
    finally:
        await worker.stop()
        await task


async def test_update_needs_no_definition_and_a_too_long_id_is_refused() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    async with TestEnvironment(workflows=[hello], start=start, time_skipping=False) as env:
        spec = flows.ScheduleSpec(cron="@daily")
        await env.engine.schedule("s", hello, "a", spec=spec)
        operator = flows.Engine(env.store)  # knows no workflow (a CLI, a dashboard)
        updated = await operator.update_schedule("s", input="b")
        assert updated.input == "b"
        assert updated.workflow_name == "sched-hello"
        assert updated.next_fire_at == datetime(2030, 1, 2, tzinfo=UTC)
        hourly = await operator.update_schedule("s", spec=flows.ScheduleSpec(cron="@hourly"))
        assert hourly.input == "b"
        assert hourly.next_fire_at == datetime(2030, 1, 1, 1, tzinfo=UTC)
        with pytest.raises(flows.PayloadError):
            await env.engine.update_schedule("s", input=3)  # hello takes a str
        with pytest.raises(flows.InvalidArgument, match="schedule id is 201 characters"):
            await env.engine.schedule("x" * 201, hello, "a", spec=spec)
        with pytest.raises(flows.InvalidArgument, match="workflow id of a tick is 211 char"):
            await env.engine.schedule("x" * 190, hello, "a", spec=spec)
        with pytest.raises(flows.ScheduleNotFound):
            await operator.update_schedule("nope", input="b")
