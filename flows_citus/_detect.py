"""Which variant a database or schema is: ``detect`` (async) and ``detect_sync``, for
the layer that opens stores (the CLI) and chooses PostgreSQL or Citus once."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from flows_pg._base import Statements, drive_async, drive_sync, execute_on, store_error

from ._client_ops import detect_op

__all__ = ["detect", "detect_sync"]


async def detect(
    target: str | psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any],
    schema: str = "flows",
    *,
    migrate: bool = False,
) -> bool:
    """True if ``target`` (a DSN, an async connection or pool) is Citus for ``schema``:
    with ``migrate=True``, whether the database has the citus extension (what a
    migration needs to know); otherwise whether ``schema`` was migrated for Citus (it
    has its layout table). Database failures raise StoreUnavailable or StoreError."""
    op = detect_op(Statements(schema), extension=migrate)
    if isinstance(target, psycopg.AsyncConnection):
        return await drive_async(op, lambda batch: execute_on(target, batch))
    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            return await drive_async(op, lambda batch: execute_on(conn, batch))
    try:
        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
    except psycopg.Error as exc:
        raise store_error(exc) from exc
    async with conn:
        return await drive_async(op, lambda batch: execute_on(conn, batch))


def detect_sync(
    target: str | psycopg.Connection[Any], schema: str = "flows", *, migrate: bool = False
) -> bool:
    """``detect`` for sync code (a DSN or a ``psycopg.Connection``)."""
    op = detect_op(Statements(schema), extension=migrate)
    if isinstance(target, psycopg.Connection):
        return drive_sync(op, target)
    try:
        conn = psycopg.connect(target, autocommit=True)
    except psycopg.Error as exc:
        raise store_error(exc) from exc
    with conn:
        return drive_sync(op, conn)
