"""The application side of transactional-activity tests: a table of effect rows that
transactional activities write, on each adapter.

Memory: the stand-in's table ``effects`` (``flows_memory.MemoryTransaction``), one row per
effect. PostgreSQL and Citus: a plain table in the store's schema (dropped with it); on
Citus a local table of the coordinator, so writing it next to the workflow's rows is a
multi-node transaction (``colocated()`` makes one distributed with the Flows tables).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from flows_core import Store
from flows_memory import MemoryStore


class EffectsApp:
    """The effect rows of one test. ``await insert(conn, key)`` in an async function,
    ``insert_sync(conn, key)`` in a sync one; ``await count(key)`` reads committed rows."""

    def __init__(self, store: Store, table: str = "effects") -> None:
        self.store = store
        self.memory = isinstance(store, MemoryStore)
        self.name = table
        schema = "" if self.memory else store.schema  # type: ignore[attr-defined]
        self.table = sql.Identifier(schema, table) if schema else sql.Identifier(table)

    @property
    def dsn(self) -> str:
        return str(self.store._conninfo)  # type: ignore[attr-defined]

    async def execute(self, statement: sql.Composable | str, params: Any = None) -> list[Any]:
        """Run one statement on its own connection (autocommit); its rows."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(statement, params)  # type: ignore[arg-type]
            return await cur.fetchall() if cur.description is not None else []

    async def create(self) -> None:
        if self.memory:
            return
        await self.execute(
            sql.SQL(
                "CREATE TABLE {} (key text NOT NULL, shard_key text NOT NULL DEFAULT '', note text)"
            ).format(self.table)
        )

    async def colocated(self) -> None:
        """Citus: distribute the table by ``shard_key`` colocated with the Flows tables."""
        table = f"{self.store.schema}.{self.name}"  # type: ignore[attr-defined]
        await self.store.distribute_colocated(table)  # type: ignore[attr-defined]

    async def insert(self, conn: Any, key: str, shard_key: str = "") -> None:
        if self.memory:
            conn.put(self.name, f"{key}#{uuid.uuid4().hex}", key)
            return
        await conn.execute(
            sql.SQL("INSERT INTO {} (key, shard_key) VALUES (%s, %s)").format(self.table),
            (key, shard_key),
        )

    def insert_sync(self, conn: Any, key: str, shard_key: str = "") -> None:
        if self.memory:
            conn.put(self.name, f"{key}#{uuid.uuid4().hex}", key)
            return
        conn.execute(
            sql.SQL("INSERT INTO {} (key, shard_key) VALUES (%s, %s)").format(self.table),
            (key, shard_key),
        )

    async def count(self, key: str) -> int:
        if self.memory:
            assert isinstance(self.store, MemoryStore)
            return sum(1 for v in self.store.app_tables.table(self.name).values() if v == key)
        rows = await self.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE key = %s").format(self.table), (key,)
        )
        return int(rows[0][0])
