"""``MemoryStore``: the reference implementation of the Store protocol, in memory.

Same semantics as the PostgreSQL store (leases, fencing, coalesced workflow tasks),
with a pluggable clock (a ``VirtualClock`` in tests) and a fault hook that can make any
operation fail before or after it takes effect, to test crash recovery.

It keeps what PostgreSQL keeps: every written event goes through the stored JSON form
and back (``flows_core.store.round_trip_event``), errors, payloads and text columns
through the same checks (``stored_error``, ``stored_payload``, ``stored_text``), so a
value PostgreSQL refuses is refused here too, with the same Flows error, before
anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import msgspec
import uuid6

from flows_core import (
    Clock,
    ErrorInfo,
    InvalidArgument,
    LeaseLost,
    ScheduleNotFound,
    SystemClock,
    WorkflowAlreadyExists,
    WorkflowNotFound,
)
from flows_core.events import (
    CancelRequested,
    Event,
    SignalReceived,
    TimerFired,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    CancelOutcome,
    ClaimedTask,
    ClaimRequest,
    FsckExpiredLease,
    FsckOrphan,
    FsckWorkflow,
    HeartbeatReply,
    Lease,
    ListQuery,
    NewWorkflow,
    OutboxRecord,
    RunRecord,
    ScheduleAdvance,
    ScheduleClaim,
    ScheduleLease,
    ScheduleRecord,
    StartRequest,
    StoreStats,
    TerminateOutcome,
    TransactionWrite,
    WorkerInfo,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
    cancel_outcome,
    continued_length,
    eager_start_claim,
    list_key,
    parked_cancellation,
    round_trip_event,
    signal_outcome,
    stored_error,
    stored_payload,
    stored_text,
    terminate_outcome,
    terminated_error,
)

from ._debounce import MemoryDebounce
from ._limits import MemoryLimits, _Limit
from ._transaction import AppTables, MemoryTransaction

__all__ = ["FaultHook", "MemoryStore"]

_E = TypeVar("_E", bound=Event)
_T = TypeVar("_T")

FaultHook = Callable[[str, Literal["before", "after"]], None]
"""Called around every write: raise from it to simulate a crash at that point."""

_Kind = Literal["workflow", "activity", "timer"]
_counter = itertools.count()
_NULL = msgspec.Raw(b"null")

_Queue = tuple[str, str, int]
"""A claim queue: ("w", workflow name, version), ("a", activity name, 0), ("t", "", 0)."""


@dataclass
class _Schedule:
    record: ScheduleRecord
    lease_token: str | None = None
    lease_expires_at: datetime | None = None


@dataclass
class _Task:
    task_id: str
    kind: _Kind
    key: tuple[str, str]
    shard_key: str
    visible_at: datetime
    seq: int = 0
    name: str = ""
    input: msgspec.Raw = field(default_factory=lambda: _NULL)
    attempt: int = 1
    token: str | None = None
    owner: str | None = None
    lease_expires: datetime | None = None
    parked: bool = False
    last_error: ErrorInfo | None = None
    scheduled_at: datetime | None = None
    order: int = field(default_factory=lambda: next(_counter))
    queue: _Queue = ("t", "", 0)
    gen: int = 0
    """Bumped on every change of claimability (and on delete): heap entries carrying an
    older generation are stale and skipped (lazy invalidation)."""


_Entry = tuple[datetime, int, int, _Task]
"""A heap entry: (when, task.order, task.gen, task)."""


class _ReadyQueue:
    """The claimable entries of one queue in (when, order) order.

    Entries mostly arrive in that order (a task is ready from its creation, stamped
    with the clock and a counter): those are appended to a FIFO, taken from its head in
    O(1) whatever the backlog. An entry older than the FIFO's tail (a promoted retry, an
    expired lease, an entry a claim skipped) goes into a heap; ``pop`` takes the smaller
    of the two heads. A claim therefore costs the same with 2,500 or 100,000 tasks
    waiting."""

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque[_Entry] = deque()
        self.heap: list[_Entry] = []

    def __bool__(self) -> bool:
        return bool(self.fifo) or bool(self.heap)

    def push(self, entry: _Entry) -> None:
        fifo = self.fifo
        if not fifo or (entry[0], entry[1]) >= (fifo[-1][0], fifo[-1][1]):
            fifo.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def head(self) -> _Entry:
        """The first entry (the queue is not empty)."""
        fifo, heap = self.fifo, self.heap
        if not heap:
            return fifo[0]
        if not fifo:
            return heap[0]
        a, b = fifo[0], heap[0]
        return a if (a[0], a[1]) <= (b[0], b[1]) else b

    def pop(self) -> _Entry:
        """Take the first entry (the queue is not empty)."""
        fifo, heap = self.fifo, self.heap
        if not heap:
            return fifo.popleft()
        if not fifo:
            return heapq.heappop(heap)
        a, b = fifo[0], heap[0]
        return fifo.popleft() if (a[0], a[1]) <= (b[0], b[1]) else heapq.heappop(heap)

    def clean(self) -> _Entry | None:
        """Drop stale entries off the front; the first live entry, if any."""
        while self:
            entry = self.head()
            if entry[3].gen == entry[2]:
                return entry
            self.pop()
        return None


@dataclass
class _Workflow:
    tenant_id: str
    workflow_id: str
    name: str
    version: int
    shard_key: str
    input: msgspec.Raw
    created_at: datetime
    updated_at: datetime
    history: list[Event]
    inbox: list[Event] = field(default_factory=list)
    """Events from outside (signals, cancel, timer firings, queued results) not yet in
    the history: the next workflow-task claim appends them, so the history only ever
    grows by its owner's hand (see the Store protocol)."""
    status: WorkflowStatus = WorkflowStatus.RUNNING
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    next_seq: int = 1
    cancel_requested: bool = False
    workflow_task: _Task | None = None
    step_tasks: dict[int, _Task] = field(default_factory=dict)
    delivered: dict[str, datetime] = field(default_factory=dict)
    """Keys of ``deliver_once`` deliveries and when they came (gone with the workflow, or
    at a ``prune`` whose age they passed)."""
    run_number: int = 1
    run_started_at: datetime | None = None
    status_value: msgspec.Raw | None = None
    runs: list[tuple[RunRecord, list[Event]]] = field(default_factory=list)
    """Earlier runs (continue-as-new), oldest first, with their histories."""

    @classmethod
    def new(cls, new: NewWorkflow, now: datetime) -> _Workflow:
        """A just-started workflow: its row and its WorkflowStarted event (refused, before
        anything is written, with what a database store would refuse)."""
        stored_text(new.tenant_id, "tenant id")
        stored_text(new.workflow_id, "workflow id")
        stored_text(new.name, "workflow name")
        stored_text(new.shard_key, "shard key")
        stored_payload(new.input, "workflow input")
        started = round_trip_event(new.started)
        return cls(
            tenant_id=new.tenant_id,
            workflow_id=new.workflow_id,
            name=new.name,
            version=new.version,
            shard_key=new.shard_key,
            input=new.input,
            created_at=now,
            updated_at=now,
            history=[started],
        )


async def _outcome(write: Awaitable[_T]) -> _T | Exception:
    """What ``write`` returns, or the exception it raises (an item of a group commit)."""
    try:
        return await write
    except Exception as exc:
        return exc


def _no_tx(tx: Any) -> None:
    if tx is not None:
        raise TypeError(
            f"MemoryStore does not take a transaction (tx=); got {type(tx).__name__}. "
            "Transactions with your own data need flows_pg.PostgresStore."
        )


class MemoryStore(MemoryLimits, MemoryDebounce):
    """In-memory Store. Not shared between processes; everything is lost on exit."""

    def __init__(self, *, clock: Clock | None = None, fault_hook: FaultHook | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self.fault_hook = fault_hook
        self._workflows: dict[tuple[str, str], _Workflow] = {}
        self._tasks: dict[str, _Task] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._work_waiters: list[asyncio.Future[None]] = []
        self._work_missed = False
        """Work was notified while nobody waited: the next ``wait_for_work`` returns at
        once (as PostgreSQL's listener does), so a wake-up is never lost."""
        self._wf_waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        # Indexes (lazy invalidation through _Task.gen), so claims and timer scans do
        # not look at every task:
        self._pending: dict[str, list[_Entry]] = {}
        """Per shard: non-timer, unparked tasks keyed by the time they become claimable
        (visible_at, or the lease expiry if later)."""
        self._ready: dict[_Queue, _ReadyQueue] = {}
        """Per queue: claimable tasks keyed by (visible_at, order), the claim order."""
        self._timer_wait: dict[str, list[_Entry]] = {}
        """Per shard: timers not yet due at the last look, keyed by (visible_at, order)."""
        self._timer_due: dict[str, list[_Entry]] = {}
        """Per shard: due timers, keyed by (visible_at, order)."""
        self._outbox: dict[tuple[str, str], tuple[datetime, OutboxRecord]] = {}
        """(shard key, message id) -> (due at, message): the per-shard outbox."""
        self._limits: dict[tuple[str, str], _Limit] = {}
        """Flow control (flows_memory._limits): slots, waiters, rate tokens per limit."""
        self._waiting: dict[str, tuple[str, datetime]] = {}
        """task id -> (reason, visible_at) of tasks deferred by ``defer_task``."""
        self._pushes = 0
        self._schedules: dict[tuple[str, str], _Schedule] = {}
        self._pending_starts = {}
        self._newest_window = {}
        self.operations = 0
        """Number of write operations applied (a stand-in for transactions)."""
        self.app_tables = AppTables()
        """The application's rows of the transactional-activity stand-in
        (``MemoryTransaction``); ``app_tables.table(name)`` reads one table."""
        self._committing: MemoryTransaction | None = None

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- helpers --

    def _fault(self, op: str, when: Literal["before", "after"]) -> None:
        if self.fault_hook is not None:
            self.fault_hook(op, when)

    def _get(self, tenant_id: str, workflow_id: str) -> _Workflow:
        wf = self._find(tenant_id, workflow_id)
        if wf is None:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return wf

    def _received(self, operation: str, event: _E, tx: Any) -> _E:
        """The start of a client write: no caller transaction, the ``before`` fault, and
        ``event`` as the store keeps it."""
        _no_tx(tx)
        self._fault(operation, "before")
        kept = round_trip_event(event)
        assert isinstance(kept, type(event))
        return kept

    def _find(self, tenant_id: str, workflow_id: str) -> _Workflow | None:
        """The workflow, or None; ids a database could not even look up are refused."""
        wf = self._workflows.get((tenant_id, workflow_id))
        if wf is None:
            stored_text(tenant_id, "tenant id")
            stored_text(workflow_id, "workflow id")
        return wf

    def _record(self, wf: _Workflow) -> WorkflowRecord:
        task = wf.workflow_task
        now = self._clock.now()
        pending = (
            task is not None
            and not task.parked
            and (
                task.token is None or (task.lease_expires is not None and task.lease_expires <= now)
            )
        )
        return WorkflowRecord(
            tenant_id=wf.tenant_id,
            workflow_id=wf.workflow_id,
            name=wf.name,
            version=wf.version,
            shard_key=wf.shard_key,
            status=wf.status,
            input=wf.input,
            output=wf.output,
            error=wf.error,
            created_at=wf.created_at,
            updated_at=wf.updated_at,
            history_length=len(wf.history),
            next_seq=wf.next_seq,
            cancel_requested=wf.cancel_requested,
            workflow_task_pending=pending,
            inbox_length=len(wf.inbox),
            run_number=wf.run_number,
            status_value=wf.status_value,
        )

    def _flush(self, wf: _Workflow) -> WorkflowRecord:
        """Move the inbox into the history (at a workflow-task claim)."""
        if wf.inbox:
            wf.history.extend(wf.inbox)
            wf.inbox.clear()
        return self._record(wf)

    def _new_task(self, wf: _Workflow, kind: _Kind, visible_at: datetime, **fields: Any) -> _Task:
        task = _Task(
            task_id=str(uuid6.uuid7()),
            kind=kind,
            key=(wf.tenant_id, wf.workflow_id),
            shard_key=wf.shard_key,
            visible_at=visible_at,
            **fields,
        )
        if kind == "workflow":
            task.queue = ("w", wf.name, wf.version)
        elif kind == "activity":
            task.queue = ("a", task.name, 0)
        self._tasks[task.task_id] = task
        self._touch(task)
        return task

    def _ensure_workflow_task(self, wf: _Workflow) -> None:
        if wf.workflow_task is None:
            wf.workflow_task = self._new_task(wf, "workflow", self._clock.now())

    def _delete(self, task: _Task) -> None:
        if self._tasks.get(task.task_id) is task:
            del self._tasks[task.task_id]
            self._waiting.pop(task.task_id, None)
        task.gen += 1

    # -- indexes --

    def _index(self, task: _Task) -> None:
        """Push an entry for the task's current state and generation."""
        if self._tasks.get(task.task_id) is not task:
            return
        now = self._clock.now()
        entry: _Entry = (task.visible_at, task.order, task.gen, task)
        if task.kind == "timer":
            timers = self._timer_due if task.visible_at <= now else self._timer_wait
            heapq.heappush(timers.setdefault(task.shard_key, []), entry)
        elif task.parked:
            return
        elif self._claimable(task, now):
            self._ready_queue(task.queue).push(entry)
        else:
            when = task.visible_at
            if task.token is not None and task.lease_expires is not None:
                when = max(when, task.lease_expires)
            entry = (when, task.order, task.gen, task)
            heapq.heappush(self._pending.setdefault(task.shard_key, []), entry)
        self._pushes += 1

    def _touch(self, task: _Task) -> None:
        """Call after any change to a task's visibility, lease or parked state."""
        task.gen += 1
        self._index(task)
        if self._pushes > 2 * len(self._tasks) + 1024:
            self._rebuild()

    def _rebuild(self) -> None:
        """Drop all heap entries (and so the stale ones) and index every task afresh."""
        self._pending, self._ready = {}, {}
        self._timer_wait, self._timer_due = {}, {}
        self._pushes = 0
        for task in self._tasks.values():
            self._index(task)

    def _promote(self, now: datetime) -> None:
        """Move pending tasks whose time has come into their ready queues."""
        for heap in self._pending.values():
            while heap and heap[0][0] <= now:
                _, order, gen, task = heapq.heappop(heap)
                if task.gen == gen and self._claimable(task, now):
                    self._ready_queue(task.queue).push((task.visible_at, order, gen, task))
        for shard, heap in self._timer_wait.items():
            if heap and heap[0][0] <= now:
                due = self._timer_due.setdefault(shard, [])
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)
                    if entry[3].gen == entry[2]:
                        heapq.heappush(due, entry)

    def _ready_queue(self, queue: _Queue) -> _ReadyQueue:
        found = self._ready.get(queue)
        if found is None:
            found = self._ready[queue] = _ReadyQueue()
        return found

    def _merge_ready(self, keys: Sequence[_Queue]) -> Iterator[tuple[_Queue, _Entry]]:
        """Take entries from the ready queues ``keys`` in global (when, order) order."""
        live = [(k, q) for k in dict.fromkeys(keys) if (q := self._ready.get(k))]
        if len(live) == 1:  # the usual case: one workflow type or activity
            k, q = live[0]
            while q:
                yield k, q.pop()
            return
        heads: list[tuple[datetime, int, _Queue]] = []
        for k, q in live:
            first = q.head()
            heads.append((first[0], first[1], k))
        heapq.heapify(heads)
        while heads:
            _, _, k = heapq.heappop(heads)
            q = self._ready[k]
            entry = q.pop()
            if q:
                first = q.head()
                heapq.heappush(heads, (first[0], first[1], k))
            yield k, entry

    @staticmethod
    def _clean(heap: list[_Entry] | None) -> list[_Entry] | None:
        """Pop stale entries off the top; the heap if a live entry remains, else None."""
        if heap is None:
            return None
        while heap and heap[0][3].gen != heap[0][2]:
            heapq.heappop(heap)
        return heap or None

    @staticmethod
    def _merge(heaps: dict[Any, list[_Entry]], keys: Any) -> Iterator[tuple[Any, _Entry]]:
        """Pop entries from ``heaps[k]`` for k in ``keys`` in global (when, order) order."""
        heads: list[tuple[datetime, int, Any]] = []
        for k in dict.fromkeys(keys):
            h = heaps.get(k)
            if h:
                heads.append((h[0][0], h[0][1], k))
        heapq.heapify(heads)
        while heads:
            _, _, k = heapq.heappop(heads)
            h = heaps[k]
            entry = heapq.heappop(h)
            if h:
                heapq.heappush(heads, (h[0][0], h[0][1], k))
            yield k, entry

    def _drop_all(self, wf: _Workflow) -> None:
        if wf.workflow_task is not None:
            self._delete(wf.workflow_task)
            wf.workflow_task = None
        for task in wf.step_tasks.values():
            self._delete(task)
        wf.step_tasks.clear()

    def _leased(self, lease: Lease) -> tuple[_Task, _Workflow]:
        task = self._tasks.get(lease.task_id)
        if task is None or task.token != lease.token:
            raise LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")
        wf = self._workflows.get(task.key)
        if wf is None:
            raise LeaseLost(f"workflow {lease.workflow_id} is gone")
        return task, wf

    def _changed(self, wf: _Workflow, *, work: bool) -> None:
        wf.updated_at = self._clock.now()
        self.operations += 1
        for fut in self._wf_waiters.pop((wf.tenant_id, wf.workflow_id), []):
            if not fut.done():
                fut.set_result(None)
        if work:
            self.notify_work()

    def notify_work(self) -> None:
        """Wake every ``wait_for_work`` caller (or the next one, if none waits now)."""
        waiters, self._work_waiters = self._work_waiters, []
        self._work_missed = not waiters
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    @staticmethod
    async def _wait(fut: asyncio.Future[None], timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    # -- client operations --

    async def start_workflow(self, new: NewWorkflow, *, tx: Any = None) -> None:
        _no_tx(tx)
        self._fault("start_workflow", "before")
        key = (new.tenant_id, new.workflow_id)
        if key in self._workflows:
            raise WorkflowAlreadyExists(new.workflow_id)
        now = self._clock.now()
        wf = self._workflows[key] = _Workflow.new(new, now)
        self._ensure_workflow_task(wf)
        task = wf.workflow_task
        if new.claim_ahead > timedelta(0) and task is not None:
            task.visible_at = min(task.visible_at, now - new.claim_ahead)
            self._touch(task)
        self._changed(wf, work=True)
        self._fault("start_workflow", "after")

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        """Eager start (``flows_core.store.EagerStart``): ``start_workflow`` with the
        workflow task leased to ``owner`` as if claimed at once."""
        self._fault("start_workflow", "before")
        key = (new.tenant_id, new.workflow_id)
        if key in self._workflows:
            raise WorkflowAlreadyExists(new.workflow_id)
        stored_text(owner, "lease owner")
        now = self._clock.now()
        wf = self._workflows[key] = _Workflow.new(new, now)
        expires = now + lease
        # attempt 2: the number the next claim gets, as after a claim (dead letters)
        task = self._new_task(
            wf,
            "workflow",
            now,
            attempt=2,
            token=str(uuid6.uuid7()),
            owner=owner,
            lease_expires=expires,
        )
        wf.workflow_task = task
        self._changed(wf, work=False)
        self._fault("start_workflow", "after")
        return eager_start_claim(
            new,
            task_id=task.task_id,
            token=task.token or "",
            expires_at=expires,
            created_at=now,
            updated_at=now,
        )

    async def signal_workflow(
        self, tenant_id: str, workflow_id: str, event: SignalReceived, *, tx: Any = None
    ) -> None:
        kept = self._received("signal_workflow", event, tx)
        wf = self._find(tenant_id, workflow_id)
        signal_outcome(tenant_id, workflow_id, None if wf is None else wf.status)
        assert wf is not None
        wf.inbox.append(kept)
        self._ensure_workflow_task(wf)
        self._changed(wf, work=True)
        self._fault("signal_workflow", "after")

    async def deliver_once(
        self, tenant_id: str, workflow_id: str, event: Event, key: str, *, tx: Any = None
    ) -> bool:
        """``flows_core.store.Outbox.deliver_once``."""
        kept = self._received("deliver_once", event, tx)
        stored_text(key, "delivery key")
        wf = self._find(tenant_id, workflow_id)
        if wf is not None and key in wf.delivered:
            return False
        signal_outcome(tenant_id, workflow_id, None if wf is None else wf.status)
        assert wf is not None
        wf.delivered[key] = self._clock.now()
        wf.inbox.append(kept)
        self._ensure_workflow_task(wf)
        self._changed(wf, work=True)
        self._fault("deliver_once", "after")
        return True

    async def claim_outbox(
        self, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> list[OutboxRecord]:
        """``flows_core.store.Outbox.claim_outbox``."""
        if limit <= 0:
            return []
        self._fault("claim_outbox", "before")
        now = self._clock.now()
        shards = None if shard_keys is None else set(shard_keys)
        due = sorted(
            (when, key)
            for key, (when, _) in self._outbox.items()
            if when <= now and (shards is None or key[0] in shards)
        )[:limit]
        claimed = []
        for _, key in due:
            record = self._outbox[key][1]
            self._outbox[key] = (now + lease, record)
            claimed.append(record)
        self._fault("claim_outbox", "after")
        return claimed

    async def delete_outbox(self, records: Sequence[OutboxRecord]) -> None:
        """``flows_core.store.Outbox.delete_outbox``."""
        self._fault("delete_outbox", "before")
        for record in records:
            self._outbox.pop((record.shard_key, record.message_id), None)
        self._fault("delete_outbox", "after")

    def outbox_size(self) -> int:
        """Messages in the outbox (test helper)."""
        return len(self._outbox)

    async def cancel_workflow(
        self, tenant_id: str, workflow_id: str, event: CancelRequested, *, tx: Any = None
    ) -> CancelOutcome:
        kept = self._received("cancel_workflow", event, tx)
        wf = self._find(tenant_id, workflow_id)
        outcome = cancel_outcome(
            tenant_id,
            workflow_id,
            None if wf is None else wf.status,
            wf is not None and wf.cancel_requested,
        )
        assert wf is not None
        if outcome == CancelOutcome.REQUESTED:
            wf.cancel_requested = True
            wf.inbox.append(kept)
            self._ensure_workflow_task(wf)
            self._changed(wf, work=True)
        elif outcome == CancelOutcome.CANCELLED:
            end = parked_cancellation(kept)
            wf.cancel_requested = True
            self._end(wf, [kept, end], WorkflowStatus.CANCELLED, end.error)
        else:
            return outcome  # nothing written
        self._fault("cancel_workflow", "after")
        return outcome

    async def terminate_workflow(
        self,
        tenant_id: str,
        workflow_id: str,
        event: WorkflowTerminatedEvent,
        *,
        tx: Any = None,
    ) -> TerminateOutcome:
        kept = self._received("terminate_workflow", event, tx)
        wf = self._find(tenant_id, workflow_id)
        outcome = terminate_outcome(tenant_id, workflow_id, None if wf is None else wf.status)
        if outcome == TerminateOutcome.ALREADY_FINISHED:
            return outcome  # nothing written
        assert wf is not None
        self._end(wf, [kept], WorkflowStatus.TERMINATED, terminated_error(kept))
        self._fault("terminate_workflow", "after")
        return outcome

    def _end(
        self, wf: _Workflow, events: list[Event], status: WorkflowStatus, error: ErrorInfo | None
    ) -> None:
        """End a workflow from outside at once: ``events`` appended after the history
        (any leased commit is fenced out), every task and the inbox dropped, waiters
        woken."""
        wf.history.extend(events)
        wf.inbox.clear()
        wf.status = status
        wf.output = None
        wf.error = error
        self._drop_all(wf)
        self._changed(wf, work=False)

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, *, tx: Any = None
    ) -> WorkflowRecord:
        _no_tx(tx)
        return self._record(self._get(tenant_id, workflow_id))

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        return list(self._get(tenant_id, workflow_id).history[after:])

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        if query.tenant_id is not None:
            stored_text(query.tenant_id, "tenant id")
        if query.name is not None:
            stored_text(query.name, "workflow name")
        if query.id_prefix is not None:
            stored_text(query.id_prefix, "id prefix")
        if query.after is not None:
            stored_text(query.after[1], "cursor workflow id")
        found = [
            record
            for record in (self._record(wf) for wf in self._workflows.values())
            if query.matches(record)
        ]
        found.sort(key=list_key, reverse=True)
        start = max(0, query.offset)
        return found[start : start + max(0, query.limit)]

    async def wait_for_workflow(self, tenant_id: str, workflow_id: str, timeout: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._wf_waiters.setdefault((tenant_id, workflow_id), []).append(fut)
        await self._wait(fut, timeout)

    # -- worker operations --

    def _claimable(self, task: _Task, now: datetime) -> bool:
        if task.kind == "timer" or task.parked or task.visible_at > now:
            return False
        return task.token is None or (task.lease_expires is not None and task.lease_expires <= now)

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        self._fault("claim", "before")
        stored_text(request.owner, "lease owner")
        now = self._clock.now()
        shards = set(request.shard_keys) if request.shard_keys is not None else None
        queues: list[_Queue] = [("w", n, v) for n, v in request.workflow_types]
        queues += [("a", n, 0) for n in request.activity_names]
        self._promote(now)
        candidates: list[tuple[_Task, _Workflow]] = []
        skipped: list[tuple[_Queue, _Entry]] = []
        if request.limit > 0:
            for q, entry in self._merge_ready(queues):
                task, gen = entry[3], entry[2]
                if task.gen != gen:
                    continue  # stale
                if not self._claimable(task, now):  # the clock went back
                    self._touch(task)
                    continue
                wf = self._workflows[task.key]
                if (
                    (shards is not None and task.shard_key not in shards)
                    or (task.kind == "workflow" and wf.status != WorkflowStatus.RUNNING)
                    or (task.kind == "workflow" and request.fresh_only and task.attempt > 1)
                ):
                    skipped.append((q, entry))
                    continue
                candidates.append((task, wf))
                if len(candidates) >= request.limit:
                    break
        for q, entry in skipped:
            self._ready_queue(q).push(entry)
        claimed: list[ClaimedTask] = []
        expires = now + request.lease
        cached = {(c.tenant_id, c.workflow_id): c for c in request.cached}
        for task, wf in candidates:
            if task.kind == "activity" and task.token is not None:
                # the previous claimant's lease ran out with nothing recorded: its
                # attempt is counted (the worker fails the step past its retry policy)
                task.attempt += 1
            task.token = str(uuid6.uuid7())
            task.owner = request.owner
            task.lease_expires = expires
            self._touch(task)
            lease = Lease(
                task_id=task.task_id,
                token=task.token,
                tenant_id=wf.tenant_id,
                shard_key=wf.shard_key,
                workflow_id=wf.workflow_id,
                expires_at=expires,
            )
            if task.kind == "workflow":
                # task.attempt is the number the next claim gets (dead-letter accounting)
                attempt = task.attempt
                task.attempt += 1
                record = self._flush(wf)
                start = continued_length(cached.get(task.key), wf.history)
                claimed.append(
                    WorkflowTaskClaim(
                        lease=lease,
                        workflow=record,
                        history=wf.history[start:],
                        attempt=attempt,
                        history_from=start,
                    )
                )
            else:
                claimed.append(
                    ActivityTaskClaim(
                        lease=lease,
                        workflow_name=wf.name,
                        seq=task.seq,
                        activity_name=task.name,
                        input=task.input,
                        attempt=task.attempt,
                        cancel_requested=wf.cancel_requested,
                        scheduled_at=task.scheduled_at,
                    )
                )
        if claimed:
            self.operations += 1
        self._fault("claim", "after")
        return claimed

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        self._fault("commit_workflow_task", "before")
        task, wf = self._leased(commit.lease)
        if wf.next_seq != commit.expected_next_seq:
            raise LeaseLost(
                f"workflow {wf.workflow_id}: next step is #{wf.next_seq}, "
                f"the commit expected #{commit.expected_next_seq}"
            )
        now = self._clock.now()
        if len(wf.history) != commit.claimed_history_length:
            raise LeaseLost(
                f"workflow {wf.workflow_id}: history has {len(wf.history)} events, "
                f"the commit was decided on {commit.claimed_history_length}"
            )
        moved: list[Event] = []
        if commit.keep_lease is not None and commit.status != WorkflowStatus.RUNNING:
            raise ValueError("keep_lease is only valid with a RUNNING status")
        events = [round_trip_event(e) for e in commit.events]
        if commit.status_value is not None:
            stored_payload(commit.status_value, "workflow status")
        following = commit.continue_as_new
        if following is not None:
            if commit.status != WorkflowStatus.RUNNING or commit.keep_lease is not None:
                raise ValueError(
                    "continue_as_new is only valid with a RUNNING status, no keep_lease"
                )
            started = round_trip_event(following.started)
            carried = [round_trip_event(e) for e in following.carried]
        if commit.output is not None:
            stored_payload(commit.output, "workflow output")
        if commit.error is not None:
            stored_error(commit.error, "workflow error")
        for spec in commit.activity_tasks:
            stored_text(spec.name, "activity name")
            stored_payload(spec.input, "activity input")
            if spec.last_error is not None:
                stored_error(spec.last_error, "activity error")
        for message in commit.outbox:
            stored_payload(message.body, "outbox message")
            self._outbox[(wf.shard_key, message.message_id)] = (
                now + message.delay,
                OutboxRecord(
                    tenant_id=wf.tenant_id,
                    workflow_id=wf.workflow_id,
                    shard_key=wf.shard_key,
                    message_id=message.message_id,
                    body=message.body,
                ),
            )
        grew = bool(wf.inbox)
        wf.history.extend(events)
        wf.next_seq = commit.next_seq
        wf.status = commit.status
        wf.output = commit.output
        wf.error = commit.error
        if commit.status in TERMINAL_STATUSES:
            self._drop_all(wf)
        else:
            for seq in commit.drop_seqs:
                dropped = wf.step_tasks.pop(seq, None)
                if dropped is not None:
                    self._delete(dropped)
            for spec in commit.activity_tasks:
                wf.step_tasks[spec.seq] = self._new_task(
                    wf,
                    "activity",
                    spec.visible_at or now,
                    seq=spec.seq,
                    name=spec.name,
                    input=spec.input,
                    attempt=spec.attempt,
                    last_error=spec.last_error,
                    scheduled_at=spec.scheduled_at,
                )
            for timer in commit.timers:
                wf.step_tasks[timer.seq] = self._new_task(wf, "timer", timer.fire_at, seq=timer.seq)
            task.attempt = 1  # a successful commit resets the attempt count
            if commit.keep_lease is not None:
                task.lease_expires = now + commit.keep_lease
                self._touch(task)
                moved = list(wf.inbox)
                self._flush(wf)
            elif grew:
                task.token = task.owner = task.lease_expires = None
                task.visible_at = now
                self._touch(task)
            else:
                self._delete(task)
                wf.workflow_task = None
        if commit.status_value is not None:
            wf.status_value = commit.status_value
        if following is not None:
            self._next_run(wf, started, carried, now)
        self._changed(wf, work=True)
        self._commit_transaction()
        self._fault("commit_workflow_task", "after")
        return moved

    def _next_run(self, wf: _Workflow, started: Event, carried: list[Event], now: datetime) -> None:
        """Archive the current run and start the next (``flows_core.store.ContinueAsNew``)."""
        ended = RunRecord(
            run_number=wf.run_number,
            input=wf.input,
            started_at=wf.run_started_at or wf.created_at,
            ended_at=now,
            history_length=len(wf.history),
        )
        wf.runs.append((ended, wf.history))
        assert isinstance(started, WorkflowStarted)
        wf.run_number += 1
        wf.run_started_at = now
        wf.input = started.input
        wf.history = [started, *carried]
        wf.next_seq = 1
        wf.status, wf.output, wf.error = WorkflowStatus.RUNNING, None, None
        for step in wf.step_tasks.values():
            self._delete(step)
        wf.step_tasks.clear()
        wf.inbox = [e for e in wf.inbox if getattr(e, "seq", None) is None]
        self._ensure_workflow_task(wf)
        task = wf.workflow_task
        assert task is not None
        task.token = task.owner = task.lease_expires = None
        task.visible_at = now
        task.attempt = 1
        self._touch(task)

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        self._fault("park_workflow", "before")
        task, wf = self._leased(lease)
        stored_error(error, "park error")
        wf.status = WorkflowStatus.PARKED
        wf.error = error
        task.parked = True
        task.token = task.owner = task.lease_expires = None
        self._touch(task)
        self._changed(wf, work=False)
        self._fault("park_workflow", "after")

    # -- dead letters --

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        self._fault("fail_workflow_task", "before")
        task, wf = self._leased(lease)
        if task.kind != "workflow":
            raise LeaseLost(f"task {lease.task_id} is not a workflow task")
        stored_error(error, "workflow task error")
        task.token = task.owner = task.lease_expires = None
        task.visible_at = visible_at
        task.last_error = error
        self._touch(task)
        self._changed(wf, work=True)
        self._fault("fail_workflow_task", "after")

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        self._fault("retry_workflow", "before")
        wf = self._get(tenant_id, workflow_id)
        if wf.status != WorkflowStatus.PARKED:
            return False
        wf.status = WorkflowStatus.RUNNING
        wf.error = None
        self._ensure_workflow_task(wf)
        task = wf.workflow_task
        assert task is not None
        task.parked = False
        task.token = task.owner = task.lease_expires = None
        task.visible_at = self._clock.now()
        task.attempt = 1
        task.last_error = None
        self._touch(task)
        self._changed(wf, work=True)
        self._fault("retry_workflow", "after")
        return True

    async def complete_activity(self, result: ActivityResult) -> None:
        self._fault("complete_activity", "before")
        task, wf = self._leased(result.lease)
        wf.inbox.append(round_trip_event(result.event))
        wf.step_tasks.pop(task.seq, None)
        self._delete(task)
        self._ensure_workflow_task(wf)
        self._changed(wf, work=True)
        self._commit_transaction()
        self._fault("complete_activity", "after")

    # -- group commit (flows_core.store.GroupCommit): each item on its own, in order --

    async def commit_workflow_tasks(
        self, commits: Sequence[WorkflowTaskCommit]
    ) -> list[list[Event] | Exception]:
        return [await _outcome(self.commit_workflow_task(commit)) for commit in commits]

    async def complete_activities(
        self, results: Sequence[ActivityResult]
    ) -> list[Exception | None]:
        return [await _outcome(self.complete_activity(result)) for result in results]

    async def start_workflows(
        self, starts: Sequence[StartRequest]
    ) -> list[WorkflowTaskClaim | Exception | None]:
        outcomes: list[WorkflowTaskClaim | Exception | None] = []
        for start in starts:
            if start.owner is None or start.lease is None:
                outcomes.append(await _outcome(self.start_workflow(start.new)))
            else:
                leased = self.start_workflow_leased(start.new, owner=start.owner, lease=start.lease)
                outcomes.append(await _outcome(leased))
        return outcomes

    # -- transactional activities (flows_core.store.TransactionalActivities) --

    async def run_transaction(
        self,
        body: Callable[[Any], Any],
        finish: Callable[[Any], TransactionWrite],
        *,
        sync: bool,
        pool: Any = None,
    ) -> list[Event]:
        """The stand-in transaction: ``body`` gets a ``MemoryTransaction`` whose writes
        are applied in the same step as the fenced write of ``finish``'s result (inside
        ``commit_workflow_task`` / ``complete_activity``, before their "after" fault
        point: a fault there is a crash after the commit), or dropped."""
        if pool is not None:
            await self.check_transaction_pool(pool)
        tx = MemoryTransaction(self.app_tables)
        try:
            result = await asyncio.to_thread(body, tx) if sync else await body(tx)
            write = finish(result)
            tx.check()
            self._committing = tx
            if isinstance(write, ActivityResult):
                await self.complete_activity(write)
                return []
            return await self.commit_workflow_task(write)
        finally:
            self._committing = None
            tx.end()

    async def transaction(self, work: Callable[[MemoryTransaction], Any]) -> Any:
        """Run ``work(tx)`` and commit its writes to the application tables on their
        own (the application's own transaction, outside any activity); returns what
        ``work`` returns. TransactionConflict if a row it touched changed meanwhile."""
        tx = MemoryTransaction(self.app_tables)
        try:
            result = work(tx)
            tx.check()
            tx.apply()
            return result
        finally:
            tx.end()

    async def check_transaction_pool(self, pool: Any) -> None:
        raise InvalidArgument(
            f"MemoryStore takes no transaction_pool (got {type(pool).__name__}): its "
            "transactional activities get a flows_memory.MemoryTransaction stand-in"
        )

    def _commit_transaction(self) -> None:
        """Apply the staged writes of the transactional activity whose result is being
        written (in the same step as that write)."""
        tx, self._committing = self._committing, None
        if tx is not None:
            tx.apply()

    async def retry_activity(self, retry: ActivityRetry) -> None:
        self._fault("retry_activity", "before")
        task, wf = self._leased(retry.lease)
        stored_error(retry.error, "activity error")
        task.token = task.owner = task.lease_expires = None
        task.attempt = retry.next_attempt
        task.visible_at = retry.visible_at
        task.last_error = retry.error
        self._touch(task)
        self._changed(wf, work=True)
        self._fault("retry_activity", "after")

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        task, wf = self._leased(lease)
        now = self._clock.now()
        if task.lease_expires is not None and task.lease_expires <= now:
            pass  # expired but not re-claimed: still ours, extend it
        task.lease_expires = now + extend
        self._touch(task)
        return HeartbeatReply(expires_at=task.lease_expires, cancel_requested=wf.cancel_requested)

    async def release(self, lease: Lease) -> None:
        task = self._tasks.get(lease.task_id)
        if task is None or task.token != lease.token:
            return
        task.token = task.owner = task.lease_expires = None
        if task.kind == "workflow":
            task.attempt = max(task.attempt - 1, 1)  # a released claim does not count
        self._touch(task)
        self.notify_work()

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        now = self._clock.now()
        self._promote(now)
        keys = list(self._timer_due) if shard_keys is None else list(shard_keys)
        due: list[_Task] = []
        taken: list[tuple[str, _Entry]] = []
        if limit > 0:
            for shard, entry in self._merge(self._timer_due, keys):
                if entry[3].gen != entry[2]:
                    continue  # stale
                taken.append((shard, entry))
                due.append(entry[3])
                if len(due) >= limit:
                    break
        elif any(self._clean(self._timer_due.get(k)) is not None for k in keys):
            self._fault("fire_due_timers", "before")  # some are due, none may fire
            self._fault("fire_due_timers", "after")
            return 0
        for shard, entry in taken:  # back until deleted below (a fault may come first)
            heapq.heappush(self._timer_due[shard], entry)
        if not due:
            return 0
        self._fault("fire_due_timers", "before")
        for task in due:
            wf = self._workflows[task.key]
            wf.inbox.append(TimerFired(seq=task.seq, at=now))
            wf.step_tasks.pop(task.seq, None)
            self._delete(task)
            self._ensure_workflow_task(wf)
            self._changed(wf, work=True)
        self._fault("fire_due_timers", "after")
        return len(due)

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        now = self._clock.now()
        self._promote(now)
        keys: Any = (
            set(self._pending) | set(self._timer_wait) if shard_keys is None else set(shard_keys)
        )
        best: datetime | None = None
        for k in keys:
            for heap in (self._clean(self._pending.get(k)), self._clean(self._timer_wait.get(k))):
                if heap is not None:
                    when = heap[0][0]
                    if when > now and (best is None or when < best):
                        best = when
        for k in self._timer_due if shard_keys is None else shard_keys:
            if self._clean(self._timer_due.get(k)) is not None:
                return now  # a timer is due already: fire it now, not at the next poll
        return best

    async def wait_for_work(self, timeout: float) -> None:
        if self._work_missed:
            self._work_missed = False
            return
        fut = asyncio.get_running_loop().create_future()
        self._work_waiters.append(fut)
        await self._wait(fut, timeout)

    async def register_worker(self, info: WorkerInfo) -> None:
        stored_text(info.worker_id, "worker id")
        stored_text(info.host, "worker host")
        self._workers[info.worker_id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    # -- operations (retention, stats) --

    async def prune(self, older_than: timedelta, limit: int) -> int:
        if limit <= 0:
            return 0
        self._fault("prune", "before")
        horizon = self._clock.now() - older_than
        old = sorted(
            (
                wf
                for wf in self._workflows.values()
                if wf.status in TERMINAL_STATUSES and wf.updated_at < horizon
            ),
            key=lambda wf: (wf.updated_at, wf.tenant_id, wf.workflow_id),
        )[:limit]
        for wf in old:
            self._drop_all(wf)
            key = (wf.tenant_id, wf.workflow_id)
            for task in [t for t in self._tasks.values() if t.key == key]:
                self._delete(task)
            del self._workflows[(wf.tenant_id, wf.workflow_id)]
        for wf in self._workflows.values():
            if wf.delivered:
                wf.delivered = {k: at for k, at in wf.delivered.items() if at >= horizon}
        if old:
            self.operations += 1
        self._fault("prune", "after")
        return len(old)

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        now = self._clock.now()
        shards = set(shard_keys) if shard_keys is not None else None
        depth: dict[str, int] = {}
        oldest: datetime | None = None
        in_flight = 0
        for t in self._tasks.values():
            if shards is not None and t.shard_key not in shards:
                continue
            leased = t.token is not None and t.lease_expires is not None and t.lease_expires > now
            if leased:
                in_flight += 1
            elif t.kind != "timer" and self._claimable(t, now):
                depth[t.shard_key] = depth.get(t.shard_key, 0) + 1
                if oldest is None or t.visible_at < oldest:
                    oldest = t.visible_at
        statuses: dict[str, int] = {}
        for wf in self._workflows.values():
            if shards is None or wf.shard_key in shards:
                statuses[wf.status.value] = statuses.get(wf.status.value, 0) + 1
        return StoreStats(
            queue_depth=depth,
            oldest_pending_age=None if oldest is None else max(now - oldest, timedelta(0)),
            in_flight=in_flight,
            dead_letters=statuses.get(WorkflowStatus.PARKED.value, 0),
            workflows=statuses,
        )

    async def count_workflows(self, tenant_id: str) -> dict[str, int]:
        """``tenant_id``'s workflows per status (``flows_core.store.WorkflowCounts``)."""
        stored_text(tenant_id, "tenant id")
        counts: dict[str, int] = {}
        for wf in self._workflows.values():
            if wf.tenant_id == tenant_id:
                counts[wf.status.value] = counts.get(wf.status.value, 0) + 1
        return counts

    # -- consistency scans (flows_core.store.FsckScan) --

    async def fsck_workflows(
        self, *, tenant_id: str | None, after: tuple[str, str, str] | None, limit: int
    ) -> list[FsckWorkflow]:
        keyed = sorted(
            ((wf.shard_key, wf.tenant_id, wf.workflow_id), wf)
            for wf in self._workflows.values()
            if tenant_id is None or wf.tenant_id == tenant_id
        )
        rows = [wf for key, wf in keyed if after is None or key > after][: max(0, limit)]
        counts: dict[tuple[tuple[str, str], str], int] = {}
        for task in self._tasks.values():
            counts[task.key, task.kind] = counts.get((task.key, task.kind), 0) + 1
        return [
            FsckWorkflow(
                record=self._record(wf),
                workflow_tasks=counts.get(((wf.tenant_id, wf.workflow_id), "workflow"), 0),
                activity_tasks=counts.get(((wf.tenant_id, wf.workflow_id), "activity"), 0),
                timer_tasks=counts.get(((wf.tenant_id, wf.workflow_id), "timer"), 0),
                inbox_rows=len(wf.inbox),
                history_rows=len(wf.history),
                history_last=len(wf.history),
            )
            for wf in rows
        ]

    async def fsck_orphans(self, *, tenant_id: str | None, limit: int) -> list[FsckOrphan]:
        # The inbox lives in the workflow here, so only tasks can be orphaned.
        groups: dict[tuple[str, str, str], int] = {}
        for task in self._tasks.values():
            if task.key not in self._workflows and tenant_id in (None, task.key[0]):
                group = (task.key[0], task.key[1], task.shard_key)
                groups[group] = groups.get(group, 0) + 1
        return [
            FsckOrphan(kind="task", tenant_id=t, workflow_id=w, shard_key=k, rows=n)
            for (t, w, k), n in sorted(groups.items())[: max(0, limit)]
        ]

    async def fsck_expired_leases(
        self, *, tenant_id: str | None, older_than: timedelta, limit: int
    ) -> list[FsckExpiredLease]:
        horizon = self._clock.now() - older_than
        expired = sorted(
            (
                (task.lease_expires, task)
                for task in self._tasks.values()
                if task.token is not None
                and task.lease_expires is not None
                and task.lease_expires < horizon
                and tenant_id in (None, task.key[0])
            ),
            key=lambda pair: (pair[0], pair[1].order),
        )
        return [
            FsckExpiredLease(
                tenant_id=task.key[0],
                workflow_id=task.key[1],
                shard_key=task.shard_key,
                task_id=task.task_id,
                kind=task.kind,
                seq=task.seq,
                owner=task.owner,
                expired_at=when,
            )
            for when, task in expired[: max(0, limit)]
        ]

    # -- schedules (flows_core.store.ScheduleStore) --

    async def put_schedule(
        self, schedule: ScheduleRecord, *, expected_revision: int | None
    ) -> bool:
        key = (stored_text(schedule.tenant_id, "tenant id"), schedule.schedule_id)
        stored_text(schedule.schedule_id, "schedule id")
        stored_text(schedule.workflow_name, "workflow name")
        stored_payload(schedule.input, "schedule input")
        self._fault("put_schedule", "before")
        now = self._clock.now()
        found = self._schedules.get(key)
        if expected_revision is None:
            if found is not None:
                return False
            record = msgspec.structs.replace(
                schedule,
                revision=1,
                created_at=now,
                updated_at=now,
                last_tick_at=None,
                last_workflow_id=None,
                buffered_tick_at=None,
            )
            self._schedules[key] = _Schedule(record)
        else:
            if found is None or found.record.revision != expected_revision:
                return False
            old = found.record
            found.record = msgspec.structs.replace(
                schedule,
                shard_key=old.shard_key,
                revision=expected_revision + 1,
                created_at=old.created_at,
                updated_at=now,
                last_tick_at=old.last_tick_at,
                last_workflow_id=old.last_workflow_id,
                buffered_tick_at=old.buffered_tick_at,
            )
        self.notify_work()
        self._fault("put_schedule", "after")
        return True

    async def get_schedule(self, tenant_id: str, schedule_id: str) -> ScheduleRecord:
        found = self._schedules.get((tenant_id, schedule_id))
        if found is None:
            stored_text(tenant_id, "tenant id")
            stored_text(schedule_id, "schedule id")
            raise ScheduleNotFound(schedule_id, tenant_id)
        return found.record

    async def list_schedules(
        self, tenant_id: str | None, *, after: tuple[str, str] | None, limit: int
    ) -> list[ScheduleRecord]:
        rows = sorted(
            (s.record for s in self._schedules.values()),
            key=lambda r: (r.schedule_id, r.tenant_id),
        )
        return [
            r
            for r in rows
            if (tenant_id is None or r.tenant_id == tenant_id)
            and (after is None or (r.schedule_id, r.tenant_id) > after)
        ][: max(0, limit)]

    async def delete_schedule(self, tenant_id: str, schedule_id: str) -> bool:
        self._fault("delete_schedule", "before")
        found = self._schedules.pop((tenant_id, schedule_id), None)
        self._fault("delete_schedule", "after")
        return found is not None

    def _schedule_claimable(self, s: _Schedule, now: datetime) -> bool:
        due = s.record.due_at
        return (
            (not s.record.paused or s.record.trigger_at is not None)
            and due is not None
            and due <= now
            and (s.lease_expires_at is None or s.lease_expires_at <= now)
        )

    async def claim_schedules(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[ScheduleClaim]:
        now = self._clock.now()
        keys = None if shard_keys is None else set(shard_keys)
        due = [
            s
            for s in self._schedules.values()
            if (keys is None or s.record.shard_key in keys) and self._schedule_claimable(s, now)
        ]
        if not due or limit <= 0:
            return []
        due.sort(key=lambda s: s.record.due_at or now)
        self._fault("claim_schedules", "before")
        claims = []
        token = str(uuid6.uuid7())
        for s in due[:limit]:
            s.lease_token, s.lease_expires_at = token, now + lease
            r = s.record
            claims.append(
                ScheduleClaim(
                    lease=ScheduleLease(
                        tenant_id=r.tenant_id,
                        schedule_id=r.schedule_id,
                        shard_key=r.shard_key,
                        token=token,
                        expires_at=now + lease,
                    ),
                    schedule=r,
                )
            )
        self._fault("claim_schedules", "after")
        return claims

    async def advance_schedule(self, advance: ScheduleAdvance) -> bool:
        lease = advance.lease
        found = self._schedules.get((lease.tenant_id, lease.schedule_id))
        if found is None or found.lease_token != lease.token:
            return False
        self._fault("advance_schedule", "before")
        changes: dict[str, Any] = {
            "last_tick_at": advance.last_tick_at,
            "last_workflow_id": advance.last_workflow_id,
            "buffered_tick_at": advance.buffered_tick_at,
            "updated_at": self._clock.now(),
        }
        if found.record.revision == advance.revision:
            changes.update(
                next_tick_at=advance.next_tick_at,
                due_at=advance.due_at,
                trigger_at=advance.trigger_at,
            )
        found.record = msgspec.structs.replace(found.record, **changes)
        found.lease_token = found.lease_expires_at = None
        self._fault("advance_schedule", "after")
        return True

    async def next_schedule_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        keys = None if shard_keys is None else set(shard_keys)
        best: datetime | None = None
        for s in self._schedules.values():
            r = s.record
            if (r.paused and r.trigger_at is None) or r.due_at is None:
                continue
            if keys is not None and r.shard_key not in keys:
                continue
            when = r.due_at
            if s.lease_expires_at is not None and s.lease_expires_at > when:
                when = s.lease_expires_at
            if best is None or when < best:
                best = when
        return best

    # -- earlier runs (flows_core.store.RunArchive) --

    async def list_runs(self, tenant_id: str, workflow_id: str) -> list[RunRecord]:
        return [record for record, _ in self._get(tenant_id, workflow_id).runs]

    async def get_run_history(
        self, tenant_id: str, workflow_id: str, run_number: int
    ) -> list[Event]:
        for record, history in self._get(tenant_id, workflow_id).runs:
            if record.run_number == run_number:
                return list(history)
        return []

    def row_counts(self) -> dict[str, int]:
        """Stored items per kind (test helper: retention keeps these bounded)."""
        return {
            "workflows": len(self._workflows),
            "history": sum(len(wf.history) for wf in self._workflows.values()),
            "inbox": sum(len(wf.inbox) for wf in self._workflows.values()),
            "tasks": len(self._tasks),
        }

    # -- test helpers (not part of the protocol) --

    def has_claimable_work(self) -> bool:
        """True if some task could be claimed (or timer fired) right now."""
        now = self._clock.now()
        self._promote(now)
        for heap in self._timer_due.values():
            if self._clean(heap) is not None:
                return True
        for queue in self._ready.values():
            top = queue.clean()
            if top is not None and self._claimable(top[3], now):
                return True
        if self._pending_start_due(now):
            return True
        return any(self._schedule_claimable(s, now) for s in self._schedules.values())

    def task_count(self) -> int:
        return len(self._tasks)
