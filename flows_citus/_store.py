"""``CitusStore``: the Store protocol on a Citus cluster, every statement a router query.

It is the PostgreSQL adapter (pool, LISTEN connection, schema, record decoding) with
its own statements (``flows_citus._sql``): each names one shard key, and an operation
is one transaction of such statements sent in one pipeline. Claims, timer firing,
listing, pruning and stats go shard key by shard key: Citus refuses ``FOR UPDATE SKIP
LOCKED`` without an equality filter on the distribution column. A cheap probe of every
key (one pipelined round trip) tells which keys have work; claims start from a rotating
key, so a shard full of one tenant's tasks cannot starve the others.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import msgspec
import psycopg
import uuid6
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from flows_core._clock import Clock
from flows_core._errors import (
    ErrorInfo,
    InvalidArgument,
    LeaseLost,
    PayloadError,
    WorkflowAlreadyExists,
    WorkflowNotFound,
)
from flows_core.events import CancelRequested, Event, SignalReceived, decode_events, encode_event
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
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
    eager_start_claim,
)
from flows_pg import PostgresStore
from flows_pg._migrate import migrate
from flows_pg._records import commit_refused, error_text, record_from_row, text, utc

from . import _sql
from ._client_ops import (
    CitusStatements,
    Op,
    Rows,
    Step,
    cancel_op,
    get_op,
    signal_op,
    start_op,
    start_params,
)
from ._layout import CitusLayout

__all__ = ["CitusStore"]

T = TypeVar("T")
_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_keys_decoder: Final = msgspec.json.Decoder(list[tuple[str, str]] | None)


class CitusStore(PostgresStore):
    """Store on Citus (a coordinator and worker nodes).

    ``CitusStore(dsn_or_pool, schema="flows")`` takes the coordinator's DSN or pool, as
    ``PostgresStore`` does. ``await store.migrate(shards=32, sharding="workflow")``
    creates and distributes the schema; the layout (how many shard keys, and whether a
    workflow's key follows from its id or from its tenant) is stored with the schema and
    read by every store that opens it. ``store.sharder`` is that layout: ``Engine`` uses
    it to name the shard of new workflows.
    """

    PROBE_EVERY: Final = 0.2
    """Seconds between probes of every shard key while notifications name the keys."""

    def __init__(
        self,
        pool_or_dsn: str | AsyncConnectionPool[Any],
        *,
        schema: str = "flows",
        min_size: int = 1,
        max_size: int = 10,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            pool_or_dsn, schema=schema, min_size=min_size, max_size=max_size, clock=clock
        )
        self._layout: CitusLayout | None = None
        self._rotation = itertools.count()
        self._probed_at = float("-inf")
        self._carry: dict[str, None] = {}
        self._st = CitusStatements(self.schema, self._ident)
        self._c = self._st.c
        self._c_list: dict[tuple[bool, bool, bool], str] = {}

    # -- layout --

    async def open(self) -> None:
        """Open the pool and read the schema's layout (if the schema exists yet)."""
        await super().open()
        if self._layout is None:
            await self._load_layout()

    async def _load_layout(self) -> None:
        rows = await self._rows(
            "SELECT to_regclass(%(t)s) IS NOT NULL", {"t": f"{self._ident}.layout"}, read=True
        )
        if rows[0][0]:
            found = await self._rows(self._q("SELECT shards, sharding FROM {S}.layout"), {})
            if found:
                self._layout = CitusLayout(int(found[0][0]), str(found[0][1]))

    async def _ready(self) -> CitusLayout:
        """The layout, opening the store first if needed (the first call of a method)."""
        if self._layout is None:
            await self.open()
        return self.layout

    @property
    def layout(self) -> CitusLayout:
        """The schema's layout (read when the store opened)."""
        if self._layout is None:
            raise RuntimeError(
                f"the Citus schema {self.schema!r} has no layout yet: run "
                "`await store.migrate()` (or `flows migrate --citus`) and open the store"
            )
        return self._layout

    @property
    def sharder(self) -> CitusLayout:
        """The layout, as the Sharder ``Engine`` uses to place new workflows."""
        return self.layout

    async def migrate(
        self, *, shards: int | None = None, sharding: str | None = None, rls: bool = False
    ) -> list[int]:
        """Create, distribute or upgrade the schema; set its layout while it holds no
        workflow (``shards``: number of shard keys, default 32; ``sharding``:
        ``"workflow"`` or ``"tenant"``). Asking for another layout than the one a schema
        with workflows has raises InvalidArgument: it cannot change."""
        if shards is not None or sharding is not None:
            # validated before anything is written
            CitusLayout(32 if shards is None else shards, sharding or "workflow")
        await PostgresStore.open(self)
        found = await self._rows(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')", {}
        )
        if not found[0][0]:
            raise InvalidArgument(
                "this database has no citus extension: connect to a Citus coordinator "
                "(CREATE EXTENSION citus) or use flows_pg.PostgresStore"
            )
        applied = await migrate(self._pool, self.schema, citus=True, rls=rls)
        current = await self._rows(self._q("SELECT shards, sharding FROM {S}.layout"), {})
        have = CitusLayout(int(current[0][0]), str(current[0][1]))
        target = CitusLayout(have.shards if shards is None else shards, sharding or have.sharding)
        if target != have:
            changed = await self._rows(
                self._q(
                    "UPDATE {S}.layout SET shards = %(n)s, sharding = %(by)s "
                    "WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM {S}.workflows) RETURNING 1"
                ),
                {"n": target.shards, "by": target.sharding},
            )
            if not changed:
                raise InvalidArgument(
                    f"schema {self.schema!r} already holds workflows under {have!r}; "
                    f"its layout cannot change to {target!r}"
                )
            have = target
        self._layout = have
        return applied

    # -- plumbing --

    async def _run(
        self, steps: Sequence[Step], tx: Any = None, *, transaction: bool = True
    ) -> list[Rows]:
        """Run ``steps`` in one transaction (on ``tx``, or a pooled connection in one
        pipeline); returns each step's rows ([] where not wanted)."""
        conn = self._tx(tx)
        try:
            if conn is not None:
                results: list[Rows] = []
                for step in steps:
                    async with conn.cursor(row_factory=tuple_row) as cur:
                        await cur.execute(step.statement, step.params)
                        results.append(await cur.fetchall() if step.rows else [])
                return results
            if not self._opened:
                await self.open()
            try:
                return await self._pipelined(steps, transaction)
            except psycopg.OperationalError:
                await self._pool.check()
                raise
        except pg_errors.UntranslatableCharacter as exc:
            raise PayloadError(
                f"a payload contains a character PostgreSQL cannot store here: {exc}"
            ) from exc

    async def _pipelined(self, steps: Sequence[Step], transaction: bool) -> list[Rows]:
        async with self._pool.connection() as conn:
            cursors = []
            async with conn.pipeline():
                tx_block = conn.transaction() if transaction else contextlib.nullcontext()
                async with tx_block:
                    for step in steps:
                        cur = conn.cursor(row_factory=tuple_row)
                        await cur.execute(step.statement, step.params)
                        cursors.append(cur)
            results: list[Rows] = []
            for step, cur in zip(steps, cursors, strict=True):
                results.append(await cur.fetchall() if step.rows else [])
                await cur.close()
            return results

    async def _each_key(
        self, statement: str, keys: Sequence[str], params: dict[str, Any]
    ) -> list[Rows]:
        """The same read on every key in ``keys``, pipelined: one round trip."""
        if not keys:
            return []
        steps = [Step(statement, {**params, "sk": key}, rows=True) for key in keys]
        return await self._run(steps, transaction=False)

    def _keys(self, shard_keys: Sequence[str] | None) -> Sequence[str]:
        return self.layout.keys if shard_keys is None else list(dict.fromkeys(shard_keys))

    def _rotated(self, keys: Sequence[str]) -> list[str]:
        if not keys:
            return []
        start = next(self._rotation) % len(keys)
        return [*keys[start:], *keys[:start]]

    def _where(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        return self._st.where(self.layout, tenant_id, workflow_id)

    # -- client operations --

    async def _drive_batches(self, op: Op[T], tx: Any = None) -> T:
        """Run a client operation: each batch it yields is one transaction."""
        await self._ready()
        try:
            batch = next(op)
            while True:
                batch = op.send(await self._run(batch, tx))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def start_workflow(self, new: NewWorkflow, *, tx: Any = None) -> None:
        await self._ready()
        await self._drive_batches(start_op(self._st, self.layout, new), tx)

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        """Eager start (``flows_core.store.EagerStart``): the start's transaction with
        the workflow task inserted leased to ``owner``; no notification."""
        await self._ready()
        params = start_params(self._st, self.layout, new)
        params.update(token=uuid6.uuid7(), owner=owner, lease=lease)
        results = await self._run(
            [
                Step(self._c["START_WORKFLOW"], params, rows=True),
                Step(self._c["START_TASK_LEASED"], params, rows=True),
                Step(self._c["START_HISTORY"], params),
            ]
        )
        if not results[0]:
            raise WorkflowAlreadyExists(new.workflow_id)
        (created, updated), (expires,) = results[0][0], results[1][0]
        return eager_start_claim(
            new,
            task_id=str(params["wf_task_id"]),
            token=str(params["token"]),
            expires_at=utc(expires),
            created_at=utc(created),
            updated_at=utc(updated),
        )

    async def signal_workflow(
        self, tenant_id: str, workflow_id: str, event: SignalReceived, *, tx: Any = None
    ) -> None:
        await self._ready()
        await self._drive_batches(
            signal_op(self._st, self.layout, tenant_id, workflow_id, event), tx
        )

    async def cancel_workflow(
        self, tenant_id: str, workflow_id: str, event: CancelRequested, *, tx: Any = None
    ) -> CancelOutcome:
        await self._ready()
        return await self._drive_batches(
            cancel_op(self._st, self.layout, tenant_id, workflow_id, event), tx
        )

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, *, tx: Any = None
    ) -> WorkflowRecord:
        await self._ready()
        return await self._drive_batches(get_op(self._st, self.layout, tenant_id, workflow_id), tx)

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        await self._ready()
        params = self._where(tenant_id, workflow_id)
        params["after"] = after
        rows = await self._rows(self._c["GET_HISTORY"], params, read=True)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return [] if rows[0][0] is None else decode_events(rows[0][0])

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        await self._ready()
        key = (query.tenant_id is not None, query.status is not None, query.name is not None)
        statement = self._c_list.get(key)
        if statement is None:
            statement = self._q(_sql.list_workflows_sql(tenant=key[0], status=key[1], name=key[2]))
            self._c_list[key] = statement
        limit, offset = max(0, query.limit), max(0, query.offset)
        if limit == 0:
            return []
        params = {
            "tid": query.tenant_id,
            "status": None if query.status is None else str(query.status),
            "name": query.name,
            "limit": limit + offset,
        }
        per_key = await self._each_key(statement, self.layout.tenant_keys(query.tenant_id), params)
        rows = [row for rows in per_key for row in rows]
        rows.sort(key=lambda row: (row[9], row[1]), reverse=True)
        return [record_from_row(row, row[15]) for row in rows[offset : offset + limit]]

    # -- worker operations --

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        queues = [f"w:{name}:{version}" for name, version in request.workflow_types]
        queues += [f"a:{name}" for name in request.activity_names]
        if not queues or request.limit <= 0:
            return []
        await self._ready()
        keys = self._keys(request.shard_keys)
        # Work notifications name their shard key: those keys are claimed from at once.
        # All keys are probed (one pipelined round trip) unless that was done less than
        # PROBE_EVERY ago and a notification named where to look: work that comes with
        # no notification (a retry's backoff or a lease running out) waits that long.
        allowed = set(keys)
        carried, self._carry = self._carry, {}
        hinted = [
            key
            for key in dict.fromkeys([*carried, *self._listener.take_work_hints()])
            if key in allowed
        ]
        now = time.monotonic()
        if hinted and now - self._probed_at < self.PROBE_EVERY:
            busy = hinted
        else:
            probes = await self._each_key(self._c["CLAIM_PROBE"], keys, {"queues": queues})
            self._probed_at = now
            found = [key for key, rows in zip(keys, probes, strict=True) if rows[0][0]]
            busy = hinted + [key for key in self._rotated(found) if key not in set(hinted)]
        claimed: list[ClaimedTask] = []
        # Fair share first (every key with work gets a turn in every claim, so a key
        # full of one tenant's tasks cannot starve the others), then fill up.
        share = -(-request.limit // len(busy)) if busy else 0
        more: list[str] = []  # keys that gave all that was asked: they may have more
        for key in busy:
            asked = min(share, request.limit - len(claimed))
            got = await self._claim_key(key, queues, asked, request)
            claimed.extend(got)
            if asked > 0 and len(got) == asked:
                more.append(key)
        if len(claimed) < request.limit:
            for key in list(more):
                wanted = request.limit - len(claimed)
                if wanted <= 0:
                    break
                got = await self._claim_key(key, queues, wanted, request)
                claimed.extend(got)
                if len(got) < wanted:
                    more.remove(key)
        self._carry.update(dict.fromkeys(more))  # may have more: the next claim looks first
        return claimed

    async def _claim_key(
        self, key: str, queues: list[str], limit: int, request: ClaimRequest
    ) -> list[ClaimedTask]:
        if limit <= 0:
            return []
        params = {
            "sk": key,
            "queues": queues,
            "limit": limit,
            "tokens": [uuid6.uuid7() for _ in range(limit)],
            "owner": request.owner,
            "lease": request.lease,
            "fresh_only": request.fresh_only,
        }
        steps = [
            Step(self._c["CLAIM_LEASE"], params),
            Step(self._c["CLAIM_HISTORY"], params),
            Step(self._c["CLAIM_MOVE"], params),
            Step(self._c["CLAIM_READ"], params, rows=True),
        ]
        return [self._claimed(row) for row in (await self._run(steps))[3]]

    @staticmethod
    def _claimed(row: tuple[Any, ...]) -> ClaimedTask:
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
            return WorkflowTaskClaim(
                lease=lease,
                workflow=record_from_row(wf, False),
                history=[] if history is None else decode_events(history),
                attempt=attempt,
            )
        return ActivityTaskClaim(
            lease=lease,
            workflow_name=wf[2],
            seq=seq,
            activity_name=name,
            input=msgspec.Raw((task_input or "null").encode()),
            attempt=attempt,
            cancel_requested=wf[13],
            scheduled_at=None if row[24] is None else utc(row[24]),
        )

    def _lease_params(self, lease: Lease) -> dict[str, Any]:
        params = self._fence_params(lease)
        params["sk"] = lease.shard_key
        return params

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        if commit.keep_lease is not None and commit.status != WorkflowStatus.RUNNING:
            raise ValueError("keep_lease is only valid with a RUNNING status")
        lease = commit.lease
        params = self._lease_params(lease)
        acts = commit.activity_tasks
        terminal = commit.status in TERMINAL_STATUSES
        keep = commit.keep_lease is not None
        params.update(
            claimed=commit.claimed_history_length,
            expected=commit.expected_next_seq,
            next_seq=commit.next_seq,
            events=[encode_event(e).decode() for e in commit.events],
            n_events=len(commit.events),
            status=str(commit.status),
            output=text(commit.output),
            error=error_text(commit.error),
            terminal=terminal,
            keep=keep,
            keep_lease=commit.keep_lease or timedelta(0),
            drop_seqs=list(commit.drop_seqs),
        )
        steps = [Step(self._c["FENCE_LOCK"], params, rows=True)]
        if commit.events:
            steps.append(Step(self._c["COMMIT_EVENTS"], params))
        if keep:
            steps.append(Step(self._c["COMMIT_MOVE"], params))
        if commit.drop_seqs and not terminal:
            steps.append(Step(self._c["COMMIT_DROP"], params))
        if acts and not terminal:
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
            steps.append(Step(self._c["COMMIT_ACTIVITIES"], params))
        if commit.timers and not terminal:
            params.update(
                t_ids=[uuid6.uuid7() for _ in commit.timers],
                t_seqs=[t.seq for t in commit.timers],
                t_fire=[t.fire_at for t in commit.timers],
            )
            steps.append(Step(self._c["COMMIT_TIMERS"], params))
        finish = "TERMINAL" if terminal else "KEEP" if keep else "END"
        steps.append(Step(self._c[f"COMMIT_FINISH_{finish}"], params, rows=True))
        # Workers need a wake-up for new tasks, or when the released workflow task has
        # events waiting; waiters (wait_for_result) when a workflow task ends.
        new_work = bool((acts or commit.timers) and not terminal) or not keep
        if new_work and not keep:
            steps.append(Step(_sql.NOTIFY_BOTH, params))
        elif new_work:
            steps.append(Step(_sql.NOTIFY_WORK, params))
        results = await self._run(steps)
        done = results[-2 if new_work else -1]
        if done:
            moved = done[0][0]
            return [] if moved is None else decode_events(moved)
        wf_found, task_kind, next_seq, history_length = results[0][0]
        raise commit_refused(
            commit,
            task_found=bool(wf_found and task_kind is not None),
            next_seq=next_seq,
            history_length=history_length,
        )

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        params = self._lease_params(lease)
        params["error"] = error_text(error)
        steps = [
            Step(self._c["FENCE_LOCK"], params),
            Step(self._c["PARK_FINISH"], params, rows=True),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        if not (await self._run(steps))[1][0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        params = self._lease_params(lease)
        params.update(error=error_text(error), visible_at=visible_at)
        steps = [
            Step(self._c["FAIL_WORKFLOW_TASK"], params, rows=True),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        if not (await self._run(steps))[0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        await self._ready()
        params = self._where(tenant_id, workflow_id)
        params["wf_task_id"] = uuid6.uuid7()
        steps = [
            Step(self._c["INBOX_LOCK"], params, rows=True),
            Step(self._c["RETRY_WORKFLOW_TASK"], params),
            Step(self._c["RETRY_WORKFLOW_RESET"], params),
            Step(self._c["RETRY_WORKFLOW_STATUS"], params),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        locked = (await self._run(steps))[0]
        if not locked:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return bool(locked[0][0] == "parked")

    async def complete_activity(self, result: ActivityResult) -> None:
        lease = result.lease
        params = self._lease_params(lease)
        params.update(event=encode_event(result.event).decode(), wf_task_id=uuid6.uuid7())
        steps = [
            Step(self._c["FENCE_LOCK"], params),
            Step(self._c["ACTIVITY_INBOX"], params),
            Step(self._c["COMPLETE_TASK"], params),
            Step(self._c["COMPLETE_FINISH"], params, rows=True),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        if not (await self._run(steps))[3][0][0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def retry_activity(self, retry: ActivityRetry) -> None:
        lease = retry.lease
        params = self._lease_params(lease)
        params.update(
            attempt=retry.next_attempt,
            visible_at=retry.visible_at,
            error=error_text(retry.error),
        )
        steps = [
            Step(self._c["RETRY_ACTIVITY"], params, rows=True),
            Step(_sql.NOTIFY_WORK, params),
        ]
        if not (await self._run(steps))[0]:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        params = self._lease_params(lease)
        params["extend"] = extend
        rows = await self._rows(self._c["HEARTBEAT"], params)
        if not rows:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")
        return HeartbeatReply(expires_at=utc(rows[0][0]), cancel_requested=rows[0][1])

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost):
            params = self._lease_params(lease)
            await self._run([Step(self._c["RELEASE"], params), Step(_sql.NOTIFY_WORK, params)])

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        if limit <= 0:
            return 0
        await self._ready()
        keys = self._keys(shard_keys)
        probes = await self._each_key(self._c["FIRE_PROBE"], keys, {})
        fired = 0
        for key in self._rotated([k for k, rows in zip(keys, probes, strict=True) if rows[0][0]]):
            if fired >= limit:
                break
            params = {
                "sk": key,
                "limit": limit - fired,
                "marker": uuid6.uuid7(),
                "task_ids": [uuid6.uuid7() for _ in range(limit - fired)],
            }
            steps = [
                Step(self._c["FIRE_MARK"], params),
                Step(self._c["FIRE_INBOX"], params),
                Step(self._c["FIRE_TASKS"], params),
                Step(self._c["FIRE_FINISH"], params, rows=True),
            ]
            count, workflows = (await self._run(steps))[3][0]
            if count:
                fired += int(count)
                notify = [Step(_sql.NOTIFY_WORK, {"ch_work": self.work_channel, "sk": key})]
                notify += [
                    Step(
                        "SELECT pg_notify(%(ch_wf)s, %(wf_key)s)",
                        {"ch_wf": self.workflow_channel, "wf_key": self._wf_key(tid, wid)},
                    )
                    for tid, wid in _keys_decoder.decode(workflows or "null") or []
                ]
                await self._run(notify, transaction=False)
        return fired

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        await self._ready()
        per_key = await self._each_key(self._c["NEXT_DUE"], self._keys(shard_keys), {})
        found = [rows[0][0] for rows in per_key if rows[0][0] is not None]
        return utc(min(found)) if found else None

    # -- operations --

    async def prune(self, older_than: timedelta, limit: int) -> int:
        if limit <= 0:
            return 0
        await self._ready()
        pruned = 0
        for key in self.layout.keys:
            if pruned >= limit:
                break
            params = {"sk": key, "age": max(older_than, timedelta(0)), "limit": limit - pruned}
            rows = await self._rows(self._c["PRUNE"], params)
            pruned += int(rows[0][0])
        return pruned

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        await self._ready()
        keys = self._keys(shard_keys)
        per_key = await self._each_key(self._c["STATS"], keys, {})
        depth: dict[str, int] = {}
        oldest: datetime | None = None
        now: datetime | None = None
        in_flight = 0
        by_status: dict[str, int] = {}
        for key, rows in zip(keys, per_key, strict=True):
            n, first, leased, statuses, now = rows[0]
            if n:
                depth[key] = int(n)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
            in_flight += int(leased)
            for status, count in _counts_decoder.decode(statuses).items():
                by_status[status] = by_status.get(status, 0) + int(count)
        age = None if oldest is None or now is None else max(now - oldest, timedelta(0))
        return StoreStats(
            queue_depth=depth,
            oldest_pending_age=age,
            in_flight=in_flight,
            dead_letters=by_status.get(WorkflowStatus.PARKED.value, 0),
            workflows=by_status,
        )
