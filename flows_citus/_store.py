"""``CitusStore``: the Store protocol on a Citus cluster, every statement a router query.

A sibling of ``PostgresStore`` over ``flows_pg._base.SqlStore`` (pool, LISTEN
connection, drivers, record decoding) with its own statements (``flows_citus._sql``,
client operations in ``flows_citus._client_ops``): each names one shard key, and an
operation is one transaction of such statements sent in one pipeline. Claims, timer firing,
listing, pruning and stats go shard key by shard key: Citus refuses ``FOR UPDATE SKIP
LOCKED`` without an equality filter on the distribution column. A cheap probe of every
key (one pipelined round trip) tells which keys have work; claims start from a rotating
key, so a shard full of one tenant's tasks cannot starve the others.

Through the coordinator a read of every key costs one statement per key (32 by
default), tens of milliseconds on a small cluster. So while the LISTEN connection stays
on, the store keeps what ``next_due`` read of each key (its next due time) and skips
the reads whose answer it already knows: a key has new claimable work only when a
notification names it (every write that makes work sends one, from the coordinator in
the writer's transaction), when this process wrote to it, or when its due time comes
(a timer, a retry's backoff, a lease running out). ``next_due``, ``fire_due_timers`` and
``claim`` then read only the keys written, notified or come due since; all keys again
after ``RESCAN_EVERY`` seconds, or whenever the listener was off (notifications may
have been missed).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, ClassVar, Final

import msgspec
import uuid6

from flows_core import store as api
from flows_core._errors import ErrorInfo, InvalidArgument
from flows_core._group_commit import grouped
from flows_core.events import Event, decode_events
from flows_core.store import stored_event
from flows_pg import _records
from flows_pg._base import Batch, Op, Rows, SqlStore, Step
from flows_pg._debounce import DebounceSqlStore
from flows_pg._fsck import FsckSqlStore
from flows_pg._group_commit import GroupCommitSqlStore
from flows_pg._limits import SqlLimits
from flows_pg._migrate import migrate
from flows_pg._records import outbox_record, uuid_of
from flows_pg._runs import RunArchiveMixin
from flows_pg._schedules import ScheduleSqlStore
from flows_pg._sql import list_params
from flows_pg._sql_children import outbox_params
from flows_pg._sql_limits import WAITING_SHARD
from flows_pg._sql_runs import commit_steps
from flows_pg._txact import Outcome, TransactionalSqlStore, fenced_outcome

from . import _fsck_sql, _sql, _sql_children, _sql_runs, _sql_schedules
from ._client_ops import CitusOps, detect_op, layout_op
from ._layout import CitusLayout

__all__ = ["CitusStore"]

_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_keys_decoder: Final = msgspec.json.Decoder(list[tuple[str, str]] | None)


class CitusStore(
    RunArchiveMixin,
    SqlLimits,
    TransactionalSqlStore,
    GroupCommitSqlStore,
    FsckSqlStore,
    ScheduleSqlStore,
    DebounceSqlStore,
):
    """Store on Citus (a coordinator and worker nodes).

    ``CitusStore(dsn_or_pool, schema="flows")`` takes the coordinator's DSN or pool, as
    ``PostgresStore`` does. ``await store.migrate(shards=32, sharding="workflow")``
    creates and distributes the schema; the layout (how many shard keys, and whether a
    workflow's key follows from its id or from its tenant) is stored with the schema and
    read by every store that opens it. ``store.sharder`` is that layout: ``Engine`` uses
    it to name the shard of new workflows.
    """

    CITUS = True
    SQL: ClassVar[ModuleType] = _sql
    WAITING_SHARD = WAITING_SHARD
    FSCK_SQL: ClassVar[ModuleType] = _fsck_sql
    RUN_READS: ClassVar[tuple[str, str]] = (_sql_runs.LIST_RUNS, _sql_runs.RUN_HISTORY)

    PROBE_EVERY: Final = 0.2
    """Seconds between probes of every shard key while notifications name the keys."""

    RESCAN_EVERY: Final = 5.0
    """Seconds the per-key due times read by ``next_due`` are trusted (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ops: CitusOps | None = None
        self._rotation = itertools.count()
        self._probed_at = float("-inf")
        self._carry: dict[frozenset[str], dict[str, None]] = {}
        """Per set of claimed queues: keys that may have more (the next claim looks first)."""
        self._due: dict[str, datetime | None] = {}
        """Per shard key, its next due time as ``next_due`` last read it (None: none)."""
        self._due_epoch: tuple[int, float] | None = None
        """(listener's LISTEN count, monotonic time) of the last read of every key."""
        self._stale: set[str] = set()
        """Keys written or notified since ``_due`` read them."""
        self._hinted: dict[frozenset[str], dict[str, None]] = {}
        """Per set of claimed queues (workers sharing this store may claim different
        ones): keys notified, or given work by this process, not claimed from since."""
        self._claim_epoch: dict[frozenset[str], tuple[int, float]] = {}
        """Per set of claimed queues: (LISTEN count, time) of its last probe of all keys."""
        self._listener.keep_on = True  # once started (by the first claim), it stays on

    # -- layout --

    async def open(self) -> None:
        """Open the pool and read the schema's layout (if the schema exists yet)."""
        await super().open()
        if self._ops is None:
            layout = await self._drive(layout_op(self.statements))
            if layout is not None:
                self._ops = CitusOps(self.statements, layout)

    async def _client_ops(self) -> CitusOps:
        """The client operations on this schema's layout (opening the store first)."""
        if self._ops is None:
            await self.open()
        if self._ops is None:
            raise self._no_layout()
        return self._ops

    async def _ready(self) -> CitusLayout:
        """The layout, opening the store first if needed (the first call of a method)."""
        return (await self._client_ops()).layout

    def _no_layout(self) -> RuntimeError:
        return RuntimeError(
            f"the Citus schema {self.schema!r} has no layout yet: run "
            "`await store.migrate()` (or `flows migrate --citus`) and open the store"
        )

    @property
    def layout(self) -> CitusLayout:
        """The schema's layout (read when the store opened)."""
        if self._ops is None:
            raise self._no_layout()
        return self._ops.layout

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
        await SqlStore.open(self)
        if not await self._drive(detect_op(self.statements, extension=True)):
            raise InvalidArgument(
                "this database has no citus extension: connect to a Citus coordinator "
                "(CREATE EXTENSION citus) or use flows_pg.PostgresStore"
            )
        applied = await migrate(self._pool, self.schema, citus=True, rls=rls)
        have = await self._drive(layout_op(self.statements))
        assert have is not None  # the migration made it
        target = CitusLayout(have.shards if shards is None else shards, sharding or have.sharding)
        if target != have:
            changed = await self._run_one(
                self.statements(
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
        self._ops = CitusOps(self.statements, have)
        return applied

    async def distribute_colocated(self, table: str, column: str = "shard_key") -> None:
        """Distribute the application table ``table`` (``"schema.name"``, existing, a
        ``text`` column ``column``) by ``column``, colocated with this store's tables:
        a transactional activity that writes its rows under its workflow's shard key
        (``flows.activity_info().shard_key``) then commits a one-shard (router)
        transaction, without two-phase commit."""
        await SqlStore.open(self)
        await self._run_one(
            "SELECT create_distributed_table(%(t)s, %(c)s, colocate_with => %(w)s)",
            {"t": table, "c": column, "w": f"{self._ident}.workflows"},
        )

    async def _fsck_keys(self, tenant_id: str | None) -> Sequence[str | None]:
        return sorted((await self._ready()).tenant_keys(tenant_id))

    # -- schedules (flows_pg._schedules; every statement names its shard key) --

    def _schedule_sql(self, name: str, shard_keys: Sequence[str] | None = None) -> str:
        statement: str = getattr(_sql_schedules, name)
        return self.statements(statement)

    async def _schedule_key(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        return {"sk": (await self._ready()).locate(tenant_id, schedule_id)}

    async def _schedule_scan(self, shard_keys: Sequence[str] | None) -> Sequence[dict[str, Any]]:
        await self._ready()
        return [{"sk": key} for key in self._rotated(list(self._keys(shard_keys)))]

    async def _schedule_list_scan(self, tenant_id: str | None) -> Sequence[dict[str, Any]]:
        return [{"sk": key} for key in (await self._ready()).tenant_keys(tenant_id)]

    # -- plumbing --

    async def _execute(self, batch: Sequence[Step], tx: Any, transaction: bool) -> list[Rows]:
        if transaction:
            claiming = bool(batch) and batch[0].statement == self.statements(_sql.CLAIM_LEASE)
            for step in batch:
                key = step.params.get("sk")
                if isinstance(key, str):
                    self._stale.add(key)
                    if not claiming:  # a start, signal, commit, fire... may make work
                        self._hint(key)
        return await super()._execute(batch, tx, transaction)

    def _take_hints(self) -> None:
        for key in self._listener.take_work_hints():
            self._stale.add(key)
            self._hint(key)

    def _hint(self, key: str) -> None:
        for hinted in self._hinted.values():
            hinted[key] = None

    def _known(self, epoch: tuple[int, float] | None = None) -> bool:
        """Whether ``_due`` (with ``_stale``) still tells when work comes due (module
        doc); with ``epoch``, whether that full probe still tells where work is."""
        epoch = self._due_epoch if epoch is None else epoch
        return (
            epoch is not None
            and self._listener.listening
            and self._listener.listens == epoch[0]
            and time.monotonic() - epoch[1] < self.RESCAN_EVERY
        )

    def _unsure(self, keys: Sequence[str]) -> list[str]:
        """Of ``keys``, those whose state ``_due`` does not tell: written or notified
        since, never read, or come due."""
        now = self._clock.now()
        out = []
        for key in keys:
            if key in self._stale or key not in self._due:
                out.append(key)
                continue
            due = self._due[key]
            if due is not None and due <= now:
                out.append(key)
        return out

    def _notified(self, template: str, params: dict[str, Any], *, workflow: bool) -> Batch:
        notify = _sql.NOTIFY_BOTH if workflow else _sql.NOTIFY_WORK
        return [Step(self.statements(template), params), Step(notify, params)]

    async def _each_key(
        self, statement: str, keys: Sequence[str], params: dict[str, Any]
    ) -> list[Rows]:
        """The same read on every key in ``keys``, pipelined: one round trip."""
        if not keys:
            return []
        steps = [Step(statement, {**params, "sk": key}) for key in keys]
        return await self._run(steps, transaction=False, read=True)

    def _keys(self, shard_keys: Sequence[str] | None) -> Sequence[str]:
        return self.layout.keys if shard_keys is None else list(dict.fromkeys(shard_keys))

    def _rotated(self, keys: Sequence[str]) -> list[str]:
        if not keys:
            return []
        start = next(self._rotation) % len(keys)
        return [*keys[start:], *keys[:start]]

    # -- reads --

    async def list_workflows(self, query: api.ListQuery) -> list[api.WorkflowRecord]:
        """Each shard key that can hold the tenant's rows gives its first limit + offset
        rows of the listing (a router query, bounded by its LIMIT); they are merged here."""
        layout = await self._ready()
        limit, offset = max(0, query.limit), max(0, query.offset)
        if limit == 0:
            return []
        statement = self.statements(_sql.list_workflows_sql(query))
        params = list_params(query)
        params["limit"] = limit + offset
        per_key = await self._each_key(statement, layout.tenant_keys(query.tenant_id), params)
        records = [_records.record_from_row(row) for rows in per_key for row in rows]
        records.sort(key=api.list_key, reverse=True)
        return records[offset : offset + limit]

    # -- worker operations --

    async def claim(self, request: api.ClaimRequest) -> list[api.ClaimedTask]:
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
        qs = frozenset(queues)
        carried = self._carry.pop(qs, {})
        if not self._listener.listening:
            await self._listener.start(wait=0)  # in the background: _known() waits for it
        self._take_hints()
        notified = self._hinted.get(qs, {})
        self._hinted[qs] = {}
        hinted = [key for key in dict.fromkeys([*carried, *notified]) if key in allowed]
        hinted_keys = set(hinted)
        now = time.monotonic()
        if qs in self._claim_epoch and self._known(self._claim_epoch[qs]):
            # Work can be only where a notification or this process's write says, where
            # a due time has come, or in keys whose state is not known (written since
            # read): those are probed (module doc).
            unsure = [
                k for k in keys if k not in hinted_keys and (k in self._stale or k not in self._due)
            ]
            found = await self._probe(unsure, queues)
            due = self._clock.now()
            come_due = [
                key
                for key in keys
                if key not in hinted_keys
                and key not in self._stale
                and (d := self._due.get(key)) is not None
                and d <= due
            ]
            come_due += [key for key in found if key not in come_due]
            busy = hinted + [key for key in self._rotated(come_due) if key not in set(hinted)]
        elif hinted and now - self._probed_at < self.PROBE_EVERY:
            busy = hinted
        else:
            epoch = self._listener.listens if self._listener.listening else None
            found = await self._probe(keys, queues)
            if epoch is not None and len(keys) == len(self.layout.keys):
                self._due_epoch = self._claim_epoch[qs] = (epoch, now)
            self._probed_at = now
            busy = hinted + [key for key in self._rotated(found) if key not in set(hinted)]
        claimed: list[api.ClaimedTask] = []
        # Fair share first (every key with work gets a turn in every claim, so a key
        # full of one tenant's tasks cannot starve the others), then fill up.
        share = -(-request.limit // len(busy)) if busy else 0
        more: list[str] = []  # keys that gave all that was asked: they may have more
        for key in busy:
            asked = min(share, request.limit - len(claimed))
            got = await self._claim_key(key, queues, asked, request)
            claimed.extend(got)
            if asked == 0 or len(got) == asked:
                more.append(key)  # not asked (the limit was reached), or may have more
        if len(claimed) < request.limit:
            for key in list(more):
                wanted = request.limit - len(claimed)
                if wanted <= 0:
                    break
                got = await self._claim_key(key, queues, wanted, request)
                claimed.extend(got)
                if len(got) < wanted:
                    more.remove(key)
        self._carry.setdefault(qs, {}).update(dict.fromkeys(more))  # the next claim looks first
        return claimed

    async def _probe(self, keys: Sequence[str], queues: list[str]) -> list[str]:
        """Of ``keys``, those with claimable work; their due times refreshed."""
        self._stale.difference_update(keys)  # before the read: writes meanwhile count
        try:
            rows = await self._each_key(self.statements(_sql.CLAIM_PROBE), keys, {"queues": queues})
        except BaseException:
            self._stale.update(keys)
            raise
        found = []
        for key, (row,) in zip(keys, rows, strict=True):
            self._due[key] = None if row["due"] is None else _records.utc(row["due"])
            if row["found"]:
                found.append(key)
        return found

    async def _claim_key(
        self, key: str, queues: list[str], limit: int, request: api.ClaimRequest
    ) -> list[api.ClaimedTask]:
        if limit <= 0:
            return []
        params = {
            "sk": key,
            "queues": queues,
            "limit": limit,
            "tokens": _records.uuid7s(limit),
            "owner": request.owner,
            "lease": request.lease,
            "fresh_only": request.fresh_only,
            **_records.cached_params(request.cached, key),
        }
        steps = [
            Step(self.statements(_sql.CLAIM_LEASE), params),
            Step(self.statements(_sql.CLAIM_HISTORY), params),
            Step(self.statements(_sql.CLAIM_MOVE), params),
            Step(self.statements(_sql.CLAIM_READ), params),
        ]
        return [_records.claimed_task(row) for row in (await self._run(steps))[3]]

    @grouped
    async def commit_workflow_task(
        self, commit: api.WorkflowTaskCommit, *, tx: Any = None
    ) -> list[Event]:
        """``tx``: run it in that open transaction (a transactional activity's)."""
        return await self._drive(self._commit_op(commit), tx)

    def _commit_op(self, commit: api.WorkflowTaskCommit) -> Op[list[Event]]:
        """The commit as an operation (also an item of a group commit)."""
        batch, outcome = self._commit_batch(commit)
        return outcome((yield batch))

    def _commit_batch(self, commit: api.WorkflowTaskCommit) -> tuple[Batch, Outcome[list[Event]]]:
        """The commit: its router statements, one pipeline, and how to read the outcome."""
        acts = commit.activity_tasks
        terminal = commit.status in api.TERMINAL_STATUSES
        keep = commit.keep_lease is not None
        params = _records.commit_params(commit, self.statements.lease_params(commit.lease))
        steps = [Step(self.statements(_sql.FENCE_LOCK), params)]
        before, after = commit_steps(self.statements, commit, params)
        steps += before
        if keep and commit.events:
            steps.append(Step(self.statements(_sql.COMMIT_EVENTS_MOVE), params))
        elif commit.events:
            steps.append(Step(self.statements(_sql.COMMIT_EVENTS), params))
        elif keep:
            steps.append(Step(self.statements(_sql.COMMIT_MOVE), params))
        if commit.drop_seqs and not terminal:
            steps.append(Step(self.statements(_sql.COMMIT_DROP), params))
        if acts and not terminal:
            steps.append(Step(self.statements(_sql.COMMIT_ACTIVITIES), params))
        if commit.timers and not terminal:
            steps.append(Step(self.statements(_sql.COMMIT_TIMERS), params))
        finish = (
            _sql.COMMIT_FINISH_TERMINAL
            if terminal
            else _sql.COMMIT_FINISH_KEEP
            if keep
            else _sql.COMMIT_FINISH_END
        )
        if commit.outbox:  # the messages, under the same guard, in the same transaction
            params.update(outbox_params(commit))
            steps.append(Step(self.statements(_sql_children.COMMIT_OUTBOX), params))
        steps.append(Step(self.statements(finish), params))
        finished_at = len(steps) - 1
        steps += after
        # Workers need a wake-up for new tasks, or when the released workflow task has
        # events waiting; waiters (wait_for_result) when a workflow task ends.
        new_work = bool((acts or commit.timers) and not terminal) or not keep
        if new_work and not keep:
            steps.append(Step(_sql.NOTIFY_BOTH, params))
        elif new_work:
            steps.append(Step(_sql.NOTIFY_WORK, params))

        def outcome(results: list[Rows]) -> list[Event]:
            done = results[finished_at]
            if done:
                moved = done[0]["moved"]
                return [] if moved is None else decode_events(moved)
            raise _records.commit_refused(commit, results[0][0])

        return steps, outcome

    async def park_workflow(self, lease: api.Lease, error: ErrorInfo) -> None:
        params = self.statements.lease_params(lease)
        params["error"] = _records.error_text(error)
        steps = [
            Step(self.statements(_sql.FENCE_LOCK), params),
            Step(self.statements(_sql.PARK_FINISH), params),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        await self._fenced(lease, steps, step=1)

    @grouped
    async def complete_activity(self, result: api.ActivityResult, *, tx: Any = None) -> None:
        """``tx``: run it in that open transaction (a transactional activity's)."""
        await self._drive(self._complete_op(result), tx)

    def _complete_op(self, result: api.ActivityResult) -> Op[None]:
        """The activity result as an operation (also a group commit item)."""
        batch, outcome = self._complete_batch(result)
        outcome((yield batch))

    def _complete_batch(self, result: api.ActivityResult) -> tuple[Batch, Outcome[None]]:
        lease = result.lease
        params = self.statements.lease_params(lease)
        params.update(event=stored_event(result.event), wf_task_id=uuid6.uuid7())
        steps = [
            Step(self.statements(_sql.FENCE_LOCK), params),
            Step(self.statements(_sql.ACTIVITY_INBOX), params),
            Step(self.statements(_sql.COMPLETE_TASK), params),
            Step(self.statements(_sql.COMPLETE_FINISH), params),
            Step(_sql.NOTIFY_BOTH, params),
        ]
        return steps, fenced_outcome(lease, 3)

    def _group_of(self, key: tuple[str, str, str]) -> str:
        """Only the items under one shard key share a transaction: a transaction across
        shard keys would be a multi-shard (two-phase) one, which DESIGN.md idea 9 rules
        out. Groups of different keys run at once, on separate connections."""
        return key[0]

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        if limit <= 0:
            return 0
        await self._ready()
        keys = self._keys(shard_keys)
        # next_due reads every key's next due time (only the keys it is unsure of, once
        # it knows them): a key whose time has come has a timer due.
        await self.next_due(keys)
        now = self._clock.now()
        fired = 0
        due = [key for key in keys if (d := self._due.get(key)) is not None and d <= now]
        for key in self._rotated(due):
            if fired >= limit:
                break
            params = {
                "sk": key,
                "limit": limit - fired,
                "marker": uuid6.uuid7(),
                "task_ids": _records.uuid7s(limit - fired),
            }
            steps = [
                Step(self.statements(_sql.FIRE_MARK), params),
                Step(self.statements(_sql.FIRE_INBOX), params),
                Step(self.statements(_sql.FIRE_TASKS), params),
                Step(self.statements(_sql.FIRE_FINISH), params),
            ]
            finish = (await self._run(steps))[3][0]
            if finish["fired"]:
                fired += int(finish["fired"])
                workflows = finish["workflows"]
                notify = [Step(_sql.NOTIFY_WORK, {"ch_work": self.work_channel, "sk": key})]
                notify += [
                    Step(
                        "SELECT pg_notify(%(ch_wf)s, %(wf_key)s)",
                        {
                            "ch_wf": self.workflow_channel,
                            "wf_key": self.statements.wf_key(tid, wid),
                        },
                    )
                    for tid, wid in _keys_decoder.decode(workflows or "null") or []
                ]
                await self._run(notify, transaction=False)
        return fired

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        await self._ready()
        keys = self._keys(shard_keys)
        if not self._listener.listening:
            await self._listener.start(wait=0)  # a worker's call: listen from now on
        self._take_hints()
        known = self._known()
        read = self._unsure(keys) if known else list(keys)
        epoch = (self._listener.listens, time.monotonic()) if self._listener.listening else None
        self._stale.difference_update(read)  # before the read: writes meanwhile count
        try:
            per_key = await self._each_key(self.statements(_sql.NEXT_DUE), read, {})
        except BaseException:
            self._stale.update(read)
            raise
        for key, rows in zip(read, per_key, strict=True):
            due = rows[0]["due"]
            self._due[key] = None if due is None else _records.utc(due)
        if not known:
            self._due_epoch = epoch
        found = [d for key in keys if (d := self._due.get(key)) is not None]
        return min(found) if found else None

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
            batch = [
                Step(self.statements(_sql.PRUNE), params),
                Step(self.statements(_sql_children.PRUNE_KEYS), params),
            ]
            pruned += int((await self._run(batch))[0][0]["pruned"])
        return pruned

    # -- the outbox (flows_core.store.Outbox; see flows_core._children) --

    async def claim_outbox(
        self, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> list[api.OutboxRecord]:
        """Due messages of the keys that have some (one pipelined probe of every key),
        each key's claim a router statement of its own."""
        if limit <= 0:
            return []
        await self._ready()
        keys = self._keys(shard_keys)
        probes = await self._each_key(self.statements(_sql_children.OUTBOX_PROBE), keys, {})
        due = [key for key, rows in zip(keys, probes, strict=True) if rows[0]["found"]]
        claimed: list[api.OutboxRecord] = []
        for key in self._rotated(due):
            if len(claimed) >= limit:
                break
            params = {"sk": key, "limit": limit - len(claimed), "lease": lease}
            rows = await self._run_one(self.statements(_sql_children.CLAIM_OUTBOX), params)
            claimed += [outbox_record(row) for row in rows]
        return claimed

    async def delete_outbox(self, records: Sequence[api.OutboxRecord]) -> None:
        """One router DELETE per sender shard key, pipelined, each its own transaction."""
        by_key: dict[str, list[api.OutboxRecord]] = {}
        for record in records:
            by_key.setdefault(record.shard_key, []).append(record)
        steps = [
            Step(
                self.statements(_sql_children.DELETE_OUTBOX),
                {
                    "sk": key,
                    "o_tenants": [r.tenant_id for r in group],
                    "o_ids": [uuid_of(r.message_id, "outbox message id") for r in group],
                },
            )
            for key, group in by_key.items()
        ]
        if steps:
            await self._run(steps, transaction=False)

    async def count_workflows(self, tenant_id: str) -> dict[str, int]:
        """``tenant_id``'s workflows per status (``flows_core.store.WorkflowCounts``):
        one router query per shard key that can hold them, pipelined."""
        layout = await self._ready()
        statement = self.statements(_sql.COUNT_WORKFLOWS)
        per_key = await self._each_key(statement, layout.tenant_keys(tenant_id), {"tid": tenant_id})
        counts: dict[str, int] = {}
        for rows in per_key:
            for status, count in _counts_decoder.decode(rows[0]["statuses"]).items():
                counts[status] = counts.get(status, 0) + int(count)
        return counts

    async def stats(self, shard_keys: Sequence[str] | None = None) -> api.StoreStats:
        await self._ready()
        keys = self._keys(shard_keys)
        per_key = await self._each_key(self.statements(_sql.STATS), keys, {})
        depth: dict[str, int] = {}
        oldest: datetime | None = None
        now: datetime | None = None
        in_flight = 0
        by_status: dict[str, int] = {}
        for key, rows in zip(keys, per_key, strict=True):
            row = rows[0]
            now, first = row["now"], row["oldest"]
            if row["depth"]:
                depth[key] = int(row["depth"])
            if first is not None and (oldest is None or first < oldest):
                oldest = first
            in_flight += int(row["in_flight"])
            for status, count in _counts_decoder.decode(row["statuses"]).items():
                by_status[status] = by_status.get(status, 0) + int(count)
        age = None if oldest is None or now is None else now - oldest
        return _records.store_stats(depth, age, in_flight, by_status)
