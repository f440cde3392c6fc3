"""CitusStore beyond the contract suite: the migration, the layout, tenant sharding and
its fair claims, and starting a workflow inside the application's own transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from conftest_citus import drop_citus_store
from conftest_pg import fresh_schema
from psycopg import sql

import flows_core as flows
from flows_citus import CitusLayout, CitusStore
from flows_core.store import ClaimRequest
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit

pytestmark = pytest.mark.citus

TABLES = (
    "workflows",
    "history",
    "inbox",
    "tasks",
    "workers",
    "outbox",
    "delivery_keys",
    "runs",
    "run_history",
    "schedules",
    "pending_starts",
)
LIMIT_TABLES = ("limit_slots", "limit_waiters", "limit_rates")
"""Flow control (012_limits_citus): distributed by bucket, colocated with each other."""


def distribution(dsn: str, schema: str) -> dict[str, tuple[str, str | None, int]]:
    """table -> (method, distribution column, colocation id) from pg_dist_partition."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT c.relname, p.partmethod,
                      column_to_column_name(p.logicalrelid, p.partkey), p.colocationid
               FROM pg_dist_partition p
               JOIN pg_class c ON c.oid = p.logicalrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s""",
            (schema,),
        ).fetchall()
    return {name: (method, column, colocation) for name, method, column, colocation in rows}


async def test_migration_distributes_every_table_by_shard_key_colocated(
    store: Any, citus_dsn: str
) -> None:
    found = distribution(citus_dsn, store.schema)
    assert {name: found[name][:2] for name in TABLES} == {
        name: ("h", "shard_key") for name in TABLES
    }
    assert len({found[name][2] for name in TABLES}) == 1, "all colocated with workflows"
    assert {name: found[name][:2] for name in LIMIT_TABLES} == {
        name: ("h", "bucket") for name in LIMIT_TABLES
    }
    assert len({found[name][2] for name in LIMIT_TABLES}) == 1, "limit tables colocated"
    assert found["layout"][0] == "n", "the layout is a reference table (written once)"
    assert set(found) == {*TABLES, *LIMIT_TABLES, "layout"}, "nothing else, nothing elsewhere"


async def test_migration_is_idempotent_and_targets_the_configured_schema(
    citus_dsn: str,
) -> None:
    schema = fresh_schema("cm")
    store = CitusStore(citus_dsn, schema=schema)
    try:
        assert await store.migrate(shards=16) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        assert await store.migrate(shards=16) == []
        again = CitusStore(citus_dsn, schema=schema)
        assert await again.migrate() == []
        await again.close()
        assert set(distribution(citus_dsn, schema)) == {*TABLES, *LIMIT_TABLES, "layout"}
    finally:
        await drop_citus_store(store)


async def test_layout_is_read_by_every_store_and_cannot_change_once_used(
    store: Any, citus_dsn: str
) -> None:
    assert store.layout == CitusLayout(8, "tenant")
    other = CitusStore(citus_dsn, schema=store.schema)
    await other.open()
    try:
        assert other.layout == store.layout, "a second process reads the same layout"
        engine = flows.Engine(other)
        wf = flows.workflow("noop")(_noop)
        await engine.start(wf, None, workflow_id="x", tenant_id="acme")
        with pytest.raises(flows.InvalidArgument, match="cannot change"):
            await other.migrate(shards=32)
        assert await other.migrate(shards=8, sharding="tenant") == []
        with pytest.raises(flows.InvalidArgument, match="shards must be"):
            await other.migrate(shards=0)
    finally:
        await other.close()


async def _noop(ctx: flows.WorkflowContext, _: None) -> None:
    return None


async def test_engine_places_workflows_with_the_store_layout(store: Any) -> None:
    wf = flows.workflow("placed")(_noop)
    engine = flows.Engine(store)
    run = await engine.start(wf, None, workflow_id="p1", tenant_id="acme")
    record = await store.get_workflow("acme", run.workflow_id)
    assert record.shard_key == store.layout.locate("acme", "p1")
    wrong = flows.Engine(store, sharder=flows.HashSharder(9))
    with pytest.raises(flows.InvalidArgument, match="follows from its tenant and id"):
        await wrong.start(wf, None, workflow_id="p2", tenant_id="acme")
    with pytest.raises(flows.WorkflowAlreadyExists):
        await engine.start(wf, None, workflow_id="p1", tenant_id="acme")


def tenants_on_other_shards(layout: CitusLayout, noisy: str, count: int) -> list[str]:
    noisy_key = layout.tenant_keys(noisy)[0]
    quiet: list[str] = []
    for n in range(1000):
        name = f"quiet-{n}"
        key = layout.tenant_keys(name)[0]
        if key != noisy_key and all(layout.tenant_keys(q)[0] != key for q in quiet):
            quiet.append(name)
        if len(quiet) == count:
            return quiet
    raise AssertionError("not enough shards")


async def test_a_noisy_tenant_fills_only_its_own_shard(store: Any) -> None:
    """Tenant sharding: 200 waiting workflows of one tenant sit in its shard; each claim
    still serves every other shard with work, so the quiet tenants wait for none of them."""
    kit = Kit(Adapter("citus", store))
    noisy = "noisy"
    quiet = tenants_on_other_shards(store.layout, noisy, 4)
    for _ in range(200):
        await kit.start(tenant=noisy)
    quiet_ids = {(await kit.start(tenant=t)).workflow_id for t in quiet}
    stats = await store.stats()
    assert stats.queue_depth[store.layout.tenant_keys(noisy)[0]] == 200
    request = ClaimRequest(
        owner="w",
        workflow_types=[(kit.wf, 1)],
        activity_names=[],
        limit=8,
        lease=flows_timedelta(30),
    )
    first = await store.claim(request)
    assert len(first) == 8
    assert quiet_ids <= {c.lease.workflow_id for c in first}, "one claim served every shard"


def flows_timedelta(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


async def start_then_roll_back(
    conn: psycopg.AsyncConnection[Any], engine: flows.Engine, wf: Any, table: sql.Composable
) -> None:
    async with conn.transaction():
        await conn.execute(sql.SQL("INSERT INTO {} VALUES ('acme', 'o2')").format(table))
        await engine.start(wf, None, workflow_id="o2", tenant_id="acme", tx=conn)
        raise RuntimeError("the application changes its mind")


async def test_start_inside_the_application_transaction(store: Any, citus_dsn: str) -> None:
    """tx=: the workflow exists if and only if the application's transaction commits,
    together with the application's own (distributed) row."""
    wf = flows.workflow("in-tx")(_noop)
    engine = flows.Engine(store)
    app_table = sql.Identifier(store.schema, "orders")
    async with await psycopg.AsyncConnection.connect(citus_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (tenant text, id text, PRIMARY KEY (tenant, id))").format(
                app_table
            )
        )
        await conn.execute(
            "SELECT create_distributed_table(%s, 'tenant')", (f"{store.schema}.orders",)
        )
        async with conn.transaction():
            await conn.execute(sql.SQL("INSERT INTO {} VALUES ('acme', 'o1')").format(app_table))
            await engine.start(wf, None, workflow_id="o1", tenant_id="acme", tx=conn)
        assert (await store.get_workflow("acme", "o1")).status == "running"
        with pytest.raises(RuntimeError, match="changes its mind"):
            await start_then_roll_back(conn, engine, wf, app_table)
        with pytest.raises(flows.WorkflowNotFound):
            await store.get_workflow("acme", "o2")
        rows = await (await conn.execute(sql.SQL("SELECT id FROM {}").format(app_table))).fetchall()
        assert rows == [("o1",)]
    worker = flows.Worker(store, workflows=[wf], poll_interval=0.1)
    task = asyncio.ensure_future(worker.run())
    try:
        assert await engine.wait_for_result("o1", tenant_id="acme", timeout=20) is None
    finally:
        await worker.stop()
        await task
