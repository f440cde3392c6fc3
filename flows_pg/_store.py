"""``PostgresStore``: the Store protocol on PostgreSQL (psycopg 3 async + psycopg_pool).

See ``flows_core.store`` for the semantics (the inbox model) and ``flows_pg._sql`` for
the statements. Every method runs exactly one SQL statement, hence one transaction and
one round trip. Lease expiry and visibility use the database clock; ``clock`` is the
system clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Self, TypeVar

import msgspec
import psycopg
import uuid6
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from flows_core._clock import Clock, SystemClock
from flows_core._errors import (
    ErrorInfo,
    LeaseLost,
    PayloadError,
    WorkflowAlreadyExists,
    WorkflowNotFound,
)
from flows_core.events import (
    CancelRequested,
    Event,
    SignalReceived,
    decode_events,
    encode_event,
)
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    CancelOutcome,
    ClaimedTask,
    ClaimRequest,
    HeartbeatReply,
    Lease,
    ListQuery,
    NewWorkflow,
    StoreStats,
    WorkerInfo,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
    eager_start_claim,
)

from . import _sql
from ._client_ops import (
    ClientStatements,
    Op,
    cancel_op,
    get_op,
    signal_op,
    start_op,
    start_params,
)
from ._listener import Listener, channel_names
from ._migrate import check_schema, load_migrations, migrate
from ._records import commit_refused, error_text, record_from_row, text, utc, uuid_of

__all__ = ["PostgresStore"]

T = TypeVar("T")


_json: Final = msgspec.json.Encoder()
_error_decoder: Final = msgspec.json.Decoder(ErrorInfo)
_types_decoder: Final = msgspec.json.Decoder(list[tuple[str, int]])
_names_decoder: Final = msgspec.json.Decoder(list[str])
_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_SHARDS_FILTER: Final = "AND t.shard_key = ANY(%(shards)s::text[])"


class PostgresStore:
    """Store on PostgreSQL.

    ``PostgresStore(dsn)`` owns a connection pool (autocommit connections, opened by
    ``open()`` or ``async with``, or lazily on first use; closed by ``close()``).
    ``PostgresStore(pool)`` uses the caller's ``AsyncConnectionPool`` and never opens or
    closes it. Either way the store keeps one extra connection for LISTEN, started by the
    first ``wait_for_work``/``wait_for_workflow`` and closed by ``close()``.
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
        self.schema = check_schema(schema)
        self._ident = sql.Identifier(self.schema).as_string(None)
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
                    "PostgresStore needs a pool built from a conninfo string and a kwargs "
                    "dict (it opens its LISTEN connection with them)"
                )
            self._conninfo = conninfo
            self._conn_kwargs = dict(kwargs or {})
        else:
            raise TypeError(
                "PostgresStore takes a DSN string or a psycopg_pool.AsyncConnectionPool, "
                f"got {type(pool_or_dsn).__name__}"
            )
        self._opened = False
        self._local_workers: dict[str, None] = {}
        """Workers registered through this store (it wakes them in-process on starts)."""
        self.work_channel, self.workflow_channel = channel_names(self.schema)
        self._listener = Listener(self._listen_connect, self.work_channel, self.workflow_channel)
        self._client = ClientStatements(self.schema, self._ident)
        self._s_history = self._q(_sql.GET_HISTORY)
        self._s_claim = {
            sharded: self._q(_sql.CLAIM.replace("{shards}", _SHARDS_FILTER if sharded else ""))
            for sharded in (False, True)
        }
        self._s_fire = {
            sharded: self._q(
                _sql.FIRE_DUE_TIMERS.replace("{shards}", _SHARDS_FILTER if sharded else "")
            )
            for sharded in (False, True)
        }
        self._s_next_due = {
            sharded: self._q(_sql.NEXT_DUE.replace("{shards}", _SHARDS_FILTER if sharded else ""))
            for sharded in (False, True)
        }
        self._s_commit = {
            (keep, acts, timers, drops): self._q(
                _sql.commit_sql(keep=keep, activities=acts, timers=timers, drops=drops)
            )
            for keep in (False, True)
            for acts in (False, True)
            for timers in (False, True)
            for drops in (False, True)
        }
        self._s_start_leased = self._q(_sql.START_LEASED)
        self._s_park = self._q(_sql.PARK)
        self._s_fail_wf_task = self._q(_sql.FAIL_WORKFLOW_TASK)
        self._s_retry_wf = self._q(_sql.RETRY_WORKFLOW)
        self._s_complete = self._q(_sql.COMPLETE_ACTIVITY)
        self._s_retry = self._q(_sql.RETRY_ACTIVITY)
        self._s_heartbeat = self._q(_sql.HEARTBEAT)
        self._s_release = self._q(_sql.RELEASE)
        self._s_register = self._q(_sql.REGISTER_WORKER)
        self._s_unregister = self._q(_sql.UNREGISTER_WORKER)
        self._s_workers = self._q(_sql.LIST_WORKERS)
        self._s_list: dict[tuple[bool, bool, bool], str] = {}

    # -- lifecycle --

    async def open(self) -> None:
        """Open the owned pool (no-op with a caller's pool)."""
        if self._opened:
            return
        if self._owns_pool:
            # Connect once first: a bad DSN fails now with the server's own message,
            # instead of a pool timeout later.
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
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

    async def migrate(self, *, rls: bool = False) -> list[int]:
        """Create or upgrade this store's schema; returns the versions applied.
        ``rls=True`` also turns on row-level security (see ``flows_pg.set_tenant``)."""
        await self.open()
        return await migrate(self._pool, self.schema, rls=rls)

    async def is_migrated(self) -> bool:
        """True if this store's schema exists and has every migration of this version."""
        required = {m.version for m in load_migrations()}
        table = f"{self._ident}.schema_migrations"
        rows = await self._rows("SELECT to_regclass(%(table)s) IS NOT NULL", {"table": table})
        if not rows[0][0]:
            return False
        # Every base version, not max(version): optional ones (rls, 100+) sort above them.
        rows = await self._rows(self._q("SELECT version FROM {S}.schema_migrations"), {})
        return required <= {int(row[0]) for row in rows}

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- plumbing --

    def _q(self, template: str) -> str:
        return _sql.compact(template.replace("{S}", self._ident))

    async def _listen_connect(self) -> psycopg.AsyncConnection[Any]:
        kwargs = {**self._conn_kwargs, "autocommit": True}
        return await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)

    @staticmethod
    def _tx(tx: Any) -> psycopg.AsyncConnection[Any] | None:
        if tx is None:
            return None
        if isinstance(tx, psycopg.AsyncConnection):
            if tx.closed:
                raise ValueError("tx= is a closed connection")
            if tx.info.transaction_status == TransactionStatus.INERROR:
                raise ValueError("tx= is a connection whose transaction has failed")
            return tx
        raise TypeError(
            "tx= takes a psycopg.AsyncConnection in an open transaction, "
            f"got {type(tx).__module__}.{type(tx).__qualname__}"
        )

    async def _rows(
        self, query: str, params: dict[str, Any], tx: Any = None, *, read: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run one statement on ``tx`` or a pooled connection.

        A pooled connection found dead (the server restarted) makes the pool check all
        its idle connections; a ``read`` is then retried once on a fresh one. Writes are
        not retried: whether a lost reply's statement committed is unknown, and the
        callers (the worker's loop, fenced by leases) retry at their own level.
        """
        conn = self._tx(tx)
        try:
            if conn is not None:
                async with conn.cursor(row_factory=tuple_row) as cur:
                    await cur.execute(query, params)
                    return await cur.fetchall() if cur.description is not None else []
            if not self._opened:
                await self.open()
            try:
                return await self._pooled(query, params)
            except psycopg.OperationalError:
                await self._pool.check()
                if not read:
                    raise
                return await self._pooled(query, params)
        except pg_errors.UntranslatableCharacter as exc:
            raise PayloadError(
                f"a payload contains a character PostgreSQL cannot store here: {exc}"
            ) from exc

    async def _pooled(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with (
            self._pool.connection() as pooled,
            pooled.cursor(row_factory=tuple_row) as cur,
        ):
            await cur.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

    def _wf_key(self, tenant_id: str, workflow_id: str) -> str:
        return _json.encode((tenant_id, workflow_id)).decode()

    def _fence_params(self, lease: Lease) -> dict[str, Any]:
        return {
            "sk": lease.shard_key,
            "tid": lease.tenant_id,
            "wid": lease.workflow_id,
            "task_id": uuid_of(lease.task_id, "task id"),
            "token": uuid_of(lease.token, "lease token"),
            "ch_work": self.work_channel,
            "ch_wf": self.workflow_channel,
            "wf_key": self._wf_key(lease.tenant_id, lease.workflow_id),
        }

    # -- client operations --

    async def _drive(self, op: Op[T], tx: Any, *, read: bool = False) -> T:
        """Run a client operation generator on ``tx`` or a pooled connection."""
        try:
            statement, params = next(op)
            while True:
                try:
                    rows = await self._rows(statement, params, tx, read=read)
                except psycopg.Error as exc:
                    statement, params = op.throw(exc)
                else:
                    statement, params = op.send(rows)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def start_workflow(self, new: NewWorkflow, *, tx: Any = None) -> None:
        local = self._local_workers
        if tx is not None or not local:
            # With tx= the task is seen only once the caller commits: the NOTIFY (sent
            # at that commit) is for every worker, this store's own included.
            await self._drive(start_op(self._client, new), tx)
            return
        await self._drive(start_op(self._client, new, list(local)), tx)
        self._listener.wake_work()  # this store's own workers: woken in-process

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        """Eager start (``flows_core.store.EagerStart``): ``start_workflow`` with the
        workflow task leased to ``owner``, in one statement and without notifications."""
        params = start_params(new)
        task_id, token = params["wf_task_id"], uuid6.uuid7()
        params.update(token=token, owner=owner, lease=lease)
        try:
            rows = await self._rows(self._s_start_leased, params)
        except pg_errors.UniqueViolation as exc:
            raise WorkflowAlreadyExists(new.workflow_id) from exc
        if not rows:
            raise WorkflowAlreadyExists(new.workflow_id)
        created, updated, expires = rows[0]
        return eager_start_claim(
            new,
            task_id=str(task_id),
            token=str(token),
            expires_at=utc(expires),
            created_at=utc(created),
            updated_at=utc(updated),
        )

    async def signal_workflow(
        self, tenant_id: str, workflow_id: str, event: SignalReceived, *, tx: Any = None
    ) -> None:
        await self._drive(signal_op(self._client, tenant_id, workflow_id, event), tx)

    async def cancel_workflow(
        self, tenant_id: str, workflow_id: str, event: CancelRequested, *, tx: Any = None
    ) -> CancelOutcome:
        return await self._drive(cancel_op(self._client, tenant_id, workflow_id, event), tx)

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, *, tx: Any = None
    ) -> WorkflowRecord:
        return await self._drive(get_op(self._client, tenant_id, workflow_id), tx, read=True)

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        rows = await self._rows(
            self._s_history, {"tid": tenant_id, "wid": workflow_id, "after": after}, read=True
        )
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        text = rows[0][0]
        return [] if text is None else decode_events(text)

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        key = (query.tenant_id is not None, query.status is not None, query.name is not None)
        statement = self._s_list.get(key)
        if statement is None:
            statement = self._q(_sql.list_workflows_sql(tenant=key[0], status=key[1], name=key[2]))
            self._s_list[key] = statement
        params = {
            "tid": query.tenant_id,
            "status": None if query.status is None else str(query.status),
            "name": query.name,
            "limit": max(0, query.limit),
            "offset": max(0, query.offset),
        }
        rows = await self._rows(statement, params, read=True)
        return [record_from_row(row, row[15]) for row in rows]

    async def wait_for_workflow(self, tenant_id: str, workflow_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            return
        if await self._listener.start(wait=min(timeout, 2.0)):
            return  # it was not listening: the caller looks again first
        await self._listener.wait_workflow(tenant_id, workflow_id, deadline - time.monotonic())

    # -- worker operations --

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        queues = [f"w:{name}:{version}" for name, version in request.workflow_types]
        queues += [f"a:{name}" for name in request.activity_names]
        if not queues or request.limit <= 0:
            return []
        if request.shard_keys is not None and not request.shard_keys:
            return []
        params = {
            "queues": queues,
            "limit": request.limit,
            "tokens": [uuid6.uuid7() for _ in range(request.limit)],
            "owner": request.owner,
            "lease": request.lease,
            "shards": None if request.shard_keys is None else list(request.shard_keys),
            "fresh_only": request.fresh_only,
        }
        rows = await self._rows(self._s_claim[request.shard_keys is not None], params)
        claimed: list[ClaimedTask] = []
        for row in rows:
            kind, task_id, token, expires, seq, name, task_input, attempt = row[:8]
            wf = row[8:23]
            lease = Lease(
                task_id=str(task_id),
                token=str(token),
                tenant_id=wf[0],
                shard_key=wf[4],
                workflow_id=wf[1],
                expires_at=utc(expires),
            )
            if kind == "workflow":
                history = row[23]
                claimed.append(
                    WorkflowTaskClaim(
                        lease=lease,
                        workflow=record_from_row(wf, False),
                        history=[] if history is None else decode_events(history),
                        attempt=attempt,
                    )
                )
            else:
                claimed.append(
                    ActivityTaskClaim(
                        lease=lease,
                        workflow_name=wf[2],
                        seq=seq,
                        activity_name=name,
                        input=msgspec.Raw((task_input or "null").encode()),
                        attempt=attempt,
                        cancel_requested=wf[13],
                        scheduled_at=None if row[24] is None else utc(row[24]),
                    )
                )
        return claimed

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        if commit.keep_lease is not None and commit.status != WorkflowStatus.RUNNING:
            raise ValueError("keep_lease is only valid with a RUNNING status")
        lease = commit.lease
        keep = commit.keep_lease is not None
        acts, timers, drops = commit.activity_tasks, commit.timers, commit.drop_seqs
        params = self._fence_params(lease)
        params.update(
            {
                "claimed": commit.claimed_history_length,
                "expected": commit.expected_next_seq,
                "next_seq": commit.next_seq,
                "events": [encode_event(e).decode() for e in commit.events],
                "n_events": len(commit.events),
                "terminal": commit.status in TERMINAL_STATUSES,
            }
        )
        if keep:
            params["keep_lease"] = commit.keep_lease
        else:
            params["status"] = str(commit.status)
            params["output"] = text(commit.output)
            params["error"] = error_text(commit.error)
        if drops:
            params["drop_seqs"] = list(drops)
        if acts:
            params.update(
                {
                    "a_ids": [uuid6.uuid7() for _ in acts],
                    "a_seqs": [a.seq for a in acts],
                    "a_names": [a.name for a in acts],
                    "a_inputs": [bytes(a.input).decode() for a in acts],
                    "a_attempts": [a.attempt for a in acts],
                    "a_errors": [error_text(a.last_error) for a in acts],
                    "a_visible": [a.visible_at for a in acts],
                    "a_scheduled": [a.scheduled_at for a in acts],
                }
            )
        if timers:
            params.update(
                {
                    "t_ids": [uuid6.uuid7() for _ in timers],
                    "t_seqs": [t.seq for t in timers],
                    "t_fire": [t.fire_at for t in timers],
                }
            )
        statement = self._s_commit[keep, bool(acts), bool(timers), bool(drops)]
        rows = await self._rows(statement, params)
        ok, wf_found, task_found, next_seq, history_length, moved = rows[0][:6]
        if ok:
            return [] if moved is None else decode_events(moved)
        raise commit_refused(
            commit,
            task_found=bool(wf_found and task_found),
            next_seq=next_seq,
            history_length=history_length,
        )

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        params = self._fence_params(lease)
        params["error"] = error_text(error)
        rows = await self._rows(self._s_park, params)
        if not rows[0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    # -- dead letters --

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        params = self._fence_params(lease)
        params.update({"error": error_text(error), "visible_at": visible_at})
        rows = await self._rows(self._s_fail_wf_task, params)
        if not rows[0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        params = {
            "tid": tenant_id,
            "wid": workflow_id,
            "wf_task_id": uuid6.uuid7(),
            "ch_work": self.work_channel,
            "ch_wf": self.workflow_channel,
            "wf_key": self._wf_key(tenant_id, workflow_id),
        }
        rows = await self._rows(self._s_retry_wf, params)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return bool(rows[0][0] == "parked")

    async def complete_activity(self, result: ActivityResult) -> None:
        lease = result.lease
        params = self._fence_params(lease)
        params["event"] = encode_event(result.event).decode()
        params["wf_task_id"] = uuid6.uuid7()
        rows = await self._rows(self._s_complete, params)
        if not rows[0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def retry_activity(self, retry: ActivityRetry) -> None:
        lease = retry.lease
        params = self._fence_params(lease)
        params.update(
            {
                "attempt": retry.next_attempt,
                "visible_at": retry.visible_at,
                "error": error_text(retry.error),
            }
        )
        rows = await self._rows(self._s_retry, params)
        if not rows[0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        params = self._fence_params(lease)
        params["extend"] = extend
        rows = await self._rows(self._s_heartbeat, params)
        if not rows:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")
        return HeartbeatReply(expires_at=utc(rows[0][0]), cancel_requested=rows[0][1])

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost):
            await self._rows(self._s_release, self._fence_params(lease))

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        if limit <= 0 or (shard_keys is not None and not shard_keys):
            return 0
        params = {
            "limit": limit,
            "shards": None if shard_keys is None else list(shard_keys),
            "task_ids": [uuid6.uuid7() for _ in range(limit)],
            "ch_work": self.work_channel,
            "ch_wf": self.workflow_channel,
        }
        rows = await self._rows(self._s_fire[shard_keys is not None], params)
        return int(rows[0][0])

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        if shard_keys is not None and not shard_keys:
            return None
        params = {"shards": None if shard_keys is None else list(shard_keys)}
        rows = await self._rows(self._s_next_due[shard_keys is not None], params, read=True)
        due: datetime | None = rows[0][0]
        return None if due is None else utc(due)

    async def wait_for_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            return
        if await self._listener.start(wait=min(timeout, 2.0)):
            return  # it was not listening: the caller looks again first
        await self._listener.wait_work(deadline - time.monotonic())

    async def register_worker(self, info: WorkerInfo) -> None:
        self._local_workers[info.worker_id] = None
        params = {
            "worker_id": info.worker_id,
            "types": _json.encode([list(t) for t in info.workflow_types]).decode(),
            "names": _json.encode(list(info.activity_names)).decode(),
            "host": info.host,
            "pid": info.pid,
            "at": info.heartbeat_at,
        }
        await self._rows(self._s_register, params)

    async def unregister_worker(self, worker_id: str) -> None:
        self._local_workers.pop(worker_id, None)
        await self._rows(self._s_unregister, {"worker_id": worker_id})

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._rows(self._s_workers, {}, read=True)
        return [
            WorkerInfo(
                worker_id=row[0],
                workflow_types=_types_decoder.decode(row[1]),
                activity_names=_names_decoder.decode(row[2]),
                heartbeat_at=utc(row[3]),
                host=row[4],
                pid=row[5],
            )
            for row in rows
        ]

    # -- operations (retention, stats) --

    async def prune(self, older_than: timedelta, limit: int) -> int:
        if limit <= 0:
            return 0
        rows = await self._rows(
            self._q(_sql.PRUNE), {"age": max(older_than, timedelta(0)), "limit": limit}
        )
        return int(rows[0][0])

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        sharded = shard_keys is not None
        statement = self._q(
            _sql.STATS.replace("{tshards}", _SHARDS_FILTER if sharded else "").replace(
                "{wshards}", "AND w.shard_key = ANY(%(shards)s::text[])" if sharded else ""
            )
        )
        params = {"shards": None if shard_keys is None else list(shard_keys)}
        rows = await self._rows(statement, params, read=True)
        depth, oldest, in_flight, statuses = rows[0]
        by_status = {str(k): int(v) for k, v in _counts_decoder.decode(statuses).items()}
        return StoreStats(
            queue_depth={str(k): int(v) for k, v in _counts_decoder.decode(depth).items()},
            oldest_pending_age=None if oldest is None else max(oldest, timedelta(0)),
            in_flight=int(in_flight),
            dead_letters=by_status.get(WorkflowStatus.PARKED.value, 0),
            workflows=by_status,
        )
