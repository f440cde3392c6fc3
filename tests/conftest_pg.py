"""PostgreSQL fixtures and helpers, shared by tests/pg and the contract suite.

* ``pg_dsn`` (session): ``$FLOWS_TEST_DSN`` if set, else an embedded PostgreSQL 18
  started once per session in a temporary directory; skips with the reason otherwise.
* ``make_pg_store(dsn)``: a migrated, opened ``PostgresStore`` on a fresh schema (close
  it, and drop the schema with ``drop_pg_store``, when done).

Use from a conftest: ``from conftest_pg import make_pg_store, pg_dsn  # noqa: F401``
(tests/ is on sys.path because tests/conftest.py exists and tests/ is not a package).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["drop_pg_store", "fresh_schema", "make_pg_store", "pg_dsn"]


def fresh_schema(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def _check(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("SELECT 1")


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server DSN for the whole session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'flows[pg]')")
    env = os.environ.get("FLOWS_TEST_DSN")
    if env:
        try:
            _check(env)
        except Exception as exc:
            pytest.skip(f"FLOWS_TEST_DSN is set but unreachable: {exc}")
        yield env
        return
    from flows_pg import embedded

    data_dir = tmp_path_factory.mktemp("pg") / "data"
    try:
        dsn = embedded.ensure_started(data_dir)
        _check(dsn)
    except Exception as exc:
        pytest.skip(f"no FLOWS_TEST_DSN and the embedded PostgreSQL did not start: {exc}")
    try:
        yield dsn
    finally:
        embedded.stop(data_dir, delete=True)


async def make_pg_store(dsn: str, schema: str | None = None, **kwargs: Any) -> Any:
    """An opened PostgresStore on a freshly migrated schema (a new one unless given)."""
    from flows_pg import PostgresStore

    store = PostgresStore(dsn, schema=schema or fresh_schema(), **kwargs)
    await store.open()
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


async def drop_pg_store(store: Any) -> None:
    """Close ``store`` and drop its schema."""
    import psycopg
    from psycopg import sql

    await store.close()
    async with await psycopg.AsyncConnection.connect(store.pool.conninfo, autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store.schema))
        )
