"""Transactional activities on PostgreSQL and Citus (``flows_core.store.
TransactionalActivities``): the activity's function and the fenced write of its result
in one transaction of the store's database.

The connection comes from the store's pool (async functions), from a sync pool the
store opens on first use (sync functions, run in a thread), or from the application's
pool given to the Worker (``transaction_pool=``), once it is shown to reach the same
database as the store. The write is the variant's own ``commit_workflow_task`` or
``complete_activity`` batch, run on that connection before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from flows_core._errors import InvalidArgument, TransactionConflict
from flows_core.events import Event
from flows_core.store import ActivityResult, Lease, TransactionWrite, WorkflowTaskCommit

from ._base import Batch, Rows, Step, _attempt_sync
from ._records import lease_lost

__all__ = ["Outcome", "TransactionalSqlStore", "fenced_outcome"]

T = TypeVar("T")

Outcome = Callable[[list[Rows]], T]
"""What a write's batch results mean: its return value, or LeaseLost when fenced."""

CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected: the transaction may simply run again."""

_IDENTITY: Final = """SELECT current_database() AS db, inet_server_addr()::text AS host,
    inet_server_port() AS port, pg_postmaster_start_time()::text AS started,
    has_function_privilege('pg_control_system()', 'EXECUTE') AS can_read_id"""
_SYSTEM_ID: Final = "SELECT system_identifier::text AS id FROM pg_control_system()"


def fenced_outcome(lease: Lease, step: int) -> Outcome[None]:
    """The outcome of a lease holder's write whose step ``step`` returns ``done``."""

    def outcome(results: list[Rows]) -> None:
        rows = results[step]
        if not rows or not rows[0]["done"]:
            raise lease_lost(lease)

    return outcome


@dataclass(frozen=True)
class _Identity:
    """Which database a connection reaches: the cluster (its system identifier, or its
    start time when the role may not read it) and the database in it."""

    database: str
    server: str
    where: str

    def __str__(self) -> str:
        return f"database {self.database!r} of server {self.server} ({self.where})"


def _identity(row: dict[str, Any], system_id: str | None) -> _Identity:
    server = f"system id {system_id}" if system_id else f"started {row['started']}"
    where = f"{row['host'] or 'local socket'}:{row['port'] or ''}".rstrip(":")
    return _Identity(row["db"], server, where)


async def _async_identity(conn: psycopg.AsyncConnection[Any]) -> _Identity:
    async with conn.cursor(row_factory=dict_row) as cur:
        row = await (await cur.execute(_IDENTITY)).fetchone()
        assert row is not None
        found = await (await cur.execute(_SYSTEM_ID)).fetchone() if row["can_read_id"] else None
    return _identity(row, None if found is None else found["id"])


def _sync_identity(conn: psycopg.Connection[Any]) -> _Identity:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_IDENTITY).fetchone()
        assert row is not None
        found = cur.execute(_SYSTEM_ID).fetchone() if row["can_read_id"] else None
    return _identity(row, None if found is None else found["id"])


def _conflict(exc: BaseException) -> psycopg.Error | None:
    """The driver error of a serialization failure or deadlock in ``exc`` (itself or the
    cause of the store error it became), else None."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, psycopg.Error) and candidate.sqlstate in CONFLICT_STATES:
            return candidate
    return None


class _Abandoned(Exception):
    """The caller stopped waiting (timeout, shutdown) before the write: roll back."""


class _SyncRun:
    """What the caller and the thread of a sync transaction share."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.abandoned = False
        self.writing = False


class TransactionalSqlStore:
    """The ``TransactionalActivities`` half of ``PostgresStore`` and ``CitusStore`` (a
    mixin over ``SqlStore``): each variant gives the batches of its two writes."""

    _sync_pool: ConnectionPool[Any] | None = None
    _sync_pool_lock: asyncio.Lock | None = None
    _checked_pools: dict[int, Any] | None = None
    _store_identity: _Identity | None = None

    if TYPE_CHECKING:  # provided by SqlStore and the variant (this is a mixin over them)
        _conninfo: str
        _conn_kwargs: dict[str, Any]
        pool: Any

        def _commit_batch(
            self, commit: WorkflowTaskCommit
        ) -> tuple[Batch, Outcome[list[Event]]]: ...

        def _complete_batch(self, result: ActivityResult) -> tuple[Batch, Outcome[None]]: ...

        async def open(self) -> None: ...

        async def _run(
            self,
            batch: Sequence[Step],
            tx: Any = None,
            *,
            transaction: bool = True,
            read: bool = False,
        ) -> list[Rows]: ...

    async def close(self) -> None:
        """Close the sync pool of transactional activities too (if one was opened)."""
        await super().close()  # type: ignore[misc]
        pool, self._sync_pool = self._sync_pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)

    # -- the protocol --

    async def run_transaction(
        self,
        body: Callable[[Any], Any],
        finish: Callable[[Any], TransactionWrite],
        *,
        sync: bool,
        pool: Any = None,
    ) -> list[Event]:
        async_pool, sync_pool = await self._pools(pool)
        try:
            if sync:
                return await self._run_sync(body, finish, sync_pool)
            return await self._run_async(body, finish, async_pool)
        except Exception as exc:
            found = _conflict(exc)
            if found is None:
                raise
            raise TransactionConflict(
                f"the transaction was aborted by the database ({found.sqlstate}: "
                f"{str(found).strip()})"
            ) from found

    async def check_transaction_pool(self, pool: Any) -> None:
        await self._pools(pool)

    # -- connections --

    async def _pools(
        self, given: Any
    ) -> tuple[AsyncConnectionPool[Any] | None, ConnectionPool[Any] | None]:
        """(async pool, sync pool) to take connections from: the application's (checked
        once to reach the store's database) or None for the store's own."""
        if given is None:
            return None, None
        pools = tuple(given) if isinstance(given, tuple | list) else (given,)
        async_pool: AsyncConnectionPool[Any] | None = None
        sync_pool: ConnectionPool[Any] | None = None
        for one in pools:
            if isinstance(one, AsyncConnectionPool) and async_pool is None:
                async_pool = one
            elif isinstance(one, ConnectionPool) and sync_pool is None:
                sync_pool = one
            else:
                raise InvalidArgument(
                    "transaction_pool takes a psycopg_pool.AsyncConnectionPool (async "
                    "transactional activities), a ConnectionPool (sync ones) or a tuple of "
                    f"one of each; got {given!r}"
                )
        checked = self._checked_pools
        if checked is None:
            checked = self._checked_pools = {}
        for one in pools:
            if id(one) not in checked:
                await self._check_same_database(one)
                checked[id(one)] = one  # keeps it alive: its id stays its own
        return async_pool, sync_pool

    async def _check_same_database(self, pool: Any) -> None:
        mine = self._store_identity
        if mine is None:
            await self.open()
            async with self.pool.connection() as conn:
                mine = self._store_identity = await _async_identity(conn)
        if isinstance(pool, AsyncConnectionPool):
            async with pool.connection() as conn:
                theirs = await _async_identity(conn)
        else:

            def read() -> _Identity:
                with pool.connection() as conn:
                    return _sync_identity(conn)

            theirs = await asyncio.to_thread(read)
        if theirs != mine:
            raise InvalidArgument(
                f"transaction_pool reaches {theirs}, but the store "
                f"{type(self).__name__}(schema={getattr(self, 'schema', '?')!r}) is in {mine}: "
                "a transactional activity records its result in the store's database, in "
                "the same transaction, so its connection must reach that database"
            )

    async def _own_sync_pool(self) -> ConnectionPool[Any]:
        """The store's sync pool, opened once (its ``open(wait=True)`` must not run
        twice at once)."""
        pool = self._sync_pool
        if pool is not None:
            return pool
        lock = self._sync_pool_lock
        if lock is None:
            lock = self._sync_pool_lock = asyncio.Lock()
        async with lock:
            if self._sync_pool is None:
                kwargs = {**self._conn_kwargs, "autocommit": True}
                made = ConnectionPool(
                    self._conninfo, min_size=1, max_size=10, kwargs=kwargs, open=False
                )
                await asyncio.to_thread(made.open, wait=True)
                self._sync_pool = made
            return self._sync_pool

    # -- async functions --

    async def _run_async(
        self,
        body: Callable[[Any], Any],
        finish: Callable[[Any], TransactionWrite],
        pool: AsyncConnectionPool[Any] | None,
    ) -> list[Event]:
        if pool is None:
            await self.open()
            pool = self.pool
        assert pool is not None
        async with pool.connection() as conn, conn.transaction():
            result = await body(conn)
            batch, outcome = self._write_batch(finish(result))
            return _events(outcome(await self._run(batch, conn)))

    def _write_batch(self, write: TransactionWrite) -> tuple[Batch, Outcome[Any]]:
        if isinstance(write, ActivityResult):
            return self._complete_batch(write)
        return self._commit_batch(write)

    # -- sync functions: in a thread, on a sync connection --

    async def _run_sync(
        self,
        body: Callable[[Any], Any],
        finish: Callable[[Any], TransactionWrite],
        pool: ConnectionPool[Any] | None,
    ) -> list[Event]:
        chosen = pool if pool is not None else await self._own_sync_pool()
        run = _SyncRun()

        def work() -> list[Event]:
            with chosen.connection() as conn:
                with run.lock:
                    if run.abandoned:
                        raise _Abandoned
                    run.conn = conn
                with conn.transaction():
                    result = body(conn)
                    batch, outcome = self._write_batch(finish(result))
                    with run.lock:
                        if run.abandoned:
                            raise _Abandoned
                        run.writing = True
                    rows = _attempt_sync(conn, batch)
                    if isinstance(rows, psycopg.Error):
                        raise rows
                    return _events(outcome(rows))

        future = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with run.lock:
                run.abandoned = True
                writing, conn = run.writing, run.conn
            if writing:
                # The write (and commit) has started: its outcome stands; wait for it,
                # so nothing of this attempt is still running once the caller goes on.
                await asyncio.wait([future])
            elif conn is not None:
                await asyncio.to_thread(_cancel_query, conn)
            future.add_done_callback(_retrieve)
            raise


def _events(value: Any) -> list[Event]:
    return value if isinstance(value, list) else []


def _cancel_query(conn: psycopg.Connection[Any]) -> None:
    """Cancel the statement a sync transaction runs (its thread then rolls back)."""
    with contextlib.suppress(Exception):  # else it ends at the abandoned check
        conn.cancel_safe(timeout=5.0)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
