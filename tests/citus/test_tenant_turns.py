"""Tenant fairness on Citus, to match PostgreSQL's ``fair_tenants``: with tenant sharding
every claim gives each shard key that has work a share of its batch, so a quiet tenant
whose key differs from a noisy one's is served in the next claim batch whatever the
noisy tenant's backlog."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest_citus import drop_citus_store, make_citus_store

from flows_core.store import ClaimRequest
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit

pytestmark = pytest.mark.citus

BACKLOG = 300
BATCH = 10


async def test_a_quiet_tenant_is_served_in_the_next_batch(citus_dsn: str) -> None:
    store = await make_citus_store(citus_dsn)  # sharding="tenant", 8 keys
    try:
        kit = Kit(Adapter("citus", store))
        quiet_tenant = next(
            t
            for t in (f"quiet-{i}" for i in range(100))
            if store.sharder.key_for(kit.wf, "", t) != store.sharder.key_for(kit.wf, "", "noisy")
        )
        for _ in range(BACKLOG):
            await kit.start(tenant="noisy")
        quiet = await kit.start(tenant=quiet_tenant)
        request = ClaimRequest(
            owner="w",
            workflow_types=[(kit.wf, 1)],
            activity_names=[],
            limit=BATCH,
            lease=timedelta(seconds=30),
        )
        batch = await store.claim(request)
        assert len(batch) == BATCH
        assert quiet.workflow_id in {c.lease.workflow_id for c in batch}
    finally:
        await drop_citus_store(store)
