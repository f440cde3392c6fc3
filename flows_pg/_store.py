"""``PostgresStore``: the Store protocol on PostgreSQL (psycopg 3 async + psycopg_pool).

See ``flows_core.store`` for the semantics (the inbox model), ``flows_pg._base`` for
what it shares with Citus and ``flows_pg._sql`` for the statements. Every method runs
exactly one SQL statement, hence one transaction and one round trip. Lease expiry and
visibility use the database clock; ``clock`` is the system clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
import uuid6

from flows_core._errors import ErrorInfo, LeaseLost, WorkflowNotFound
from flows_core.events import Event, decode_events, encode_event
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityResult,
    ActivityRetry,
    ClaimedTask,
    ClaimRequest,
    HeartbeatReply,
    Lease,
    ListQuery,
    StoreStats,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskCommit,
)

from . import _sql
from ._base import SqlStore, Step
from ._client_ops import ClientOps, PostgresOps
from ._migrate import migrate
from ._records import (
    claimed_task,
    commit_refused,
    error_text,
    lease_lost,
    record_from_row,
    text,
    utc,
)

__all__ = ["PostgresStore"]

_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_SHARDS_FILTER: Final = "AND t.shard_key = ANY(%(shards)s::text[])"


def _sharded(template: str, sharded: bool) -> str:
    return template.replace("{shards}", _SHARDS_FILTER if sharded else "")


class PostgresStore(SqlStore):
    """Store on PostgreSQL.

    ``PostgresStore(dsn)`` or ``PostgresStore(pool)``: see ``SqlStore`` for the pool,
    the LISTEN connection and how this store wakes the workers it runs itself.
    Database failures reach callers as ``flows_core.StoreUnavailable`` (connection
    refused, lost or timed out) or ``flows_core.StoreError``, the psycopg exception
    chained as ``__cause__``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ops = PostgresOps(self.statements)

    async def _client_ops(self) -> ClientOps:
        return self._ops

    async def migrate(self, *, rls: bool = False) -> list[int]:
        """Create or upgrade this store's schema; returns the versions applied.
        ``rls=True`` also turns on row-level security (see ``flows_pg.set_tenant``)."""
        await self.open()
        return await migrate(self._pool, self.schema, rls=rls)

    # -- reads --

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        params = {"tid": tenant_id, "wid": workflow_id, "after": after}
        rows = await self._run_one(self.statements(_sql.GET_HISTORY), params, read=True)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        history = rows[0]["history"]
        return [] if history is None else decode_events(history)

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        statement = self.statements(
            _sql.list_workflows_sql(
                tenant=query.tenant_id is not None,
                status=query.status is not None,
                name=query.name is not None,
            )
        )
        params = {
            "tid": query.tenant_id,
            "status": None if query.status is None else str(query.status),
            "name": query.name,
            "limit": max(0, query.limit),
            "offset": max(0, query.offset),
        }
        rows = await self._run_one(statement, params, read=True)
        return [record_from_row(row) for row in rows]

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
        statement = self.statements(_sharded(_sql.CLAIM, request.shard_keys is not None))
        return [claimed_task(row) for row in await self._run_one(statement, params)]

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        if commit.keep_lease is not None and commit.status != WorkflowStatus.RUNNING:
            raise ValueError("keep_lease is only valid with a RUNNING status")
        keep = commit.keep_lease is not None
        acts, timers, drops = commit.activity_tasks, commit.timers, commit.drop_seqs
        params = self.statements.lease_params(commit.lease)
        params.update(
            claimed=commit.claimed_history_length,
            expected=commit.expected_next_seq,
            next_seq=commit.next_seq,
            events=[encode_event(e).decode() for e in commit.events],
            n_events=len(commit.events),
            terminal=commit.status in TERMINAL_STATUSES,
        )
        if keep:
            params["keep_lease"] = commit.keep_lease
        else:
            params.update(
                status=str(commit.status),
                output=text(commit.output),
                error=error_text(commit.error),
            )
        if drops:
            params["drop_seqs"] = list(drops)
        if acts:
            params.update(
                a_ids=[uuid6.uuid7() for _ in acts],
                a_seqs=[a.seq for a in acts],
                a_names=[a.name for a in acts],
                a_inputs=[bytes(a.input).decode() for a in acts],
                a_attempts=[a.attempt for a in acts],
                a_errors=[error_text(a.last_error) for a in acts],
                a_visible=[a.visible_at for a in acts],
                a_scheduled=[a.scheduled_at for a in acts],
            )
        if timers:
            params.update(
                t_ids=[uuid6.uuid7() for _ in timers],
                t_seqs=[t.seq for t in timers],
                t_fire=[t.fire_at for t in timers],
            )
        shape = {"activities": bool(acts), "timers": bool(timers), "drops": bool(drops)}
        statement = self.statements(_sql.commit_sql(keep=keep, **shape))
        row = (await self._run_one(statement, params))[0]
        if row["done"]:
            moved = row["moved"]
            return [] if moved is None else decode_events(moved)
        raise commit_refused(
            commit,
            task_found=bool(row["wf_found"] and row["task_found"]),
            next_seq=row["next_seq"],
            history_length=row["history_length"],
        )

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        params = self.statements.lease_params(lease)
        params["error"] = error_text(error)
        await self._fenced(lease, [Step(self.statements(_sql.PARK), params)])

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        params = self.statements.lease_params(lease)
        params.update(error=error_text(error), visible_at=visible_at)
        await self._fenced(lease, [Step(self.statements(_sql.FAIL_WORKFLOW_TASK), params)])

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        params = self._ops.where(tenant_id, workflow_id)
        params["wf_task_id"] = uuid6.uuid7()
        rows = await self._run_one(self.statements(_sql.RETRY_WORKFLOW), params)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return bool(rows[0]["status"] == WorkflowStatus.PARKED)

    async def complete_activity(self, result: ActivityResult) -> None:
        params = self.statements.lease_params(result.lease)
        params.update(event=encode_event(result.event).decode(), wf_task_id=uuid6.uuid7())
        await self._fenced(result.lease, [Step(self.statements(_sql.COMPLETE_ACTIVITY), params)])

    async def retry_activity(self, retry: ActivityRetry) -> None:
        params = self.statements.lease_params(retry.lease)
        params.update(
            attempt=retry.next_attempt, visible_at=retry.visible_at, error=error_text(retry.error)
        )
        await self._fenced(retry.lease, [Step(self.statements(_sql.RETRY_ACTIVITY), params)])

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        params = self.statements.lease_params(lease)
        params["extend"] = extend
        rows = await self._run_one(self.statements(_sql.HEARTBEAT), params)
        if not rows:
            raise lease_lost(lease)
        row = rows[0]
        return HeartbeatReply(
            expires_at=utc(row["expires_at"]), cancel_requested=row["cancel_requested"]
        )

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost):
            params = self.statements.lease_params(lease)
            await self._run_one(self.statements(_sql.RELEASE), params)

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
        statement = self.statements(_sharded(_sql.FIRE_DUE_TIMERS, shard_keys is not None))
        return int((await self._run_one(statement, params))[0]["fired"])

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        if shard_keys is not None and not shard_keys:
            return None
        params = {"shards": None if shard_keys is None else list(shard_keys)}
        statement = self.statements(_sharded(_sql.NEXT_DUE, shard_keys is not None))
        due: datetime | None = (await self._run_one(statement, params, read=True))[0]["due"]
        return None if due is None else utc(due)

    # -- operations (retention, stats) --

    async def prune(self, older_than: timedelta, limit: int) -> int:
        if limit <= 0:
            return 0
        params = {"age": max(older_than, timedelta(0)), "limit": limit}
        return int((await self._run_one(self.statements(_sql.PRUNE), params))[0]["pruned"])

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        sharded = shard_keys is not None
        statement = self.statements(
            _sql.STATS.replace("{tshards}", _SHARDS_FILTER if sharded else "").replace(
                "{wshards}", "AND w.shard_key = ANY(%(shards)s::text[])" if sharded else ""
            )
        )
        params = {"shards": None if shard_keys is None else list(shard_keys)}
        row = (await self._run_one(statement, params, read=True))[0]
        by_status = {str(k): int(v) for k, v in _counts_decoder.decode(row["statuses"]).items()}
        oldest = row["oldest"]
        return StoreStats(
            queue_depth={str(k): int(v) for k, v in _counts_decoder.decode(row["depth"]).items()},
            oldest_pending_age=None if oldest is None else max(oldest, timedelta(0)),
            in_flight=int(row["in_flight"]),
            dead_letters=by_status.get(WorkflowStatus.PARKED.value, 0),
            workflows=by_status,
        )
