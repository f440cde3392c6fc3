"""Schema upgrade with workflows in flight (issue 17, item 4).

The previous release (commit ``PREVIOUS``, taken from the repository's history with
``git archive``) migrates a fresh schema with its own migrations, starts workflows and
runs a worker until each waits on its timer or its signal; that worker is SIGKILLed.
Then, while a second worker of the old release runs against the schema, today's
``flows migrate`` upgrades it. The old worker keeps working on the upgraded schema; new
workers take over, and every workflow ends with its expected output, each activity
result recorded once, nothing parked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import flows_core as flows
from flows_core.events import ActivityCompleted
from flows_core.store import WorkflowStatus
from flows_pg import PostgresStore
from flows_pg._migrate import load_migrations
from tests.contract.checks import assert_history_invariants
from tests.upgrade.upgrade_app import (
    ACTIVITIES,
    SIGNAL,
    WORKFLOWS,
    OrderIn,
    approval_for,
    expected_output,
    order,
)

pytestmark = pytest.mark.pg

PREVIOUS = "2a2af42"
"""Main before the session that added migration 003: its flows_pg ships 001 (and the
Citus and RLS files, not applied on plain PostgreSQL)."""

HERE = Path(__file__).resolve().parent
OLD_SIDE = HERE / "old_side.py"
COUNT = 6
STEP_TIMEOUT = 60.0


def repository_root() -> Path:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no git repository around {HERE}: {exc}")
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree of commit PREVIOUS, extracted with ``git archive``."""
    root = repository_root()
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], cwd=root, capture_output=True
    )
    if found.returncode != 0:
        pytest.skip(
            f"commit {PREVIOUS} (the previous release) is not in this clone's history "
            "(a shallow clone?): fetch the full history to run the upgrade test"
        )
    target = tmp_path_factory.mktemp("previous_release")
    archive = subprocess.run(
        ["git", "archive", PREVIOUS], cwd=root, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@dataclass
class OldProcess:
    """A process running the previous release's code (see old_side.py)."""

    proc: asyncio.subprocess.Process
    stderr_path: Path

    async def line(self) -> Any:
        """The next JSON line it prints (fails with its stderr if it ends first)."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), STEP_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"old process silent; stderr:\n{self.stderr()}") from None
        if not raw:
            await self.proc.wait()
            raise AssertionError(
                f"old process ended ({self.proc.returncode}); stderr:\n{self.stderr()}"
            )
        return json.loads(raw)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    async def end(self, sig: int | None) -> int:
        """Its exit code, after sending ``sig`` (None: wait for it to exit by itself)."""
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), STEP_TIMEOUT)


@pytest.fixture
async def old_processes(previous_release: Path, tmp_path: Path) -> AsyncIterator[list[OldProcess]]:
    started: list[OldProcess] = []
    yield started
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


async def spawn_old(
    release: Path, started: list[OldProcess], tmp_path: Path, *args: str
) -> OldProcess:
    env = dict(os.environ, PYTHONPATH=str(release))
    stderr_path = tmp_path / f"old-{len(started)}-{args[0]}.err"
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(OLD_SIDE),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
    p = OldProcess(proc, stderr_path)
    started.append(p)
    return p


async def applied_versions(dsn: str, schema: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version").format(
                sql.Identifier(schema)
            )
        )
        return [row[0] for row in await cur.fetchall()]


async def test_flows_migrate_with_old_workers_running_and_workflows_in_flight(
    pg_dsn: str, previous_release: Path, old_processes: list[OldProcess], tmp_path: Path
) -> None:
    old_files = sorted(p.name for p in (previous_release / "flows_pg/migrations").iterdir())
    assert old_files == ["001_init.sql", "002_citus.sql", "100_rls.sql"]
    schema = f"up_{os.urandom(6).hex()}"
    old = str(previous_release)

    # 1. The old release migrates, starts COUNT workflows, runs them until they wait.
    setup = await spawn_old(
        previous_release, old_processes, tmp_path, "setup", pg_dsn, schema, str(COUNT)
    )
    ready = await setup.line()
    assert ready["flows_core"].startswith(old)
    assert ready["flows_pg"].startswith(old)
    assert ready["applied"] == [1], "the previous release applies migration 001 only"
    ids = [f"up-{i}" for i in range(COUNT)]
    assert set(ready["waiting"].values()) == {"signal", "timer"}
    assert await setup.end(signal.SIGKILL) == -signal.SIGKILL

    # Two more, started by the old release and never run by it.
    late_ids = ["up-late-0", "up-late-1"]
    starter = await spawn_old(
        previous_release, old_processes, tmp_path, "start", pg_dsn, schema, *late_ids
    )
    assert (await starter.line())["started"] == late_ids
    assert await starter.end(None) == 0, starter.stderr()

    # 2. A second old worker runs while today's `flows migrate` upgrades the schema.
    old_worker = await spawn_old(
        previous_release, old_processes, tmp_path, "worker", pg_dsn, schema
    )
    assert (await old_worker.line())["flows_core"].startswith(old)
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flows_cli",
        "--dsn",
        pg_dsn,
        "--schema",
        schema,
        "migrate",
        "--no-citus",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(migrate.communicate(), STEP_TIMEOUT)
    assert migrate.returncode == 0, out.decode(errors="replace")
    today = [m.version for m in load_migrations()]
    assert today[0] == 1
    assert len(today) > 1, "today's release has migrations after 001"
    assert await applied_versions(pg_dsn, schema) == today

    store = PostgresStore(pg_dsn, schema=schema)
    await store.open()
    try:
        assert await store.is_migrated()
        engine = flows.Engine(store, workflows=WORKFLOWS)

        # 3. The old worker still works on the upgraded schema: it finishes one alone.
        await engine.signal("up-0", SIGNAL, approval_for("up-0"))
        finished = await engine.wait_for_result("up-0", timeout=STEP_TIMEOUT, type_=str)
        assert finished == expected_output("up-0")
        assert old_worker.proc.returncode is None, old_worker.stderr()

        # 4. New workers take over; the old one is stopped; the rest get their signals.
        new_worker = flows.Worker(
            store,
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            poll_interval=0.1,
            lease=timedelta(seconds=2),
        )
        running = asyncio.create_task(new_worker.run())
        try:
            assert await old_worker.end(signal.SIGTERM) == 0, old_worker.stderr()
            fresh = await engine.start(
                order, OrderIn(order_id="up-new", delay=0.2), workflow_id="up-new"
            )
            everyone = [*ids, *late_ids, fresh.workflow_id]
            for wf_id in everyone[1:]:
                await engine.signal(wf_id, SIGNAL, approval_for(wf_id))
            for wf_id in everyone:
                result = await engine.wait_for_result(wf_id, timeout=STEP_TIMEOUT, type_=str)
                assert result == expected_output(wf_id)
        finally:
            await new_worker.stop()
            await running

        # 5. Every history is sound, each activity result recorded once, none parked.
        for wf_id in everyone:
            info = await engine.query(wf_id)
            assert info.status == WorkflowStatus.COMPLETED, (wf_id, info)
            history = await engine.history(wf_id)
            assert_history_invariants(history)
            completed = [e.seq for e in history if isinstance(e, ActivityCompleted)]
            assert len(completed) == 2 == len(set(completed)), (wf_id, history)
        assert await engine.list(status=WorkflowStatus.PARKED) == []
        assert len(await engine.list(limit=100)) == len(everyone)
    finally:
        await store.close()
