"""Transactional activities under SIGKILL: a worker process is killed 200 times at
random points of its transactional activities (before, during and after their SQL, and
while their result and the commit are being written); then every effect row exists
exactly once per step and every result is recorded once.

The worker processes are forked from a preloaded fork server (multiprocessing
"forkserver"), so a kill/restart cycle costs milliseconds of startup, not a fresh
interpreter. Each kill aims at one of the four points (the process marks where it is
in a shared integer; the kill follows 0-10 ms after it gets there), and the test reports
where the kills landed.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from checks import assert_history_invariants
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, make_pg_store
from psycopg import sql

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityScheduled

from .txact_crash_app import EXPECTED, GATHERED, STEPS, Phase, run_worker, txcrash_wf

pytestmark = [pytest.mark.slow]

KILLS = int(os.environ.get("FLOWS_TXACT_KILLS", "200"))
LEASE = 0.4
RUNNING = 6
"""Workflows kept in progress while the kills go on."""
AIMED = [Phase.BEFORE_SQL, Phase.DURING_SQL, Phase.AFTER_SQL, Phase.COMMIT]


@pytest.fixture(
    params=[
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("citus", marks=pytest.mark.citus),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    kind: str = request.param
    dsn = request.getfixturevalue("pg_dsn" if kind == "pg" else "citus_dsn")
    made = await (make_pg_store(dsn) if kind == "pg" else make_citus_store(dsn))
    made.crash_kind = kind
    made.crash_dsn = dsn
    try:
        yield made
    finally:
        await (drop_pg_store(made) if kind == "pg" else drop_citus_store(made))


async def test_sigkill_during_transactional_activities_never_doubles_an_effect(
    store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, schema, citus = store.crash_dsn, store.schema, store.crash_kind == "citus"
    table = f"{schema}.tx_effects"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (workflow_id text, step int)").format(
                sql.Identifier(schema, "tx_effects")
            )
        )
    context = multiprocessing.get_context("forkserver")
    app = f"{__package__}.txact_crash_app"
    context.set_forkserver_preload(["psycopg", "psycopg_pool", "flows_pg", "flows_citus", app])
    phase = context.Value("i", 0, lock=False)
    engine = flows.Engine(store)
    started: list[str] = []
    landed: Counter[str] = Counter()
    rng = random.Random(13)

    async def top_up() -> None:
        done = 0
        for wf_id in started[-RUNNING:]:
            info = await engine.query(wf_id)
            done += info.status != flows.WorkflowStatus.RUNNING
        for _ in range(max(RUNNING - (len(started[-RUNNING:]) - done), 0)):
            started.append((await engine.start(txcrash_wf, table)).workflow_id)

    for _ in range(KILLS):
        await top_up()
        phase.value = Phase.OTHER
        proc = context.Process(target=run_worker, args=(dsn, schema, LEASE, phase, citus))
        proc.start()
        # Aim at a point of a transactional activity: wait until the process reaches
        # it, then kill it a random moment (0-10 ms) later.
        target = rng.choice(AIMED)
        deadline = asyncio.get_running_loop().time() + 3.0
        while phase.value != target and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        await asyncio.sleep(rng.uniform(0, 0.01))
        proc.kill()
        landed[Phase(phase.value).name] += 1
        await asyncio.to_thread(proc.join, 10)
        assert proc.exitcode == -9
    # A last worker, never killed, finishes everything.
    survivor = context.Process(target=run_worker, args=(dsn, schema, LEASE, phase, citus))
    survivor.start()
    try:
        for wf_id in started:
            assert await engine.wait_for_result(wf_id, timeout=120) == EXPECTED
    finally:
        survivor.terminate()
        await asyncio.to_thread(survivor.join, 10)

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT workflow_id, step, count(*) FROM {} GROUP BY 1, 2").format(
                sql.Identifier(schema, "tx_effects")
            )
        )
        rows = {(w, s): n for w, s, n in await cur.fetchall()}
    steps = [*range(STEPS), *GATHERED]
    expected = {(w, s) for w in started for s in steps}
    assert set(rows) == expected, "an effect is missing or belongs to no step"
    doubled = {k: n for k, n in rows.items() if n != 1}
    assert not doubled, f"effects not exactly once: {doubled}"
    recorded_total = 0
    for wf_id in started:
        history = await engine.history(wf_id)
        assert_history_invariants(history)
        scheduled = Counter(e.seq for e in history if isinstance(e, ActivityScheduled))
        recorded = Counter(e.seq for e in history if isinstance(e, ActivityCompleted))
        assert recorded == scheduled, history
        assert set(recorded.values()) == {1}, history
        recorded_total += sum(recorded.values())
    with capsys.disabled():
        print(
            f"\ntxact crash ({store.crash_kind}): {KILLS} SIGKILLs landed {dict(landed)}; "
            f"{len(started)} workflows, {len(rows)} effect rows, each exactly once; "
            f"{recorded_total} results, each recorded once"
        )
