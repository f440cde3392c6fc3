"""``flows fsck`` against a real PostgreSQL, as a process: exit 0 and a clean summary on
a healthy schema; damage planted with raw SQL gives one line per finding naming the
workflow and the damage, a summary, and exit status 1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest_pg import drop_pg_store, fresh_schema, make_pg_store

from tests.cli.test_cli_pg import flows, ok, one_line_error
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit
from tests.contract.test_contract_fsck import Healthy, Planter, healthy

pytestmark = pytest.mark.pg


async def _setup(dsn: str, schema: str) -> tuple[Any, Kit, Healthy]:
    store = await make_pg_store(dsn, schema)
    kit = Kit(Adapter("pg", store))
    return store, kit, await healthy(kit)


def test_fsck_clean_then_damaged(pg_dsn: str) -> None:
    schema = fresh_schema("fsck")
    loop = asyncio.new_event_loop()
    store, kit, made = loop.run_until_complete(_setup(pg_dsn, schema))
    try:
        clean = flows(pg_dsn, "fsck", schema=schema)
        assert ok(clean).splitlines() == ["fsck: 4 workflows checked, no damage found"]

        planter = Planter(kit)
        loop.run_until_complete(planter.delete_tasks(made.waiting))
        loop.run_until_complete(planter.delete_row(made.fresh))

        damaged = flows(pg_dsn, "fsck", schema=schema)
        assert damaged.returncode == 1, damaged.stderr
        lines = damaged.stdout.splitlines()
        assert lines[:-1] == [
            f"{kit.tenant}/{made.waiting}: stuck: running with no workflow, activity or "
            "timer task and no signal wait",
            f"{kit.tenant}/{made.fresh}: orphan-task: 1 task rows under shard "
            f"{kit.shard!r} of a workflow that does not exist",
        ]
        assert lines[-1] == "fsck: 3 workflows checked, 2 findings (1 orphan-task, 1 stuck)"
        one_line_error(damaged, "2 findings: the store is damaged")

        other = flows(pg_dsn, "fsck", "--tenant", kit.other_tenant, schema=schema)
        assert ok(other).splitlines() == ["fsck: 0 workflows checked, no damage found"]
        limited = flows(pg_dsn, "fsck", "--limit", "1", schema=schema)
        assert "fsck: 1 workflows checked" in limited.stdout

        bad = flows(pg_dsn, "fsck", "--limit", "0", schema=schema)
        assert bad.returncode == 2
        one_line_error(bad, "--limit must be at least 1")
    finally:
        loop.run_until_complete(drop_pg_store(store))
        loop.close()
