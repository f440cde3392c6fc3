"""The replay check before a deploy: the export format, ``flows.Replayer`` and
``flows.check_histories`` over a store's histories (a MemoryStore here; it stores what
PostgreSQL stores and the check uses only the public Store protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from history_support import T0, started_event

import flows_core as flows
from flows_core.events import Event, WorkflowCompleted, encode_event
from flows_memory import TestEnvironment
from tests.golden import workflows as w

GOLDEN = Path(__file__).parent / "golden"


@flows.workflow("rp-echo")
async def echo(ctx: flows.WorkflowContext, n: int) -> int:
    doubled = await ctx.execute(w.double, n)
    if n % 2:
        await ctx.wait_for_signal("go", str)
    return doubled


@flows.workflow("rp-echo")
async def echo_changed(ctx: flows.WorkflowContext, n: int) -> int:
    """The same name and version, changed: its first step takes another input."""
    doubled = await ctx.execute(w.double, n + 1)
    if n % 2:
        await ctx.wait_for_signal("go", str)
    return doubled


@pytest.fixture
async def env() -> AsyncIterator[TestEnvironment]:
    async with TestEnvironment(
        workflows=[echo], activities=w.ACTIVITIES, start=T0, time_skipping=False
    ) as environment:
        yield environment


async def start_echoes(env: TestEnvironment, numbers: range, *, tenant: str | None = None) -> None:
    for n in numbers:
        await env.engine.start(echo, n, workflow_id=f"echo-{n}", tenant_id=tenant)
    await env.wait_idle()


# -- the export format --


async def test_export_then_load_gives_back_the_stored_history(env: TestEnvironment) -> None:
    await start_echoes(env, range(2))
    for n, status in ((0, "completed"), (1, "running")):
        data = await flows.export_history(env.store, flows.DEFAULT_TENANT, f"echo-{n}")
        header = msgspec.json.decode(data)
        assert {
            k: header[k] for k in ("format", "tenant_id", "workflow_id", "name", "version")
        } == {
            "format": 1,
            "tenant_id": flows.DEFAULT_TENANT,
            "workflow_id": f"echo-{n}",
            "name": "rp-echo",
            "version": 1,
        }
        assert header["status"] == status
        stored = await env.store.get_history(flows.DEFAULT_TENANT, f"echo-{n}")
        loaded = flows.load_history(data)
        assert loaded.events == stored
        assert loaded.to_json() == data
        # the events are written as stored, byte for byte
        for line, event in zip(data.splitlines()[1:-1], stored, strict=True):
            assert line.rstrip(b",") == encode_event(event)


async def test_export_of_an_unknown_workflow_says_not_found(env: TestEnvironment) -> None:
    with pytest.raises(flows.WorkflowNotFound):
        await flows.export_history(env.store, flows.DEFAULT_TENANT, "nope")


def test_load_takes_a_bare_array_of_events() -> None:
    events = [started_event("rp-echo", 0)]
    data = b"[" + b",".join(encode_event(e) for e in events) + b"]"
    loaded = flows.load_history(data.decode())
    assert loaded.events == events
    assert (loaded.workflow_id, loaded.name, loaded.status) == ("wf-1", "rp-echo", None)


def export_text(**changes: Any) -> bytes:
    header: dict[str, Any] = {
        "format": 1,
        "tenant_id": "t",
        "workflow_id": "wf-1",
        "name": "rp-echo",
        "version": 1,
        "events": [msgspec.json.decode(encode_event(started_event("rp-echo", 0)))],
    }
    header.update(changes)
    return msgspec.json.encode({k: v for k, v in header.items() if v is not None})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"nonsense", "not a history export"),
        (b"[1, 2]", "not a history"),
        (b"[]", "starts with WorkflowStarted; this one starts with nothing"),
        (export_text(format=99), "format 99 is not known"),
        (export_text(format="1"), "not a history export"),
        (export_text(workflow_id="other"), "header says"),
        (export_text(events=None), "does not decode"),
        (
            export_text(events=[{"type": "timer_fired", "seq": 1, "at": "2030-01-01T00:00:00Z"}]),
            "starts with WorkflowStarted; this one starts with TimerFired",
        ),
        (
            export_text(events=[{"type": "no_such_event", "at": "2030-01-01T00:00:00Z"}]),
            "does not decode",
        ),
    ],
)
def test_load_refuses_what_is_not_a_history_and_says_why(data: bytes, message: str) -> None:
    with pytest.raises(flows.InvalidArgument, match=message):
        flows.load_history(data)


# -- Replayer --


def test_replay_file_and_json(tmp_path: Path) -> None:
    data = (GOLDEN / "failed.json").read_bytes()
    target = tmp_path / "copy.json"
    target.write_bytes(data)
    replayer = flows.Replayer(w.WORKFLOWS + w.ACTIVITIES)
    assert replayer.replay_file(target).check().finished
    assert replayer.replay_json(data.decode()).check().finished


def test_a_version_the_code_does_not_have_is_reported() -> None:
    result = flows.Replayer([echo]).replay_file(GOLDEN / "failed.json")
    assert result.problem is not None
    assert result.problem.kind == "not_registered"
    assert "'golden-fail' v1 is not in the code (it has: rp-echo v1)" in result.problem.message


def history_of(code: Any, *extra: Event) -> list[Event]:
    return [started_event(code.name, 3), *extra]


def test_code_that_now_raises_a_bug_is_reported_as_a_code_error() -> None:
    @flows.workflow("rp-buggy")
    async def buggy(ctx: flows.WorkflowContext, n: int) -> int:
        return n + "1"  # type: ignore[operator]

    problem = flows.Replayer([buggy]).replay(history_of(buggy)).problem
    assert problem is not None
    assert problem.kind == "code_error"
    assert "TypeError" in problem.message


def test_code_that_now_uses_asyncio_is_reported() -> None:
    @flows.workflow("rp-asyncio")
    async def sleeper(ctx: flows.WorkflowContext, n: int) -> int:
        await asyncio.sleep(1)
        return n

    problem = flows.Replayer([sleeper]).replay(history_of(sleeper)).problem
    assert problem is not None
    assert problem.kind == "illegal_await"


def test_code_that_no_longer_ends_where_the_history_ended_is_reported() -> None:
    @flows.workflow("rp-longer")
    async def longer(ctx: flows.WorkflowContext, n: int) -> int:
        await ctx.sleep(timedelta(hours=1))
        return n

    ended = history_of(longer, WorkflowCompleted(output=msgspec.Raw(b"3"), at=T0))
    problem = flows.Replayer([longer]).replay(ended).problem
    assert problem is not None
    assert problem.kind == "nondeterminism"
    assert problem.step == 1
    assert problem.recorded is not None
    assert problem.recorded.startswith('{"type":"workflow_completed"')
    assert problem.now is not None
    assert problem.now.startswith('{"type":"timer_started","seq":1')
    assert "history records the end of the run" in str(problem)


def test_code_whose_types_no_longer_read_the_history_is_reported() -> None:
    @flows.workflow("rp-retyped")
    async def retyped(ctx: flows.WorkflowContext, n: str) -> str:
        return n

    problem = flows.Replayer([retyped]).replay(history_of(retyped)).problem
    assert problem is not None
    assert problem.kind == "payload_error"
    assert "input of 'rp-retyped' does not match str" in problem.message
    assert problem.now is not None
    assert problem.now.startswith('{"type":"workflow_failed"')


def test_replaying_nothing_is_refused() -> None:
    with pytest.raises(flows.InvalidArgument, match="starts with WorkflowStarted"):
        flows.Replayer([echo]).replay([])


# -- check_histories --


async def test_check_replays_every_history_and_passes_unchanged_code(
    env: TestEnvironment,
) -> None:
    await start_echoes(env, range(6))
    report = await flows.check_histories(env.store, [echo, *w.ACTIVITIES])
    assert report.ok, report.text()
    assert (report.checked, report.skipped, report.exit_code) == (6, 0, 0)
    assert report.histories_per_second > 0
    assert report.text().startswith("replayed 6 histories in ")
    assert "histories/s): 6 ok, 0 with problems" in report.text()


async def test_check_reports_each_divergence_and_exits_1(env: TestEnvironment) -> None:
    await start_echoes(env, range(4))
    report = await flows.check_histories(env.store, [echo_changed])
    assert report.exit_code == 1
    assert sorted(p.workflow_id for p in report.problems) == [f"echo-{n}" for n in range(4)]
    for problem in report.problems:
        n = int(problem.workflow_id.removeprefix("echo-"))
        assert (problem.kind, problem.step) == ("nondeterminism", 1)
        assert problem.recorded is not None
        assert f'"input":{n}' in problem.recorded
        assert problem.now is not None
        assert f'"input":{n + 1}' in problem.now
        assert str(problem) in report.text()


async def test_check_filters(env: TestEnvironment) -> None:
    await start_echoes(env, range(4))  # created at T0; odd ones still run
    env.clock.advance(timedelta(days=1))
    await start_echoes(env, range(4, 6))  # created a day later
    await start_echoes(env, range(6, 7), tenant="t2")

    async def checked(**filters: Any) -> list[str]:
        found: list[str] = []
        report = await flows.check_histories(
            env.store,
            [echo],
            page_size=2,
            on_result=lambda result: found.append(result.workflow_id),
            **filters,
        )
        assert report.ok
        assert report.checked == len(found)
        return sorted(found)

    assert await checked() == [f"echo-{n}" for n in range(7)]
    assert await checked(tenant_id="t2") == ["echo-6"]
    assert await checked(statuses=["running"]) == ["echo-1", "echo-3", "echo-5"]
    assert await checked(statuses=[flows.WorkflowStatus.COMPLETED], tenant_id="default") == [
        "echo-0",
        "echo-2",
        "echo-4",
    ]
    assert await checked(names=["rp-other"]) == []
    assert await checked(names=["rp-echo"], older_than=timedelta(hours=12)) == [
        f"echo-{n}" for n in range(4)
    ]
    assert await checked(newer_than=timedelta(hours=12)) == ["echo-4", "echo-5", "echo-6"]
    assert len(await checked(limit=3)) == 3
    assert await checked(ids=["echo-2", "echo-6"]) == ["echo-2", "echo-6"]
    assert await checked(ids=["echo-2", "echo-6"], tenant_id="default") == ["echo-2"]


async def test_check_names_the_ids_it_does_not_find(env: TestEnvironment) -> None:
    await start_echoes(env, range(1))
    for tenant in (None, flows.DEFAULT_TENANT):
        report = await flows.check_histories(
            env.store, [echo], ids=["echo-0", "ghost"], tenant_id=tenant
        )
        assert (report.checked, report.not_found) == (1, ["ghost"])
        assert "not found: ghost" in report.text()


async def test_a_running_run_of_a_version_the_code_dropped_is_a_problem(
    env: TestEnvironment,
) -> None:
    await start_echoes(env, range(2))
    report = await flows.check_histories(env.store, [w.fail])
    assert report.skipped == 1  # echo-0 finished: nothing will replay it
    assert [(p.workflow_id, p.kind) for p in report.problems] == [("echo-1", "not_registered")]


@pytest.mark.parametrize("bad", [{"limit": 0}, {"page_size": 0}, {"statuses": ["sleeping"]}])
async def test_check_refuses_bad_filters(env: TestEnvironment, bad: dict[str, Any]) -> None:
    with pytest.raises(flows.InvalidArgument, match=str(next(iter(bad.values())))):
        await flows.check_histories(env.store, [echo], **bad)
