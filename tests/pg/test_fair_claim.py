"""Tenant fairness on PostgreSQL (``PostgresStore(fair_tenants=True)``): a tenant with a
large backlog does not delay a quiet tenant's new workflow beyond the next claim batch;
the plain claim (first in, first out) does. The fair claim stays index scans."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest_pg import drop_pg_store, make_pg_store

from flows_core.store import ClaimRequest
from flows_pg import PostgresStore
from flows_pg._records import cached_params
from flows_pg._sql_fair import FAIR_CLAIM
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit

pytestmark = pytest.mark.pg

BACKLOG = 300
BATCH = 10


def request(kit: Kit, limit: int = BATCH) -> ClaimRequest:
    return ClaimRequest(
        owner="w",
        workflow_types=[(kit.wf, 1)],
        activity_names=[],
        limit=limit,
        lease=timedelta(seconds=30),
    )


async def noisy_then_quiet(store: Any) -> tuple[Kit, str]:
    kit = Kit(Adapter("pg", store))
    for _ in range(BACKLOG):
        await kit.start(tenant="noisy")
    quiet = await kit.start(tenant="quiet")
    return kit, quiet.workflow_id


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo"])
async def test_a_quiet_tenant_is_served_in_the_next_batch(pg_dsn: str, fair: bool) -> None:
    store = await make_pg_store(pg_dsn, fair_tenants=fair)
    try:
        kit, quiet = await noisy_then_quiet(store)
        batch = await store.claim(request(kit))
        assert len(batch) == BATCH
        served = {c.lease.workflow_id for c in batch}
        assert (quiet in served) is fair  # first in, first out serves the backlog first
        if fair:  # the rest of the batch is the noisy tenant's oldest, in order
            noisy = [c for c in batch if c.lease.tenant_id == "noisy"]
            assert len(noisy) == BATCH - 1
            created = [c.workflow.created_at for c in noisy]  # type: ignore[union-attr]
            assert created == sorted(created)
    finally:
        await drop_pg_store(store)


async def test_turns_between_busy_tenants(pg_dsn: str) -> None:
    store = await make_pg_store(pg_dsn, fair_tenants=True)
    try:
        kit = Kit(Adapter("pg", store))
        for tenant, n in (("a", 30), ("b", 3), ("c", 1)):
            for _ in range(n):
                await kit.start(tenant=tenant)
        first = await store.claim(request(kit, limit=6))
        tenants = sorted(c.lease.tenant_id for c in first)
        assert tenants == ["a", "a", "a", "b", "b", "c"]  # turns: a b c, a b, a
        rest = await store.claim(request(kit, limit=100))
        assert len(first) + len(rest) == 34  # every task, once
    finally:
        await drop_pg_store(store)


async def test_fair_claim_plan_is_index_scans(pg_dsn: str) -> None:
    store: PostgresStore = await make_pg_store(pg_dsn, fair_tenants=True)
    try:
        kit, _ = await noisy_then_quiet(store)
        statement = store.statements(FAIR_CLAIM.replace("{shards}", ""))
        params = {
            "queues": [f"w:{kit.wf}:1"],
            "limit": BATCH,
            "tokens": [],
            "owner": "w",
            "lease": timedelta(seconds=30),
            "fresh_only": False,
            **cached_params([]),
        }
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(f"ANALYZE {store.statements.ident}.tasks")
            cur = await conn.execute("EXPLAIN (COSTS OFF) " + statement, params)
            plan = "\n".join(row[0] for row in await cur.fetchall())
        # the walk over tenants and each tenant's oldest tasks: index scans of the
        # tenant index (what follows, locking and leasing, is the plain claim's)
        turns = plan.split("CTE tn", 1)[1].split("CTE pick", 1)[0]
        assert turns.count("Index Scan using tasks_tenant_claim_idx") == 3, turns
        assert "Seq Scan" not in turns, turns
    finally:
        await drop_pg_store(store)
