"""Crash tests with real processes: SIGKILL mid-activity and mid-commit, and a
PostgreSQL restart mid-run. Another worker must finish every workflow, each activity
result recorded exactly once, no step scheduled twice."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from checks import assert_history_invariants
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, make_pg_store

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityScheduled

from .crash_app import (
    Tally,
    crash_entity,
    crash_parent,
    crash_wf,
    effect,
    effects_table,
    poison_wf,
    tick_wf,
)

pytestmark = [pytest.mark.slow]

APP = Path(__file__).with_name("crash_app.py")
STEPS = 3


@pytest.fixture(
    params=[
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("citus", marks=pytest.mark.citus),
    ]
)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(store kind, server DSN): every crash test runs on PostgreSQL and on Citus."""
    kind: str = request.param
    return kind, request.getfixturevalue("pg_dsn" if kind == "pg" else "citus_dsn")


@pytest.fixture
def dsn(backend: tuple[str, str]) -> str:
    return backend[1]


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[object]:
    kind, dsn = backend
    s = await (make_pg_store(dsn) if kind == "pg" else make_citus_store(dsn))
    s.crash_kind = kind
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (workflow_id text, step int, pid int, "
                "at timestamptz DEFAULT now())"
            ).format(effects_table(s.schema))
        )
    try:
        yield s
    finally:
        await (drop_pg_store(s) if kind == "pg" else drop_citus_store(s))


def spawn(dsn: str, store: object, mode: str, lease: float = 1.0) -> subprocess.Popen[str]:
    """A worker process on ``store``'s schema (a PostgresStore or a CitusStore)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APP.parent), *sys.path]),
        "CRASH_STORE": getattr(store, "crash_kind", "pg"),
    }
    proc = subprocess.Popen(
        [sys.executable, str(APP), dsn, store.schema, mode, str(lease)],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def effects(dsn: str, schema: str) -> list[tuple[str, int, int]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            psycopg.sql.SQL("SELECT workflow_id, step, pid FROM {}").format(effects_table(schema))
        )
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def assert_all_done_exactly_once(engine: flows.Engine, ids: list[str]) -> None:
    for wf_id in ids:
        assert await engine.wait_for_result(wf_id, timeout=60) == sum(range(1, STEPS + 1))
        history = await engine.history(wf_id)
        assert_history_invariants(history)
        scheduled = Counter(e.seq for e in history if isinstance(e, ActivityScheduled))
        recorded = Counter(e.seq for e in history if isinstance(e, ActivityCompleted))
        assert len(scheduled) == STEPS, history
        assert set(scheduled.values()) == {1}, "a step was scheduled twice"
        assert recorded == scheduled, "an activity result was not recorded exactly once"


async def test_worker_killed_inside_activity_is_finished_by_another(dsn: str, store) -> None:  # type: ignore[no-untyped-def]
    engine = flows.Engine(store)
    ids = [(await engine.start(crash_wf, STEPS)).workflow_id for _ in range(6)]
    victim = spawn(dsn, store, "slow")
    rescuer = None
    try:

        async def all_blocked() -> bool:
            rows = await effects(dsn, store.schema)
            return len({w for w, step, _ in rows if step == 1}) == len(ids)

        await wait_for(all_blocked, 30, "the victim to be inside step 1 of every workflow")
        kill(victim)
        rescuer = spawn(dsn, store, "normal")
        await assert_all_done_exactly_once(engine, ids)
    finally:
        kill(victim)
        if rescuer is not None:
            kill(rescuer)
    rows = await effects(dsn, store.schema)
    runs = Counter((w, step) for w, step, _ in rows)
    assert all(runs[(w, 1)] == 2 for w in ids), "step 1 ran in the victim and again in the rescuer"
    assert all(runs[(w, 0)] == 1 for w in ids), "step 0 was recorded before the kill: not re-run"


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.002, 0.01])
async def test_worker_killed_during_commit(dsn: str, store, delay: float) -> None:  # type: ignore[no-untyped-def]
    engine = flows.Engine(store)
    ids = [(await engine.start(crash_wf, STEPS)).workflow_id for _ in range(4)]
    victim = spawn(dsn, store, f"die-in-commit:{delay}")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    rescuer = spawn(dsn, store, "normal")
    try:
        await assert_all_done_exactly_once(engine, ids)
    finally:
        kill(rescuer)


async def outbox_rows(dsn: str, schema: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}.outbox").format(psycopg.sql.Identifier(schema))
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def assert_children_done_once(
    engine: flows.Engine, dsn: str, schema: str, parent: str, children: int
) -> None:
    """The parent got every child's result; each child started once and ran its steps
    once; nothing is left in the outbox."""
    assert await engine.wait_for_result(parent, timeout=60) == children * sum(range(1, STEPS + 1))
    started = await engine.list(name="crash-wf", id_prefix=f"{parent}/")
    assert sorted(c.workflow_id for c in started) == sorted(
        f"{parent}/child-{seq}" for seq in range(1, children + 1)
    )
    await assert_all_done_exactly_once(engine, [c.workflow_id for c in started])
    assert_history_invariants(await engine.history(parent))

    async def drained() -> bool:
        return await outbox_rows(dsn, schema) == 0

    await wait_for(drained, 30, "the outbox to be empty")


@pytest.mark.parametrize("delay", [0.0, 0.002])
async def test_parent_killed_while_committing_a_child_start(dsn: str, store, delay: float) -> None:  # type: ignore[no-untyped-def]
    """The parent's worker dies between deciding the child starts and (maybe) committing
    them: the task is replayed by another worker and each child is started once."""
    engine = flows.Engine(store)
    parent = (await engine.start(crash_parent, 3)).workflow_id
    victim = spawn(dsn, store, f"die-in-child-commit:{delay}")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    rescuer = spawn(dsn, store, "normal")
    try:
        await assert_children_done_once(engine, dsn, store.schema, parent, 3)
    finally:
        kill(rescuer)


async def test_worker_killed_between_child_start_and_outbox_delete(dsn: str, store) -> None:  # type: ignore[no-untyped-def]
    """The worker delivering the parent's outbox dies right after a child's start is
    written, before the message is deleted: another worker delivers it again (the start
    finds its own child there: nothing changes) and the rest, once."""
    engine = flows.Engine(store)
    parent = (await engine.start(crash_parent, 3)).workflow_id
    victim = spawn(dsn, store, "die-after-child-start")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    assert await outbox_rows(dsn, store.schema) == 3
    rescuer = spawn(dsn, store, "normal")
    try:
        await assert_children_done_once(engine, dsn, store.schema, parent, 3)
    finally:
        kill(rescuer)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01])
async def test_worker_killed_around_the_continue_as_new_commit(  # type: ignore[no-untyped-def]
    dsn: str, store, delay: float
) -> None:
    """Killed right after sending a commit that continues as new (before, during or
    after it reaches the database): another worker goes on, and each workflow has
    exactly one new run per continue, every signal consumed once, in order."""
    engine = flows.Engine(store)
    ids = [(await engine.start(crash_entity, Tally(every=2))).workflow_id for _ in range(4)]
    for wf_id in ids:
        for value in (1, 2, 3, 4, 5, -1):
            await engine.signal(wf_id, "add", value)
    victim = spawn(dsn, store, f"die-in-continue:{delay}")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    rescuer = spawn(dsn, store, "normal")
    try:
        for wf_id in ids:
            assert await engine.wait_for_result(wf_id, timeout=60) == [1, 2, 3, 4, 5]
            runs = await engine.runs(wf_id)
            assert [r.run_number for r in runs] == [1, 2, 3]
            assert [r.status for r in runs] == ["continued", "continued", "completed"]
            for info in runs:
                history = await engine.history(wf_id, run_number=info.run_number)
                assert_history_invariants(history)
                assert len(history) == info.history_length
    finally:
        kill(rescuer)


@pytest.mark.pg
async def test_postgres_restart_mid_run(tmp_path: Path) -> None:
    from flows_pg import embedded

    data = tmp_path / "pg"
    try:
        dsn = embedded.ensure_started(data)
    except Exception as exc:
        pytest.skip(f"the embedded PostgreSQL is needed to restart a server: {exc}")
    try:
        s = await make_pg_store(dsn)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                psycopg.sql.SQL(
                    "CREATE TABLE {} (workflow_id text, step int, pid int, "
                    "at timestamptz DEFAULT now())"
                ).format(effects_table(s.schema))
            )
        os.environ.update(CRASH_DSN=dsn, CRASH_SCHEMA=s.schema)
        engine = flows.Engine(s)
        ids = [(await engine.start(crash_wf, STEPS)).workflow_id for _ in range(20)]
        worker = flows.Worker(
            s,
            workflows=[crash_wf],
            activities=[effect],
            poll_interval=0.1,
            lease=timedelta(seconds=2),
            concurrency=4,
        )
        task = asyncio.ensure_future(worker.run())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(embedded.stop, data)
        await asyncio.sleep(1.0)
        dsn2 = await asyncio.to_thread(embedded.ensure_started, data)
        assert dsn2 == dsn
        try:
            await assert_all_done_exactly_once(engine, ids)
        finally:
            await worker.stop()
            await task
        # The outage reached the worker: as store errors it backed off from, or, when it
        # was waiting for a pooled connection all along, as connections its pool lost or
        # failed to open (it then just waited the outage out).
        pool = s.pool.get_stats()
        lost = pool.get("connections_lost", 0) + pool.get("connections_errors", 0)
        assert worker.counters["store_errors"] + lost > 0, "the worker never saw the outage"
        await s.close()
    finally:
        embedded.stop(data, delete=True)


async def test_poison_task_that_kills_workers_is_dead_lettered(dsn: str, store) -> None:  # type: ignore[no-untyped-def]
    """A workflow whose task kills the worker process each time is dead-lettered after
    max_workflow_task_attempts lease expiries; the other workflows keep flowing."""
    engine = flows.Engine(store)
    poison = await engine.start(poison_wf, None)
    ids = [(await engine.start(crash_wf, STEPS)).workflow_id for _ in range(6)]
    os.environ["CRASH_MAX_WF_ATTEMPTS"] = "3"
    deaths = 0
    proc = spawn(dsn, store, "normal", lease=0.5)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (await engine.query(poison.workflow_id)).status != flows.WorkflowStatus.PARKED:
            assert loop.time() < deadline, "the poison workflow was never dead-lettered"
            if proc.poll() is not None:
                assert proc.returncode == 17, proc.stderr.read() if proc.stderr else ""
                deaths += 1
                proc = spawn(dsn, store, "normal", lease=0.5)  # a restart
            await asyncio.sleep(0.05)
        await assert_all_done_exactly_once(engine, ids)
        assert proc.poll() is None, "the worker died after the dead-lettering"
    finally:
        os.environ.pop("CRASH_MAX_WF_ATTEMPTS", None)
        kill(proc)
    assert deaths == 3
    info = await engine.query(poison.workflow_id)
    assert info.error is not None
    assert info.error.type == "WorkflowTaskCrashed"
    assert info.error.attempts == 3
    assert [d.workflow_id for d in await engine.dead_letters()] == [poison.workflow_id]
    assert len(await engine.history(poison.workflow_id)) == 1


async def test_scheduler_killed_mid_tick_leaves_one_workflow_per_tick(dsn: str, store) -> None:  # type: ignore[no-untyped-def]
    """A scheduler SIGKILLed after starting a tick's workflow and before advancing the
    schedule: the next claimant fires that tick again (the same workflow id: a no-op) and
    goes on; every tick from the first to the last has exactly one workflow."""
    engine = flows.Engine(store, workflows=[tick_wf])
    spec = flows.ScheduleSpec(every=timedelta(seconds=1), overlap=flows.Overlap.ALLOW_ALL)
    await engine.schedule("crash-tick", tick_wf, "x", spec=spec)

    async def tick_ids() -> list[str]:
        found = await engine.list(id_prefix="crash-tick@", limit=1000)
        return sorted(w.workflow_id for w in found)

    victim = spawn(dsn, store, "die-in-tick")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    fired_by_victim = await tick_ids()
    assert fired_by_victim, "the victim started a tick's workflow before it died"
    assert (await engine.get_schedule("crash-tick")).last_workflow_id is None  # not advanced
    rescuer = spawn(dsn, store, "normal")
    try:

        async def went_on() -> bool:
            info = await engine.get_schedule("crash-tick")
            return info.last_workflow_id is not None and len(await tick_ids()) >= 4

        await wait_for(went_on, 60, "the rescuer to fire the schedule's ticks")
        await engine.pause_schedule("crash-tick")
        await asyncio.sleep(1.5)  # a claim under way when paused ends
        ids = await tick_ids()
        for wf_id in ids:
            assert await engine.wait_for_result(wf_id, timeout=60) == "tick of x"
    finally:
        kill(rescuer)
    assert set(fired_by_victim) <= set(ids)
    ticks = [datetime.strptime(i.split("@")[1], "%Y-%m-%dT%H:%M:%SZ") for i in ids]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks)), ids
    assert len(set(ids)) == len(ids)


async def test_firer_killed_after_a_debounced_start_leaves_one_workflow(dsn: str, store) -> None:  # type: ignore[no-untyped-def]
    """A worker SIGKILLed after starting a closed debounce window's workflow and before
    deleting the window's row: the next worker claims the row once its lease runs out,
    finds the workflow started (the same id: a no-op) and deletes the row. One workflow
    ran, with the window's last input."""
    engine = flows.Engine(store, workflows=[tick_wf])
    window = timedelta(seconds=1)
    runs = [
        await engine.start(tick_wf, name, debounce=window, debounce_key="crash-deb")
        for name in ("a", "b", "c")
    ]
    assert len({r.workflow_id for r in runs}) == 1
    victim = spawn(dsn, store, "die-in-debounce")
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    record = await store.get_workflow(flows.DEFAULT_TENANT, runs[0].workflow_id)
    assert record.status in (flows.WorkflowStatus.RUNNING, flows.WorkflowStatus.COMPLETED)
    assert await runs[0].pending() is not None  # the row outlived its firer
    rescuer = spawn(dsn, store, "normal")
    try:

        async def row_gone() -> bool:
            return await runs[0].pending() is None

        await wait_for(row_gone, 60, "the rescuer to finish the window")
        assert await runs[-1].result(timeout=60) == "tick of c"
    finally:
        kill(rescuer)
    found = await engine.list(id_prefix="crash-deb@", limit=100)
    assert [w.workflow_id for w in found] == [runs[0].workflow_id]
