"""Listings page through an index in listing order at any depth: no sort of the table.

A schema of its own gets 30,000 workflow rows (written by SQL, as a backlog would be;
3 tenants, 3 names, 5 statuses, so that each listing matches thousands of rows), is
ANALYZEd, and each listing shape, with a keyset cursor deep into it, is EXPLAINed: an
index scan on one of migration 004's listing indexes (in listing order) under the LIMIT,
and no Sort node. (Page times at a million rows are a benchmark's business, not a
test's.)
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import psycopg
import pytest

from flows_core.store import ListQuery, WorkflowStatus
from flows_pg import PostgresStore, _sql, migrate
from flows_pg._base import Statements

ROWS = 30_000

FILL = """
INSERT INTO {S}.workflows (shard_key, tenant_id, workflow_id, name, version, status, input,
  history_length, next_seq, created_at, updated_at)
SELECT 'n-shard-0', 'tenant-' || (g %% 3), 'wf-' || md5(g::text), 'name-' || (g / 3 %% 3), 1,
  (ARRAY['running', 'completed', 'completed', 'failed', 'parked'])[1 + g / 9 %% 5], '1', 1, 1,
  timestamptz '2026-01-01 00:00:00+00' + (g || ' ms')::interval, now()
FROM generate_series(1, %(rows)s) g
"""

DEEP = (datetime.fromisoformat("2026-01-01T00:00:10+00:00"), "wf-8")
"""A cursor a third of the way down the listing."""

LISTING_INDEXES = {
    "workflows_list_idx",
    "workflows_list_status_idx",
    "workflows_list_name_idx",
    "workflows_list_all_idx",
    "workflows_list_all_status_idx",
}
"""Migration 004's indexes, each in listing order (the planner picks among them)."""

SHAPES = {
    "every tenant": ListQuery(tenant_id=None),
    "every tenant, by status": ListQuery(tenant_id=None, status=WorkflowStatus.PARKED),
    "every tenant, by name": ListQuery(tenant_id=None, name="name-2"),
    "one tenant": ListQuery(tenant_id="tenant-1"),
    "one tenant, by status": ListQuery(tenant_id="tenant-1", status=WorkflowStatus.FAILED),
    "one tenant, by name": ListQuery(tenant_id="tenant-1", name="name-2"),
    "one tenant, id prefix and time range": ListQuery(
        tenant_id="tenant-1",
        id_prefix="wf-a",
        created_from=datetime.fromisoformat("2026-01-01T00:00:01+00:00"),
        created_to=datetime.fromisoformat("2026-01-01T00:00:20+00:00"),
    ),
}


@pytest.fixture(scope="module")
def backlog(pg_dsn: str, module_schema: str) -> str:
    """This module's schema, migrated and filled with ROWS workflow rows."""
    asyncio.run(migrate(pg_dsn, module_schema))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        statements = Statements(module_schema)
        conn.execute(statements(FILL), {"rows": ROWS})
        conn.execute(statements("ANALYZE {S}.workflows"))
    return module_schema


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("deep", [False, True], ids=["first page", "deep page"])
async def test_a_listing_is_an_index_scan_without_a_sort(
    backlog: str, store: PostgresStore, pg_dsn: str, shape: str, deep: bool
) -> None:
    query = SHAPES[shape]
    query = ListQuery(
        tenant_id=query.tenant_id,
        status=query.status,
        name=query.name,
        id_prefix=query.id_prefix,
        created_from=query.created_from,
        created_to=query.created_to,
        after=DEEP if deep else None,
        limit=40,
    )
    statement = store.statements(_sql.list_workflows_sql(query))
    params = _sql.list_params(query) | {"limit": query.limit, "offset": 0}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        plan = [str(row[0]) for row in conn.execute("EXPLAIN " + statement, params)]
    text = "\n".join(plan)
    assert plan[0].startswith("Limit"), text
    used = re.findall(r"Index Scan using (\w+) on workflows w", text)
    assert used, text
    assert used[0] in LISTING_INDEXES, text
    assert "Sort" not in text, text
    assert "Seq Scan on workflows" not in text, text
    rows = await store.list_workflows(query)
    assert len(rows) == 40
    keys = [(r.created_at, r.workflow_id) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert all(query.matches(r) for r in rows)
