"""``PostgresStore``: the Store protocol on PostgreSQL (psycopg 3 async + psycopg_pool).

See ``flows_core.store`` for the semantics (the inbox model), ``flows_pg._base`` for
what it shares with Citus and ``flows_pg._sql`` for the statements. Every method runs
exactly one SQL statement, hence one transaction and one round trip. Lease expiry and
visibility use the database clock; ``clock`` is the system clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, ClassVar, Final

import msgspec
import uuid6

from flows_core._errors import ErrorInfo
from flows_core._group_commit import grouped
from flows_core.events import Event, decode_events
from flows_core.store import (
    ActivityResult,
    ClaimedTask,
    ClaimRequest,
    Lease,
    ListQuery,
    OutboxRecord,
    StoreStats,
    WorkflowRecord,
    WorkflowTaskCommit,
    stored_event,
)

from . import _fsck_sql, _sql, _sql_children, _sql_fair, _sql_runs
from ._base import Batch, Op, Rows, Step
from ._client_ops import ClientOps, PostgresOps
from ._debounce import DebounceSqlStore
from ._fsck import FsckSqlStore
from ._group_commit import GroupCommitSqlStore
from ._limits import SqlLimits
from ._migrate import migrate
from ._records import (
    cached_params,
    claimed_task,
    commit_params,
    commit_refused,
    error_text,
    outbox_record,
    record_from_row,
    store_stats,
    utc,
    uuid7s,
)
from ._runs import RunArchiveMixin
from ._schedules import ScheduleSqlStore
from ._sql_schedules import schedule_statements
from ._txact import Outcome, TransactionalSqlStore, fenced_outcome

__all__ = ["PostgresStore"]

_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_SCHEDULE_SQL: Final = schedule_statements(sharded=False)
_SHARDS_FILTER: Final = "AND t.shard_key = ANY(%(shards)s::text[])"
_NOTIFY_WORK: Final = "SELECT pg_notify(%(ch_work)s, '')"


def _sharded(template: str, sharded: bool) -> str:
    return template.replace("{shards}", _SHARDS_FILTER if sharded else "")


class PostgresStore(
    RunArchiveMixin,
    SqlLimits,
    TransactionalSqlStore,
    GroupCommitSqlStore,
    FsckSqlStore,
    ScheduleSqlStore,
    DebounceSqlStore,
):
    """Store on PostgreSQL.

    ``PostgresStore(dsn)`` or ``PostgresStore(pool)``: see ``SqlStore`` for the pool,
    the LISTEN connection and how this store wakes the workers it runs itself.
    Database failures reach callers as ``flows_core.StoreUnavailable`` (connection
    refused, lost or timed out) or ``flows_core.StoreError``, the psycopg exception
    chained as ``__cause__``.
    """

    SQL: ClassVar[ModuleType] = _sql
    FSCK_SQL: ClassVar[ModuleType] = _fsck_sql
    RUN_READS: ClassVar[tuple[str, str]] = (_sql_runs.LIST_RUNS, _sql_runs.RUN_HISTORY)

    def __init__(self, *args: Any, fair_tenants: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ops = PostgresOps(self.statements)
        self.fair_tenants = fair_tenants
        """Claims take tasks in turns per tenant, the oldest of each first
        (flows_pg._sql_fair), instead of the oldest overall."""

    async def _fsck_keys(self, tenant_id: str | None) -> Sequence[str | None]:
        return [None]

    def _schedule_sql(self, name: str, shard_keys: Sequence[str] | None = None) -> str:
        filter_ = "AND s.shard_key = ANY(%(shards)s::text[])" if shard_keys is not None else ""
        return self.statements(_SCHEDULE_SQL[name].replace("{shards}", filter_))

    async def _schedule_key(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        return {}  # found by (tenant, id) through a unique index

    async def _schedule_scan(self, shard_keys: Sequence[str] | None) -> Sequence[dict[str, Any]]:
        return [{"shards": None if shard_keys is None else list(shard_keys)}]

    async def _schedule_list_scan(self, tenant_id: str | None) -> Sequence[dict[str, Any]]:
        return [{}]

    async def _client_ops(self) -> ClientOps:
        return self._ops

    def _notified(self, template: str, params: dict[str, Any], *, workflow: bool) -> Batch:
        return [Step(self.statements(template), params)]  # its NOTIFY is a CTE of it

    async def migrate(self, *, rls: bool = False) -> list[int]:
        """Create or upgrade this store's schema; returns the versions applied.
        ``rls=True`` also turns on row-level security (see ``flows_pg.set_tenant``)."""
        await self.open()
        return await migrate(self._pool, self.schema, rls=rls)

    # -- reads --

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        statement = self.statements(_sql.list_workflows_sql(query))
        params = _sql.list_params(query)
        params.update(limit=max(0, query.limit), offset=max(0, query.offset))
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
            "tokens": uuid7s(request.limit),
            "owner": request.owner,
            "lease": request.lease,
            "shards": None if request.shard_keys is None else list(request.shard_keys),
            "fresh_only": request.fresh_only,
            **cached_params(request.cached),
        }
        claim = _sql_fair.FAIR_CLAIM if self.fair_tenants else _sql.CLAIM
        statement = self.statements(_sharded(claim, request.shard_keys is not None))
        return [claimed_task(row) for row in await self._run_one(statement, params)]

    @grouped
    async def commit_workflow_task(
        self, commit: WorkflowTaskCommit, *, tx: Any = None
    ) -> list[Event]:
        """``tx``: run it in that open transaction (a transactional activity's)."""
        return await self._drive(self._commit_op(commit), tx)

    def _commit_op(self, commit: WorkflowTaskCommit) -> Op[list[Event]]:
        """The commit as an operation (also an item of a group commit)."""
        batch, outcome = self._commit_batch(commit)
        return outcome((yield batch))

    def _commit_batch(self, commit: WorkflowTaskCommit) -> tuple[Batch, Outcome[list[Event]]]:
        """The commit: one statement, and how to read its outcome."""
        keep = commit.keep_lease is not None
        acts, timers, drops = commit.activity_tasks, commit.timers, commit.drop_seqs
        params = commit_params(commit, self.statements.lease_params(commit.lease))
        shape = {"activities": bool(acts), "timers": bool(timers), "drops": bool(drops)}
        statement = self.statements(_sql.commit_sql(keep=keep, **shape))
        steps = [Step(statement, params)]
        if commit.outbox:  # its messages first, under the same fence, in one transaction
            params.update(_sql_children.outbox_params(commit))
            steps.insert(0, Step(self.statements(_sql_children.COMMIT_OUTBOX), params))
        before, after = _sql_runs.commit_steps(self.statements, commit, params)
        if after:  # the next run's workflow task: a wake-up for the workers
            after.append(Step(_NOTIFY_WORK, params))
        finished_at = len(before) + len(steps) - 1
        steps = [*before, *steps, *after]

        def outcome(results: list[Rows]) -> list[Event]:
            row = results[finished_at][0]
            if row["done"]:
                moved = row["moved"]
                return [] if moved is None else decode_events(moved)
            raise commit_refused(commit, row)

        return steps, outcome

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        params = self.statements.lease_params(lease)
        params["error"] = error_text(error)
        await self._fenced(lease, [Step(self.statements(_sql.PARK), params)])

    @grouped
    async def complete_activity(self, result: ActivityResult, *, tx: Any = None) -> None:
        """``tx``: run it in that open transaction (a transactional activity's)."""
        await self._drive(self._complete_op(result), tx)

    def _complete_op(self, result: ActivityResult) -> Op[None]:
        """The activity result as an operation (also an item of a group commit)."""
        batch, outcome = self._complete_batch(result)
        outcome((yield batch))

    def _complete_batch(self, result: ActivityResult) -> tuple[Batch, Outcome[None]]:
        params = self.statements.lease_params(result.lease)
        params.update(event=stored_event(result.event), wf_task_id=uuid6.uuid7())
        return [Step(self.statements(_sql.COMPLETE_ACTIVITY), params)], fenced_outcome(
            result.lease, 0
        )

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        if limit <= 0 or (shard_keys is not None and not shard_keys):
            return 0
        params = {
            "limit": limit,
            "shards": None if shard_keys is None else list(shard_keys),
            "task_ids": uuid7s(limit),
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
        batch = [
            Step(self.statements(_sql.PRUNE), params),
            Step(self.statements(_sql_children.PRUNE_KEYS), params),
        ]
        return int((await self._run(batch))[0][0]["pruned"])

    # -- the outbox (flows_core.store.Outbox; see flows_core._children) --

    async def claim_outbox(
        self, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> list[OutboxRecord]:
        if limit <= 0 or (shard_keys is not None and not shard_keys):
            return []
        filtered = "AND o.shard_key = ANY(%(shards)s::text[])" if shard_keys is not None else ""
        statement = self.statements(_sql_children.CLAIM_OUTBOX.replace("{shards}", filtered))
        params = {
            "limit": limit,
            "lease": lease,
            "shards": None if shard_keys is None else list(shard_keys),
        }
        return [outbox_record(row) for row in await self._run_one(statement, params)]

    async def delete_outbox(self, records: Sequence[OutboxRecord]) -> None:
        if records:
            params = _sql_children.delete_params(list(records))
            await self._run_one(self.statements(_sql_children.DELETE_OUTBOX), params)

    async def count_workflows(self, tenant_id: str) -> dict[str, int]:
        """``tenant_id``'s workflows per status (``flows_core.store.WorkflowCounts``)."""
        statement = self.statements(_sql.COUNT_WORKFLOWS)
        row = (await self._run_one(statement, {"tid": tenant_id}, read=True))[0]
        return _counts_decoder.decode(row["statuses"])

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        sharded = shard_keys is not None
        statement = self.statements(
            _sql.STATS.replace("{tshards}", _SHARDS_FILTER if sharded else "").replace(
                "{wshards}", "AND w.shard_key = ANY(%(shards)s::text[])" if sharded else ""
            )
        )
        params = {"shards": None if shard_keys is None else list(shard_keys)}
        row = (await self._run_one(statement, params, read=True))[0]
        return store_stats(
            _counts_decoder.decode(row["depth"]),
            row["oldest"],
            int(row["in_flight"]),
            _counts_decoder.decode(row["statuses"]),
        )
