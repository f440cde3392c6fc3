"""The shared half of the SQL stores: ``PostgresStore`` and ``flows_citus.CitusStore``
are siblings over ``SqlStore``.

Here: the pool and its lifecycle, the LISTEN connection, the operation protocol and its
async driver, the translation of driver errors into Flows errors, the decoding of rows
(by column name) into records, and what both variants do with the same statements
(worker registrations). Each variant brings its own statements and writes the store
methods whose SQL differs.

The operation protocol (sans-I/O, like psycopg's generators and ``wait``): an operation
is a generator that yields a *batch*, a list of ``Step`` run in ONE transaction, and
receives the rows of each step (dicts keyed by column name). PostgreSQL batches hold
one statement (data-modifying CTEs); Citus batches hold several router statements, sent
in one pipeline. ``SqlStore._drive`` runs an operation on an async connection,
``flows_pg._sync.SyncDriver`` on a sync one: the client operations are written once
per variant, for both.
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from flows_core._clock import Clock, SystemClock
from flows_core._errors import (
    ErrorInfo,
    FlowsError,
    LeaseLost,
    PayloadError,
    StoreError,
    StoreUnavailable,
    WorkflowNotFound,
)
from flows_core.events import (
    CancelRequested,
    Event,
    SignalReceived,
    WorkflowTerminatedEvent,
    decode_events,
)
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityRetry,
    CancelOutcome,
    HeartbeatReply,
    Lease,
    NewWorkflow,
    TerminateOutcome,
    WorkerInfo,
    WorkflowRecord,
    WorkflowTaskClaim,
    stored_text,
)

from ._listener import Listener, channel_names
from ._migrate import check_schema, load_migrations
from ._records import error_text, lease_lost, utc, uuid_of

if TYPE_CHECKING:
    from ._client_ops import ClientOps

__all__ = [
    "RECORD",
    "TERMINAL_SQL",
    "WORKER_HORIZON",
    "Batch",
    "Op",
    "Rows",
    "SqlStore",
    "Statements",
    "Step",
    "check_sync_tx",
    "compact",
    "drive_async",
    "drive_sync",
    "execute_on",
    "store_error",
]

T = TypeVar("T")
Row = dict[str, Any]
Rows = list[Row]


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a batch and its parameters."""

    statement: str
    params: Mapping[str, Any]


Batch = list[Step]

_PARAM_NAMES: Final = {
    "tid": "tenant id",
    "wid": "workflow id",
    "sk": "shard key",
    "id_prefix": "id prefix",
    "after_id": "cursor workflow id",
}


BINARY_ARRAYS: Final = ("events", "end_events", "a_inputs", "a_errors")
"""Parameters that are arrays of JSON texts (``::text[]``): sent in binary. In text
format psycopg escapes every quote and backslash of every element with a regular
expression, a fifth of the client's CPU per workflow; in binary it copies them."""


def check_text(batch: Sequence[Step]) -> None:
    """Refuse, before anything is sent, text PostgreSQL cannot keep (NUL, a lone
    surrogate) with the InvalidArgument MemoryStore gives (``flows_core.store.stored_text``).

    The ``BINARY_ARRAYS`` lists are skipped: their items are JSON texts made by the
    ``flows_core.store`` ``stored_*`` helpers, which refuse what a store cannot keep
    (JSON escapes NUL; a lone surrogate fails to encode)."""
    for step in batch:
        for key, value in step.params.items():
            if isinstance(value, str):
                if not value.isascii() or "\x00" in value:
                    stored_text(value, _PARAM_NAMES.get(key, key))
            elif isinstance(value, list) and key not in BINARY_ARRAYS:
                for item in value:
                    if isinstance(item, str):
                        if not item.isascii() or "\x00" in item:
                            stored_text(item, _PARAM_NAMES.get(key, key))
                    elif item is not None:
                        break  # our lists hold one type: ids, numbers or times, no text


Op = Generator[Batch, list[Rows], T]
"""An operation: yields batches (each one transaction), receives each step's rows."""

# -- constants shared by Python and SQL (passed to the statements as parameters) --

TERMINAL_SQL: Final = "(" + ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"
"""``flows_core.store.TERMINAL_STATUSES`` as an SQL list (for ``status IN ...``)."""

WORKER_HORIZON: Final = timedelta(seconds=60)
"""A worker registered within this long is live (workers register every 10 s)."""

# -- statements --

RECORD: Final = """w.tenant_id, w.workflow_id, w.name, w.version, w.shard_key, w.status,
    w.input::text AS input, w.output::text AS output, w.error::text AS error,
    w.created_at, w.updated_at, w.history_length, w.next_seq, w.cancel_requested,
    w.inbox_length, w.run_number, w.status_value::text AS status_value"""
"""The columns ``record_from_row`` reads, from a ``workflows`` row aliased ``w``."""

_REGISTER_WORKER: Final = """
INSERT INTO {S}.workers (shard_key, tenant_id, worker_id, workflow_types, activity_names,
                         host, pid, heartbeat_at)
VALUES ('', '', %(worker_id)s, %(types)s::jsonb, %(names)s::jsonb, %(host)s, %(pid)s, %(at)s)
ON CONFLICT (shard_key, tenant_id, worker_id) DO UPDATE
SET workflow_types = excluded.workflow_types, activity_names = excluded.activity_names,
    host = excluded.host, pid = excluded.pid, heartbeat_at = excluded.heartbeat_at
"""

_UNREGISTER_WORKER: Final = """
DELETE FROM {S}.workers WHERE shard_key = '' AND tenant_id = '' AND worker_id = %(worker_id)s
"""

_LIST_WORKERS: Final = """
SELECT worker_id, workflow_types::text AS workflow_types, activity_names::text AS
       activity_names, heartbeat_at, host, pid
FROM {S}.workers
WHERE shard_key = '' AND tenant_id = ''
ORDER BY worker_id
"""

WORKER_STATEMENTS: Final = (_REGISTER_WORKER, _UNREGISTER_WORKER, _LIST_WORKERS)
"""The statements every variant shares (workers live under shard key '')."""


_COMMENT: Final = re.compile(r"--[^\n']*$", re.MULTILINE)
_SPACE: Final = re.compile(r"\s+")


def compact(statement: str) -> str:
    """Drop ``--`` comments and runs of white space: psycopg caches the parsing of
    statements up to 4 KiB only, and the claim and commit statements are longer as
    written. (No literal in our statements contains ``--`` or repeated spaces.) The
    ``BINARY_ARRAYS`` parameters become binary ones (``%(name)b``)."""
    for name in BINARY_ARRAYS:
        statement = statement.replace(f"%({name})s::text[]", f"%({name})b::text[]")
    return _SPACE.sub(" ", _COMMENT.sub("", statement)).strip()


class Statements:
    """The statements of one schema: each template compiled once (``{S}`` replaced by
    the quoted schema, comments and extra white space dropped), on first use."""

    def __init__(self, schema: str) -> None:
        self.schema = check_schema(schema)
        self.ident = sql.Identifier(self.schema).as_string(None)
        self.work_channel, self.workflow_channel = channel_names(self.schema)
        self._compiled: dict[str, str] = {}

    def __call__(self, template: str) -> str:
        found = self._compiled.get(template)
        if found is None:
            found = self._compiled[template] = compact(template.replace("{S}", self.ident))
        return found

    def wf_key(self, tenant_id: str, workflow_id: str) -> str:
        """The payload of a workflow notification (what ``wait_for_workflow`` waits on)."""
        try:
            return _json.encode((tenant_id, workflow_id)).decode()
        except UnicodeEncodeError:
            stored_text(tenant_id, "tenant id")
            stored_text(workflow_id, "workflow id")
            raise

    def notify_params(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        return {
            "ch_work": self.work_channel,
            "ch_wf": self.workflow_channel,
            "wf_key": self.wf_key(tenant_id, workflow_id),
        }

    def workflow_params(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        """The parameters that name one workflow (and its notifications)."""
        params = self.notify_params(tenant_id, workflow_id)
        params.update(tid=tenant_id, wid=workflow_id)
        return params

    def lease_params(self, lease: Lease) -> dict[str, Any]:
        """The parameters of a lease holder's write (its fence)."""
        params = self.workflow_params(lease.tenant_id, lease.workflow_id)
        params.update(
            sk=lease.shard_key,
            task_id=uuid_of(lease.task_id, "task id"),
            token=uuid_of(lease.token, "lease token"),
        )
        return params


_json: Final = msgspec.json.Encoder()
_types_decoder: Final = msgspec.json.Decoder(list[tuple[str, int]])
_names_decoder: Final = msgspec.json.Decoder(list[str])


# -- errors --


def store_error(exc: psycopg.Error) -> FlowsError:
    """The Flows error a driver error becomes (the caller chains ``exc`` as its cause):
    PayloadError for a character the database cannot store, StoreUnavailable when the
    server cannot be reached or the connection broke or timed out (psycopg's
    OperationalError, which includes the pool's timeouts, and InterfaceError), else
    StoreError."""
    if isinstance(exc, pg_errors.UntranslatableCharacter):
        return PayloadError(f"a payload contains a character PostgreSQL cannot store here: {exc}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"the database is unavailable: {exc}")
    return StoreError(f"the database refused an operation: {type(exc).__name__}: {exc}")


def check_async_tx(tx: Any) -> psycopg.AsyncConnection[Any] | None:
    """``tx=`` of an async store call: None, or an open ``AsyncConnection``."""
    if tx is None:
        return None
    if not isinstance(tx, psycopg.AsyncConnection):
        raise TypeError(
            "tx= takes a psycopg.AsyncConnection in an open transaction, "
            f"got {type(tx).__module__}.{type(tx).__qualname__}"
        )
    _check_open(tx)
    return tx


def check_sync_tx(tx: Any) -> psycopg.Connection[Any]:
    """``tx=`` of a sync client call: an open ``psycopg.Connection``."""
    if not isinstance(tx, psycopg.Connection):
        raise TypeError(
            "tx= takes a psycopg.Connection in an open transaction, "
            f"got {type(tx).__module__}.{type(tx).__qualname__}"
        )
    _check_open(tx)
    return tx


def _check_open(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.closed:
        raise ValueError("tx= is a closed connection")
    if conn.info.transaction_status == TransactionStatus.INERROR:
        raise ValueError("tx= is a connection whose transaction has failed")


class SqlStore(ABC):
    """What ``PostgresStore`` and ``CitusStore`` share: the pool, the listener, the
    async driver of operations, worker registrations.

    ``Store(dsn)`` owns a connection pool (autocommit connections, opened by ``open()``
    or ``async with``, or lazily on first use; closed by ``close()``). ``Store(pool)``
    uses the caller's ``AsyncConnectionPool`` and never opens or closes it. Either way
    the store keeps one extra connection for LISTEN, started by the first
    ``wait_for_work``/``wait_for_workflow`` and closed by ``close()``.

    Waking this process's own workers: workers that register through this store are
    kept in ``own_workers``. A start made through this store wakes them in-process and
    sends a NOTIFY only if some other live worker serves the workflow's type (see the
    variant's start statements), which spares every listener a wake-up per start when
    the starting process runs the workers itself.
    """

    def __init__(
        self,
        pool_or_dsn: str | AsyncConnectionPool[Any],
        *,
        schema: str = "flows",
        min_size: int = 1,
        max_size: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self.statements = Statements(schema)
        self.schema = self.statements.schema
        self._ident = self.statements.ident
        self._clock: Clock = clock or SystemClock()
        if isinstance(pool_or_dsn, str):
            self._pool = AsyncConnectionPool(
                pool_or_dsn,
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True},
                open=False,
                name=f"flows-{self.schema}",
            )
            self._owns_pool = True
            self._conninfo = pool_or_dsn
            self._conn_kwargs: dict[str, Any] = {}
        elif isinstance(pool_or_dsn, AsyncConnectionPool):
            self._pool = pool_or_dsn
            self._owns_pool = False
            conninfo, kwargs = pool_or_dsn.conninfo, pool_or_dsn.kwargs
            if not isinstance(conninfo, str) or not (kwargs is None or isinstance(kwargs, dict)):
                raise TypeError(
                    f"{type(self).__name__} needs a pool built from a conninfo string and a "
                    "kwargs dict (it opens its LISTEN connection with them)"
                )
            self._conninfo = conninfo
            self._conn_kwargs = dict(kwargs or {})
        else:
            raise TypeError(
                f"{type(self).__name__} takes a DSN string or a "
                f"psycopg_pool.AsyncConnectionPool, got {type(pool_or_dsn).__name__}"
            )
        self._opened = False
        self.own_workers: dict[str, None] = {}
        """Ids of the workers registered through this store (see the class doc)."""
        self.work_channel = self.statements.work_channel
        self.workflow_channel = self.statements.workflow_channel
        self._listener = Listener(self._listen_connect, self.work_channel, self.workflow_channel)

    # -- lifecycle --

    async def open(self) -> None:
        """Open the owned pool (no-op with a caller's pool)."""
        if self._opened:
            return
        if self._owns_pool:
            # Connect once first: a bad DSN fails now with the server's own message,
            # instead of a pool timeout later.
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise store_error(exc) from exc
            await conn.close()
            await self._pool.open(wait=True)
        self._opened = True

    async def close(self) -> None:
        """Stop the listener and close the owned pool."""
        await self._listener.close()
        if self._owns_pool and self._opened:
            await self._pool.close()
        self._opened = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    CITUS: bool = False
    """Whether the schema takes the Citus migrations too."""

    async def is_migrated(self) -> bool:
        """True if this store's schema exists and has every migration of this version."""
        required = {m.version for m in load_migrations(citus=self.CITUS)}
        table = f"{self._ident}.schema_migrations"
        rows = await self._run_one("SELECT to_regclass(%(t)s) AS found", {"t": table}, read=True)
        if rows[0]["found"] is None:
            return False
        # Every base version, not max(version): optional ones (rls, 100+) sort above them.
        rows = await self._run_one(self.statements("SELECT version FROM {S}.schema_migrations"), {})
        return required <= {int(row["version"]) for row in rows}

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    @property
    def clock(self) -> Clock:
        return self._clock

    async def _listen_connect(self) -> psycopg.AsyncConnection[Any]:
        kwargs = {**self._conn_kwargs, "autocommit": True}
        return await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)

    # -- the async driver --

    async def _run(
        self,
        batch: Sequence[Step],
        tx: Any = None,
        *,
        transaction: bool = True,
        read: bool = False,
    ) -> list[Rows]:
        """Run ``batch`` in one transaction (``transaction=False``: each statement on
        its own, for independent reads) on ``tx`` or a pooled connection, sent in one
        pipeline; returns each step's rows. Driver errors become Flows errors.

        A ``read`` that found its pooled connection dead (the server restarted) is
        retried once on a fresh one. Writes are not retried: whether a lost reply's
        statement committed is unknown, and the callers (the worker's loop, fenced by
        leases) retry at their own level."""
        try:
            try:
                return await self._execute(batch, tx, transaction)
            except psycopg.OperationalError:
                if not read or tx is not None:
                    raise
                return await self._execute(batch, tx, transaction)
        except psycopg.Error as exc:
            raise store_error(exc) from exc

    async def _run_one(
        self, statement: str, params: Mapping[str, Any], *, read: bool = False
    ) -> Rows:
        return (await self._run([Step(statement, params)], read=read))[0]

    async def _execute(self, batch: Sequence[Step], tx: Any, transaction: bool) -> list[Rows]:
        conn = check_async_tx(tx)
        if conn is not None:
            return await execute_on(conn, batch)
        if not self._opened:
            await self.open()
        try:
            async with self._pool.connection() as pooled:
                return await execute_on(pooled, batch, transaction=transaction, pipeline=True)
        except psycopg.OperationalError:
            # A pooled connection found dead: the pool checks all its idle connections.
            await self._pool.check()
            raise

    async def _drive(self, op: Op[T], tx: Any = None) -> T:
        """Run an operation, each batch it yields in one transaction."""
        return await drive_async(op, lambda batch: self._execute(batch, tx, True))

    # -- client operations (the variant's ``ClientOps``) --

    @abstractmethod
    async def _client_ops(self) -> ClientOps:
        """This variant's client operations (opening the store first if it needs to)."""

    async def start_workflow(self, new: NewWorkflow, *, tx: Any = None) -> None:
        ops = await self._client_ops()
        if tx is not None or not self.own_workers:
            # With tx= the task is seen only once the caller commits: the NOTIFY (sent
            # at that commit) is for every worker, this store's own included.
            await self._drive(ops.start(new), tx)
            return
        await self._drive(ops.start(new, list(self.own_workers)))
        self._listener.wake_work()  # this store's own workers: woken in-process

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        """Eager start (``flows_core.store.EagerStart``): ``start_workflow`` with the
        workflow task leased to ``owner``, in one transaction, without notifications."""
        ops = await self._client_ops()
        return await self._drive(ops.start_leased(new, owner=owner, lease=lease))

    async def signal_workflow(
        self, tenant_id: str, workflow_id: str, event: SignalReceived, *, tx: Any = None
    ) -> None:
        ops = await self._client_ops()
        await self._drive(ops.signal(tenant_id, workflow_id, event), tx)

    async def cancel_workflow(
        self, tenant_id: str, workflow_id: str, event: CancelRequested, *, tx: Any = None
    ) -> CancelOutcome:
        ops = await self._client_ops()
        return await self._drive(ops.cancel(tenant_id, workflow_id, event), tx)

    async def terminate_workflow(
        self,
        tenant_id: str,
        workflow_id: str,
        event: WorkflowTerminatedEvent,
        *,
        tx: Any = None,
    ) -> TerminateOutcome:
        ops = await self._client_ops()
        return await self._drive(ops.terminate(tenant_id, workflow_id, event), tx)

    async def deliver_once(
        self, tenant_id: str, workflow_id: str, event: Event, key: str, *, tx: Any = None
    ) -> bool:
        """``flows_core.store.Outbox.deliver_once``."""
        ops = await self._client_ops()
        return await self._drive(ops.deliver_once(tenant_id, workflow_id, event, key), tx)

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        ops = await self._client_ops()
        return await self._drive(ops.retry(tenant_id, workflow_id))

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, *, tx: Any = None
    ) -> WorkflowRecord:
        ops = await self._client_ops()
        return await self._drive(ops.get(tenant_id, workflow_id), tx)

    # -- waiting --

    async def wait_for_workflow(self, tenant_id: str, workflow_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            return
        if await self._listener.start(wait=min(timeout, 2.0)):
            return  # it was not listening: the caller looks again first
        await self._listener.wait_workflow(tenant_id, workflow_id, deadline - time.monotonic())

    async def wait_for_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            return
        if await self._listener.start(wait=min(timeout, 2.0)):
            return  # it was not listening: the caller looks again first
        await self._listener.wait_work(deadline - time.monotonic())

    # -- workers (the same statements on every variant) --

    async def register_worker(self, info: WorkerInfo) -> None:
        self.own_workers[info.worker_id] = None
        params = {
            "worker_id": info.worker_id,
            "types": _json.encode([list(t) for t in info.workflow_types]).decode(),
            "names": _json.encode(list(info.activity_names)).decode(),
            "host": info.host,
            "pid": info.pid,
            "at": info.heartbeat_at,
        }
        await self._run_one(self.statements(_REGISTER_WORKER), params)

    async def unregister_worker(self, worker_id: str) -> None:
        self.own_workers.pop(worker_id, None)
        await self._run_one(self.statements(_UNREGISTER_WORKER), {"worker_id": worker_id})

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._run_one(self.statements(_LIST_WORKERS), {}, read=True)
        return [
            WorkerInfo(
                worker_id=row["worker_id"],
                workflow_types=_types_decoder.decode(row["workflow_types"]),
                activity_names=_names_decoder.decode(row["activity_names"]),
                heartbeat_at=utc(row["heartbeat_at"]),
                host=row["host"],
                pid=row["pid"],
            )
            for row in rows
        ]

    # -- what every variant does with its own statements of the same name (``SQL``) --

    SQL: ClassVar[ModuleType]
    """The variant's statements module (``flows_pg._sql``, ``flows_citus._sql``)."""

    @abstractmethod
    def _notified(self, template: str, params: dict[str, Any], *, workflow: bool) -> Batch:
        """The statement ``template`` and the NOTIFY of its change: the work channel,
        and (``workflow``) the workflow's waiters."""

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        params = (await self._client_ops()).where(tenant_id, workflow_id)
        params["after"] = after
        rows = await self._run_one(self.statements(self.SQL.GET_HISTORY), params, read=True)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        history = rows[0]["history"]
        return [] if history is None else decode_events(history)

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        params = self.statements.lease_params(lease)
        params.update(error=error_text(error), visible_at=visible_at)
        await self._fenced(
            lease, self._notified(self.SQL.FAIL_WORKFLOW_TASK, params, workflow=True)
        )

    async def retry_activity(self, retry: ActivityRetry) -> None:
        params = self.statements.lease_params(retry.lease)
        params.update(
            attempt=retry.next_attempt, visible_at=retry.visible_at, error=error_text(retry.error)
        )
        await self._fenced(
            retry.lease, self._notified(self.SQL.RETRY_ACTIVITY, params, workflow=False)
        )

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        params = self.statements.lease_params(lease)
        params["extend"] = extend
        rows = await self._run_one(self.statements(self.SQL.HEARTBEAT), params)
        if not rows:
            raise lease_lost(lease)
        row = rows[0]
        return HeartbeatReply(
            expires_at=utc(row["expires_at"]), cancel_requested=row["cancel_requested"]
        )

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost):
            params = self.statements.lease_params(lease)
            await self._run(self._notified(self.SQL.RELEASE, params, workflow=False))

    # -- shared pieces of lease holders' writes --

    async def _fenced(self, lease: Lease, batch: Batch, *, step: int = 0) -> None:
        """Run a lease holder's write; LeaseLost unless step ``step`` returned a row
        whose ``done`` is true (the write took place)."""
        rows = (await self._run(batch))[step]
        if not rows or not rows[0]["done"]:
            raise lease_lost(lease)


# -- the drivers: one loop for async and one for sync connections --


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    value: T


Outcome = list[Rows] | psycopg.Error


def _resume(op: Op[T], outcome: Outcome | None) -> Batch | _Done[T]:
    """Advance ``op`` with a batch's outcome (None: start it). A driver error is
    thrown into the operation (which may turn it into a Flows error of its own); one
    it lets out becomes a Flows error here."""
    try:
        if outcome is None:
            return next(op)
        if isinstance(outcome, psycopg.Error):
            return op.throw(outcome)
        return op.send(outcome)
    except StopIteration as stop:
        return _Done(stop.value)
    except psycopg.Error as exc:
        raise store_error(exc) from exc


async def drive_async(op: Op[T], execute: Callable[[Batch], Awaitable[list[Rows]]]) -> T:
    """The async driver: ``execute`` runs one batch as one transaction."""
    step = _resume(op, None)
    while not isinstance(step, _Done):
        step = _resume(op, await _attempt(execute(step)))
    return step.value


def drive_sync(op: Op[T], conn: psycopg.Connection[Any]) -> T:
    """The sync driver: each batch in one transaction on ``conn`` (a savepoint inside
    the caller's transaction)."""
    step = _resume(op, None)
    while not isinstance(step, _Done):
        step = _resume(op, _attempt_sync(conn, step))
    return step.value


async def _attempt(batch_run: Awaitable[list[Rows]]) -> Outcome:
    try:
        return await batch_run
    except psycopg.Error as exc:
        return exc


def _attempt_sync(conn: psycopg.Connection[Any], batch: Batch) -> Outcome:
    check_text(batch)
    try:
        with conn.transaction() if len(batch) > 1 else contextlib.nullcontext():
            results = []
            for step in batch:
                with conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(step.statement, step.params)
                    results.append(cur.fetchall() if cur.description is not None else [])
            return results
    except psycopg.Error as exc:
        return exc


async def execute_on(
    conn: psycopg.AsyncConnection[Any],
    batch: Sequence[Step],
    *,
    transaction: bool = True,
    pipeline: bool = False,
) -> list[Rows]:
    """Run ``batch`` on ``conn``: several statements in one transaction (a savepoint
    inside the caller's), sent in one pipeline when ``pipeline``."""
    check_text(batch)
    if len(batch) == 1:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(batch[0].statement, batch[0].params)
            return [await cur.fetchall() if cur.description is not None else []]
    cursors = []
    try:
        async with (
            conn.pipeline() if pipeline else contextlib.nullcontext(),
            conn.transaction() if transaction else contextlib.nullcontext(),
        ):
            for step in batch:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(step.statement, step.params)
                cursors.append(cur)
    except psycopg.Error:
        if pipeline:
            # psycopg (3.3) may count a statement aborted in a failed pipeline as
            # prepared; the connection's next use of it then fails ("prepared statement
            # _pg3_0 does not exist"). Our pipelines run on pooled connections only:
            # close it, and the pool replaces it.
            await conn.close()
        raise
    results: list[Rows] = []
    for cur in cursors:
        results.append(await cur.fetchall() if cur.description is not None else [])
        await cur.close()
    return results
