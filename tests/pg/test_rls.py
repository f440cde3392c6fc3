"""Optional row-level security: an application role sees and writes only its tenant's rows.

The store (the tables' owner) writes for every tenant as usual; a separate, non-owner
role (``SET ROLE`` on the test's connection: RLS applies to it even when the session
user is a superuser) is limited by ``flows.tenant_id`` even in raw SQL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
import psycopg
import pytest
from conftest_pg import drop_pg_store, fresh_schema, make_pg_store
from psycopg import errors as pg_errors
from psycopg import sql

import flows_core as flows
from flows_pg import PostgresStore, SyncClient, migrate, set_tenant, set_tenant_sync

pytestmark = pytest.mark.pg

TENANT_TABLES = ("workflows", "history", "inbox", "tasks", "schedules", "pending_starts")
CHILDREN_TABLES = ("outbox", "delivery_keys")
"""Tables of migration 005 (child workflows, once-only delivery): policies from 101."""
RUN_TABLES = ("runs", "run_history")
"""Tables of migration 007 (continue-as-new): under RLS too (102_runs_rls)."""
T = TypeVar("T")


class Greet(msgspec.Struct):
    name: str


@flows.workflow("rls-greet")
async def greet(ctx: flows.WorkflowContext, inp: Greet) -> str:
    word = await ctx.wait_for_signal("word", str, timeout=timedelta(seconds=60))
    return f"{word} {inp.name}"


@pytest.fixture(scope="module")
def app_role(pg_dsn: str) -> Iterator[str]:
    """A NOLOGIN role the test's session may SET ROLE to; dropped at the end."""
    role = f"flows_app_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(role)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        try:
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            superuser = bool((row.fetchone() or (False,))[0])
            if not superuser:
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        except psycopg.Error as exc:
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
            pytest.skip(f"cannot make a role to SET ROLE to: {exc}")
        try:
            yield role
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.fixture
async def rls_store(pg_dsn: str, app_role: str) -> AsyncIterator[PostgresStore]:
    store: PostgresStore = await make_pg_store(pg_dsn)
    try:
        assert await store.migrate(rls=True) == [100, 101, 102, 103, 105]
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            s, r = sql.Identifier(store.schema), sql.Identifier(app_role)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
            for table in (*TENANT_TABLES, *CHILDREN_TABLES):
                conn.execute(
                    sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {}.{} TO {}").format(
                        s, sql.Identifier(table), r
                    )
                )
        yield store
    finally:
        await drop_pg_store(store)


def app_connect(dsn: str, role: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    conn.commit()
    return conn


async def seed(store: PostgresStore) -> dict[str, str]:
    """One workflow per tenant, each with a signal waiting in its inbox, a schedule and a
    debounced start."""
    engine = flows.Engine(store)
    ids = {}
    for tenant in ("A", "B"):
        run = await engine.start(greet, Greet(tenant), tenant_id=tenant)
        await engine.signal(run.workflow_id, "word", "hi", tenant_id=tenant)
        ids[tenant] = run.workflow_id
        spec = flows.ScheduleSpec(cron="0 3 * * *")
        await engine.schedule("nightly", greet, Greet(tenant), spec=spec, tenant_id=tenant)
        await engine.start(
            greet, Greet(tenant), tenant_id=tenant, debounce=timedelta(hours=1), debounce_key="k"
        )
    return ids


def as_tenant(conn: psycopg.Connection[Any], tenant: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a transaction of ``conn`` that declared ``tenant`` (None: none)."""
    with conn.transaction():
        if tenant is not None:
            set_tenant_sync(conn, tenant)
        return fn()


def tenants_seen(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    query = sql.SQL("SELECT tenant_id FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return [row[0] for row in conn.execute(query).fetchall()]


async def test_rls_migration_is_optional_versioned_and_idempotent(pg_dsn: str) -> None:
    schema = fresh_schema("rls")
    try:
        assert await migrate(pg_dsn, schema) == [1, 3, 4, 5, 7, 9, 11, 13]
        assert await migrate(pg_dsn, schema, rls=True) == [100, 101, 102, 103, 105]
        assert await migrate(pg_dsn, schema, rls=True) == []
        assert await migrate(pg_dsn, schema) == []
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
                " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' ORDER BY 1",
                (schema,),
            ).fetchall()
            enabled = {name for name, on, _ in rows if on}
            assert enabled == {*TENANT_TABLES, *CHILDREN_TABLES, *RUN_TABLES}
            assert not any(force for _, _, force in rows)
            policies = conn.execute(
                "SELECT tablename FROM pg_policies WHERE schemaname = %s", (schema,)
            ).fetchall()
            assert sorted(p[0] for p in policies) == sorted(
                (*TENANT_TABLES, *CHILDREN_TABLES, *RUN_TABLES)
            )
        # Concurrent runners on a fresh schema: each migration applied once.
        other = fresh_schema("rls")
        try:
            results = await asyncio.gather(*(migrate(pg_dsn, other, rls=True) for _ in range(5)))
            expected = [1, 3, 4, 5, 7, 9, 11, 13, 100, 101, 102, 103, 105]
            assert sorted(v for r in results for v in r) == expected
        finally:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def test_cli_migrate_rls(pg_dsn: str) -> None:
    schema = fresh_schema("rls")
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DSN"}
    cmd = [sys.executable, "-m", "flows_cli", "--dsn", pg_dsn, "--schema", schema, "migrate"]
    try:
        done = await asyncio.to_thread(
            subprocess.run, [*cmd, "--rls"], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(pg_dsn) as conn:
            versions = conn.execute(
                sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY 1").format(
                    sql.Identifier(schema)
                )
            ).fetchall()
        assert [v[0] for v in versions] == [1, 3, 4, 5, 7, 9, 11, 13, 100, 101, 102, 103, 105]
        store = PostgresStore(pg_dsn, schema=schema)
        async with store:
            assert await store.is_migrated()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def test_app_role_sees_only_its_tenant(
    pg_dsn: str, rls_store: PostgresStore, app_role: str
) -> None:
    await seed(rls_store)
    schema = rls_store.schema

    def app() -> None:
        with app_connect(pg_dsn, app_role) as conn:
            with conn.transaction():
                set_tenant_sync(conn, "A")
                for table in TENANT_TABLES:
                    seen = tenants_seen(conn, schema, table)
                    assert seen, table
                    assert set(seen) == {"A"}, table
                    # Even asking for B by name finds nothing.
                    query = sql.SQL("SELECT count(*) FROM {}.{} WHERE tenant_id = 'B'").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                    assert conn.execute(query).fetchone() == (0,)
            with conn.transaction():
                # No tenant declared (and the setting of the last one has ended).
                for table in TENANT_TABLES:
                    assert tenants_seen(conn, schema, table) == [], table
            with conn.transaction():
                set_tenant_sync(conn, "C")
                for table in TENANT_TABLES:
                    assert tenants_seen(conn, schema, table) == [], table
            # Not granted: workers and schema_migrations are the library's own.
            with pytest.raises(pg_errors.InsufficientPrivilege), conn.transaction():
                conn.execute(sql.SQL("SELECT * FROM {}.workers").format(sql.Identifier(schema)))

    await asyncio.to_thread(app)

    # The owner (the store, the workers' role) still sees every tenant.
    await assert_owner_sees_both(rls_store)


async def assert_owner_sees_both(store: PostgresStore) -> None:
    async with store.pool.connection() as conn:
        for table in TENANT_TABLES:
            cur = await conn.execute(
                sql.SQL("SELECT DISTINCT tenant_id FROM {}.{} ORDER BY 1").format(
                    sql.Identifier(store.schema), sql.Identifier(table)
                )
            )
            assert [r[0] for r in await cur.fetchall()] == ["A", "B"], table


async def test_app_role_cannot_write_another_tenant(
    pg_dsn: str, rls_store: PostgresStore, app_role: str
) -> None:
    ids = await seed(rls_store)
    s = sql.Identifier(rls_store.schema)

    insert = sql.SQL(
        "INSERT INTO {}.history (shard_key, tenant_id, workflow_id, position, event)"
        " VALUES ('x', %s, %s, 99, '{{}}')"
    ).format(s)
    move = sql.SQL("UPDATE {}.workflows SET tenant_id = 'B' WHERE workflow_id = %s").format(s)
    touch_b = sql.SQL("UPDATE {}.workflows SET status = 'failed' WHERE tenant_id = 'B'").format(s)

    def app() -> None:
        with app_connect(pg_dsn, app_role) as conn:
            # INSERT of a B row while A is declared: refused by WITH CHECK.
            with pytest.raises(pg_errors.InsufficientPrivilege):
                as_tenant(conn, "A", lambda: conn.execute(insert, ("B", ids["B"])))
            # Moving an A row to B: refused.
            with pytest.raises(pg_errors.InsufficientPrivilege):
                as_tenant(conn, "A", lambda: conn.execute(move, (ids["A"],)))
            # With no tenant declared, no write at all.
            with pytest.raises(pg_errors.InsufficientPrivilege):
                as_tenant(conn, None, lambda: conn.execute(insert, ("A", ids["A"])))
            with conn.transaction():
                set_tenant_sync(conn, "A")
                # B's rows are invisible to UPDATE and DELETE: nothing happens.
                for table in TENANT_TABLES:
                    cur = conn.execute(
                        sql.SQL("DELETE FROM {}.{} WHERE tenant_id = 'B'").format(
                            s, sql.Identifier(table)
                        )
                    )
                    assert cur.rowcount == 0, table
                assert conn.execute(touch_b).rowcount == 0

    await asyncio.to_thread(app)
    await assert_owner_sees_both(rls_store)
    info = await flows.Engine(rls_store).query(ids["B"], tenant_id="B")
    assert info.status == flows.WorkflowStatus.RUNNING


async def test_app_role_starts_through_sync_client(
    pg_dsn: str, rls_store: PostgresStore, app_role: str
) -> None:
    client = SyncClient(schema=rls_store.schema, workflows=[greet])

    def app() -> str:
        with app_connect(pg_dsn, app_role) as conn:
            with conn.transaction():
                set_tenant_sync(conn, "A")
                wid = client.start(greet, Greet("ada"), tenant_id="A", tx=conn)
                client.signal(wid, "word", "hello", tenant_id="A", tx=conn)
                assert client.query(wid, tenant_id="A", tx=conn).status == (
                    flows.WorkflowStatus.RUNNING
                )
            # The declared tenant is the only one it can start for, read or signal.
            with pytest.raises(flows.StoreError) as refused:
                as_tenant(
                    conn, "A", lambda: client.start(greet, Greet("eve"), tenant_id="B", tx=conn)
                )
            assert isinstance(refused.value.__cause__, pg_errors.InsufficientPrivilege)
            with pytest.raises(flows.WorkflowNotFound):
                as_tenant(conn, "B", lambda: client.query(wid, tenant_id="A", tx=conn))
            with pytest.raises(flows.WorkflowNotFound):
                as_tenant(
                    conn, None, lambda: client.signal(wid, "word", "x", tenant_id="A", tx=conn)
                )
            return wid

    wid = await asyncio.to_thread(app)
    # The worker runs as the owner and serves every tenant.
    worker = flows.Worker(rls_store, workflows=[greet], poll_interval=0.05)
    task = asyncio.ensure_future(worker.run())
    try:
        result = await flows.Engine(rls_store).wait_for_result(wid, tenant_id="A", timeout=20)
    finally:
        await worker.stop()
        await task
    assert result == "hello ada"


async def test_app_role_starts_through_engine_tx(
    pg_dsn: str, rls_store: PostgresStore, app_role: str
) -> None:
    engine = flows.Engine(rls_store)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app_role)))
        await conn.commit()
        async with conn.transaction():
            await set_tenant(conn, "B")
            run = await engine.start(greet, Greet("bob"), tenant_id="B", tx=conn)
            await engine.signal(run.workflow_id, "word", "hey", tenant_id="B", tx=conn)

        async def start_for_a_as_b() -> None:
            async with conn.transaction():
                await set_tenant(conn, "B")
                await engine.start(greet, Greet("eve"), tenant_id="A", tx=conn)

        with pytest.raises(flows.StoreError) as refused:
            await start_for_a_as_b()
        assert isinstance(refused.value.__cause__, pg_errors.InsufficientPrivilege)
    info = await engine.query(run.workflow_id, tenant_id="B")
    assert info.status == flows.WorkflowStatus.RUNNING


def test_set_tenant_needs_a_transaction(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(ValueError, match="open transaction"):
            set_tenant_sync(conn, "A")
        with conn.transaction():
            set_tenant_sync(conn, "A")
            row = conn.execute("SELECT current_setting('flows.tenant_id', true)").fetchone()
            assert row == ("A",)
        row = conn.execute("SELECT current_setting('flows.tenant_id', true)").fetchone()
        assert row in {("",), (None,)}
        with pytest.raises(flows.InvalidArgument):
            as_tenant(conn, "", lambda: None)


async def test_children_tables_have_the_tenant_policy(
    rls_store: PostgresStore, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = %s",
            (rls_store.schema,),
        ).fetchall()
        enabled = conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relrowsecurity",
            (rls_store.schema,),
        ).fetchall()
    for table in CHILDREN_TABLES:
        assert (table, "flows_tenant") in rows
        assert (table,) in enabled
