"""Versioned, idempotent schema migrations, safe to run from many processes at once.

Migration files live in ``flows_pg/migrations`` (``NNN_name.sql``; the repository's
``migrations/`` is a link to it). ``{schema}`` in a file is replaced by the schema name,
validated against ``^[a-z_][a-z0-9_]{0,62}$`` and quoted by ``psycopg.sql.Identifier``.
Files whose name contains ``citus`` are applied only with ``citus=True``, and those whose
name has the word ``rls`` (``100_rls.sql``, ``1NN_x_rls.sql``: row-level security,
numbered from 100) only with ``rls=True``.

Everything runs in one transaction that first takes ``pg_advisory_xact_lock`` on a key
derived from the schema name, so ten workers starting together apply each migration
exactly once and the others wait, then find nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from flows_core._errors import InvalidArgument

__all__ = ["Migration", "check_schema", "load_migrations", "migrate"]

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def check_schema(schema: object) -> str:
    """Return ``schema`` if it is a safe schema name, else raise InvalidArgument."""
    if not isinstance(schema, str):
        raise InvalidArgument(f"schema must be a string, got {type(schema).__name__}")
    if not _SCHEMA_RE.fullmatch(schema):
        raise InvalidArgument(
            f"schema {schema!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters"
        )
    if schema.startswith("pg_") or schema == "information_schema":
        raise InvalidArgument(f"schema {schema!r} is reserved by PostgreSQL")
    return schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    def statement(self, schema: str) -> sql.Composed:
        return sql.SQL(self.text).format(schema=sql.Identifier(check_schema(schema)))


def load_migrations(*, citus: bool = False, rls: bool = False) -> list[Migration]:
    """The migration files shipped with flows_pg, in version order."""
    found: list[Migration] = []
    for entry in MIGRATIONS_DIR.iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        if "citus" in match.group(2) and not citus:
            continue
        if "rls" in match.group(2).split("_") and not rls:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(Migration(int(match.group(1)), match.group(2), text))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in flows_pg/migrations: {versions}")
    return found


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"flows.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _apply(
    conn: psycopg.AsyncConnection[Any], schema: str, citus: bool, rls: bool = False
) -> list[int]:
    ident = sql.Identifier(schema)
    applied: list[int] = []
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        await cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        await cur.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(ident))
        done = {int(row[0]) for row in await cur.fetchall()}
        for migration in load_migrations(citus=citus, rls=rls):
            if migration.version in done:
                continue
            await cur.execute(migration.statement(schema))
            await cur.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(
                    ident
                ),
                (migration.version, migration.name),
            )
            applied.append(migration.version)
    return applied


async def migrate(
    conninfo_or_conn: str | psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any],
    schema: str = "flows",
    *,
    citus: bool = False,
    rls: bool = False,
) -> list[int]:
    """Bring ``schema`` up to date; return the versions applied now (often none).

    Takes a DSN, an ``AsyncConnection`` (used in a transaction, or a savepoint if one is
    open) or an ``AsyncConnectionPool``. ``rls=True`` also applies the optional
    row-level security migration (see ``flows_pg/migrations/100_rls.sql``); leaving it
    out later never removes it.
    """
    schema = check_schema(schema)
    if isinstance(conninfo_or_conn, str):
        async with await psycopg.AsyncConnection.connect(conninfo_or_conn) as conn:
            return await _apply(conn, schema, citus, rls)
    if isinstance(conninfo_or_conn, psycopg.AsyncConnection):
        return await _apply(conninfo_or_conn, schema, citus, rls)
    if isinstance(conninfo_or_conn, AsyncConnectionPool):
        async with conninfo_or_conn.connection() as conn:
            return await _apply(conn, schema, citus, rls)
    raise TypeError(
        "migrate() takes a DSN string, a psycopg.AsyncConnection or an AsyncConnectionPool, "
        f"got {type(conninfo_or_conn).__name__}"
    )
