"""Fixtures of the PostgreSQL adapter tests: one migrated schema per test module.

``pg_dsn`` comes from tests/conftest.py (one server per session).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from conftest_pg import fresh_schema, make_pg_store
from psycopg import sql

from flows_pg import PostgresStore

__all__ = ["module_schema", "store"]


@pytest.fixture(scope="module")
def module_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema for this test module, dropped at the end."""
    schema = fresh_schema("m")
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
async def store(pg_dsn: str, module_schema: str) -> AsyncIterator[PostgresStore]:
    s: PostgresStore = await make_pg_store(pg_dsn, module_schema)
    try:
        yield s
    finally:
        await s.close()
