"""Flow control with real processes: three worker processes share one ``max_concurrent``
limit, on PostgreSQL and on Citus; the one holding every slot is SIGKILLed. The largest
number of runs of the limited step observed at once (from the intervals the runs record,
in the database's clock) never exceeds the limit, and every workflow finishes: the
killed holder's slots are taken over once its leases run out."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, make_pg_store

import flows_core as flows

from .limits_app import MAX_CONCURRENT, limits_wf, runs_table
from .test_crash import kill, wait_for

pytestmark = [pytest.mark.slow]

APP = Path(__file__).with_name("limits_app.py")
WORKFLOWS = 12


@pytest.fixture(
    params=[
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("citus", marks=pytest.mark.citus),
    ]
)
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, object]]:
    kind: str = request.param
    dsn = request.getfixturevalue("pg_dsn" if kind == "pg" else "citus_dsn")
    store = await (make_pg_store(dsn) if kind == "pg" else make_citus_store(dsn))
    store.limits_kind = kind
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (id serial PRIMARY KEY, n int, pid int, "
                "started timestamptz NOT NULL, ended timestamptz)"
            ).format(runs_table(store.schema))
        )
    try:
        yield dsn, store
    finally:
        await (drop_pg_store(store) if kind == "pg" else drop_citus_store(store))


def spawn(dsn: str, store: object, mode: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APP.parent), *sys.path]),
        "LIMITS_STORE": getattr(store, "limits_kind", "pg"),
    }
    return subprocess.Popen(
        [sys.executable, str(APP), dsn, store.schema, mode, "1.0"],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def runs(dsn: str, schema: str) -> list[tuple[int, int, object, object]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            psycopg.sql.SQL("SELECT n, pid, started, ended FROM {}").format(runs_table(schema))
        )
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


def most_at_once(intervals: list[tuple[object, object]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at
    the same instant: touching intervals do not overlap)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def test_max_concurrent_holds_across_processes_and_kills(
    limited: tuple[str, object],
) -> None:
    dsn, store = limited
    schema: str = store.schema  # type: ignore[attr-defined]
    engine = flows.Engine(store)  # type: ignore[arg-type]
    ids = [(await engine.start(limits_wf, n)).workflow_id for n in range(WORKFLOWS)]
    victim = spawn(dsn, store, "slow")
    others: list[subprocess.Popen[str]] = []
    try:

        async def victim_holds_every_slot() -> bool:
            return sum(1 for _, pid, _, _ in await runs(dsn, schema) if pid == victim.pid) >= (
                MAX_CONCURRENT
            )

        await wait_for(victim_holds_every_slot, 60, "the victim to hold every slot")
        others = [spawn(dsn, store, "normal") for _ in range(2)]

        async def others_waiting() -> bool:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {}.limit_waiters").format(
                        psycopg.sql.Identifier(schema)
                    )
                )
                row = await cur.fetchone()
                return row is not None and row[0] > 0

        await wait_for(others_waiting, 60, "the other workers to wait for a slot")
        kill(victim)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # the killed runs ended with their process
            await conn.execute(
                psycopg.sql.SQL(
                    "UPDATE {} SET ended = clock_timestamp() WHERE pid = %s AND ended IS NULL"
                ).format(runs_table(schema)),
                (victim.pid,),
            )
        for wf_id in ids:
            assert isinstance(await engine.wait_for_result(wf_id, timeout=120), int)
    finally:
        for proc in [victim, *others]:
            kill(proc)
    found = await runs(dsn, schema)
    assert all(ended is not None for _, _, _, ended in found)
    assert {n for n, pid, _, _ in found if pid != victim.pid} == set(range(WORKFLOWS))
    killed = [r for r in found if r[1] == victim.pid]
    assert len(killed) == MAX_CONCURRENT, "the victim ran only while it held the slots"
    assert len({pid for _, pid, _, _ in found}) >= 2
    observed = most_at_once([(s, e) for _, _, s, e in found])
    assert observed <= MAX_CONCURRENT, f"{observed} runs of the limited step at once"
    assert observed == MAX_CONCURRENT  # the limit was reached: the test could fail
