"""The storage protocol every adapter implements (memory, PostgreSQL, Citus).

One ``Store`` holds, all keyed by (tenant_id, shard_key, workflow_id):

* the workflow row: name, version, status, output/error, history length, next step seq;
* the history: an append-only, gap-free list of events (position 1..n). Only two writes
  ever append to it: ``start_workflow`` (position 1) and the lease holder's
  ``commit_workflow_task``, plus the claim of a workflow task (below);
* the inbox: events from outside the workflow's own decisions (SignalReceived,
  CancelRequested, TimerFired, results of queued activities), in arrival order. Claiming
  a workflow task moves the inbox to the end of the history, in the same transaction,
  so the history is exactly the sequence of events the workflow code was shown, in the
  order it was shown them; replay applies them in that order and cannot diverge;
* tasks: at most one *workflow task* per workflow (coalesced: it means "replay me"),
  *activity tasks* (one per scheduled step, for the queue path), and *timer tasks*
  (one per pending timer step). A task is claimable when ``visible_at <= now`` and it
  has no live lease.

Every method below is one atomic transaction. Writes by a claimant are fenced by the
lease token it got from ``claim`` (and workflow commits also by the expected next step
seq): a claimant whose lease was taken over gets ``LeaseLost`` and nothing is written.
Adapters know no workflow semantics beyond what is written here; ``flows_core``
decides what to append and which tasks to create.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from ._clock import Clock
from ._errors import (
    ErrorInfo,
    InvalidArgument,
    PayloadError,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from .events import (
    ActivityCompleted,
    ActivityFailedEvent,
    CancelRequested,
    Event,
    SignalReceived,
    WorkflowCancelledEvent,
    WorkflowStarted,
    WorkflowTerminatedEvent,
    decode_event,
    encode_event,
)

__all__ = [
    "ActivityResult",
    "ActivityRetry",
    "ActivityTaskClaim",
    "ActivityTaskSpec",
    "CancelOutcome",
    "CachedHistory",
    "ClaimRequest",
    "DebounceStore",
    "EagerStart",
    "FsckExpiredLease",
    "FsckOrphan",
    "FsckScan",
    "FsckWorkflow",
    "FlowLimits",
    "RATE_GRACE",
    "LimitUsage",
    "SlotGrant",
    "SlotHolder",
    "ClaimedTask",
    "GroupCommit",
    "HeartbeatReply",
    "Lease",
    "ListQuery",
    "NewWorkflow",
    "Outbox",
    "OutboxMessage",
    "OutboxRecord",
    "PendingStart",
    "PendingStartClaim",
    "PendingStartLease",
    "Store",
    "StartRequest",
    "StoreStats",
    "TERMINAL_STATUSES",
    "TerminateOutcome",
    "TimerTaskSpec",
    "TransactionalActivities",
    "TransactionWrite",
    "WorkerInfo",
    "WorkflowRecord",
    "WorkflowStatus",
    "WorkflowCounts",
    "WorkflowTaskClaim",
    "WorkflowTaskCommit",
    "ContinueAsNew",
    "RunArchive",
    "RunRecord",
    "cancel_outcome",
    "continued_length",
    "eager_start_claim",
    "list_key",
    "parked_cancellation",
    "round_trip_event",
    "ScheduleAdvance",
    "ScheduleClaim",
    "ScheduleLease",
    "ScheduleRecord",
    "ScheduleStore",
    "signal_outcome",
    "stored_error",
    "stored_event",
    "stored_payload",
    "stored_text",
    "terminate_outcome",
    "terminated_error",
]


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    """Ended from outside by ``terminate_workflow``; its last event is
    WorkflowTerminatedEvent (the reason is in ``error``, type ``WorkflowTerminated``)."""
    PARKED = "parked"
    """Dead-lettered: the workflow task failed for good (a NonDeterminismError or
    IllegalAwaitError, or an unexpected worker error or crash repeated
    ``max_workflow_task_attempts`` times). ``error`` says why, ``error.attempts`` after
    how many claims of the task. History untouched; the workflow task stays but is not
    claimable until ``retry_workflow`` (after a code fix). Not terminal: signals and
    cancel requests still queue in its inbox."""


TERMINAL_STATUSES = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
        WorkflowStatus.TERMINATED,
    }
)


class CancelOutcome(StrEnum):
    REQUESTED = "requested"
    ALREADY_REQUESTED = "already_requested"
    ALREADY_FINISHED = "already_finished"
    CANCELLED = "cancelled"
    """The workflow was parked (dead-lettered): it was ended CANCELLED at once, in the
    same transaction. Its code did not run, so no compensation ran (the code is what
    failed); retry it first if the compensation must run."""


class TerminateOutcome(StrEnum):
    TERMINATED = "terminated"
    ALREADY_FINISHED = "already_finished"


class WorkflowRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The cached state row of one workflow (derived from its history)."""

    tenant_id: str
    workflow_id: str
    name: str
    version: int
    shard_key: str
    status: WorkflowStatus
    input: msgspec.Raw
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    created_at: datetime
    updated_at: datetime
    """When the row last changed: start, status, inbox, the end of a workflow task
    (steps committed under a kept lease need not move it)."""
    history_length: int
    next_seq: int
    cancel_requested: bool = False
    workflow_task_pending: bool = False
    """A workflow task exists and is not leased (the workflow waits for a worker)."""
    inbox_length: int = 0
    """Events received (signals, cancel, timers, results) not yet shown to the code."""
    run_number: int = 1
    """The current run: 1, plus one per ``continue_as_new`` (see ``ContinueAsNew``).
    ``history_length``, ``next_seq``, ``input`` and the history are those of this run."""
    status_value: msgspec.Raw | None = None
    """The status the workflow published last (``ctx.set_status``), as JSON; None if
    it never did. Kept across runs until a run publishes another."""


class NewWorkflow(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``start_workflow`` writes: row, first event, first workflow task."""

    tenant_id: str
    workflow_id: str
    name: str
    version: int
    shard_key: str
    input: msgspec.Raw
    started: Event
    """The WorkflowStarted event, position 1."""
    claim_ahead: timedelta = timedelta(0)
    """How far ahead in the claim order the first workflow task goes (a priority, see
    flows_core._limits): its ``visible_at`` is the start time minus this, set in the
    start's own transaction."""


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """Proof of a claim. ``token`` changes with every claim of the task."""

    task_id: str
    token: str
    tenant_id: str
    shard_key: str
    workflow_id: str
    expires_at: datetime


class CachedHistory(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow whose history up to ``history_length`` a worker holds (sticky cache):
    a claim of its workflow task returns only the events after it (``ClaimRequest.cached``).

    ``seed`` is the run marker: the ``seed`` of the WorkflowStarted event at position 1
    of the history the worker holds. A history that starts with another WorkflowStarted
    (a new run, a workflow started again under the same id) does not continue it."""

    tenant_id: str
    workflow_id: str
    shard_key: str
    history_length: int
    seed: int


def continued_length(cached: CachedHistory | None, history: Sequence[Event]) -> int:
    """How much of ``history`` (a whole history, after the claim's inbox move) the
    worker holding ``cached`` has: its ``history_length`` when ``history`` continues it
    (see ``ClaimRequest.cached``), else 0. The reference every adapter's claim agrees with."""
    if cached is None or not 1 <= cached.history_length <= len(history):
        return 0
    first = history[0]
    if not isinstance(first, WorkflowStarted) or first.seed != cached.seed:
        return 0
    return cached.history_length


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    workflow_types: Sequence[tuple[str, int]]
    """(name, version) pairs whose workflow tasks this worker can run."""
    activity_names: Sequence[str]
    limit: int
    lease: timedelta
    shard_keys: Sequence[str] | None = None
    """Only tasks under these shard keys; None means any (adapters may require it)."""
    fresh_only: bool = False
    """Skip workflow tasks a previous claimant did not finish (their next claim would be
    attempt 2 or more): a busy worker leaves suspected poison tasks to idle ones, so a
    poison task that kills its process takes no innocent task down with it."""
    cached: Sequence[CachedHistory] = ()
    """Histories this worker holds (its sticky cache). A claimed workflow task whose
    workflow matches an entry (same tenant and id; its history, after the inbox move,
    has at least ``history_length`` >= 1 events and starts with a WorkflowStarted of
    that ``seed``) comes back with only the events after ``history_length`` and
    ``history_from`` = ``history_length``; any other with its whole history. A history
    never changes below its length within a run (append-only), so those events continue
    exactly what the worker holds."""


class WorkflowTaskClaim(msgspec.Struct, frozen=True, kw_only=True):
    lease: Lease
    workflow: WorkflowRecord
    history: list[Event]
    """The events at positions ``history_from`` + 1 .. ``workflow.history_length``."""
    attempt: int = 1
    """Claims of this workflow task since its last successful commit, this one included
    (dead-letter accounting: a task whose claimant keeps crashing counts up). A commit
    resets the count; ``release`` gives the claim back uncounted."""
    history_from: int = 0
    """0: ``history`` is the whole history. Otherwise the length of the history of a
    ``ClaimRequest.cached`` entry the claim continues: ``history`` holds only the events
    after it."""


class ActivityTaskClaim(msgspec.Struct, frozen=True, kw_only=True):
    lease: Lease
    workflow_name: str
    seq: int
    activity_name: str
    input: msgspec.Raw
    attempt: int
    """The attempt number about to run (1-based): the task's count as ``retry_activity``
    last set it, plus one for every earlier claim whose lease ran out with nothing
    recorded (its claimant crashed or lost the lease; that attempt is counted). A
    ``release`` gives the claim back uncounted. It may exceed the activity's retry
    policy: the worker then fails the step (ActivityTaskCrashed) without running it."""
    cancel_requested: bool = False
    scheduled_at: datetime | None = None
    """When the workflow first scheduled the step (its ActivityScheduled ``at``; the
    worker's schedule-to-close deadline counts from it). None if unknown."""


ClaimedTask = WorkflowTaskClaim | ActivityTaskClaim


class ActivityTaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An activity step to run through the queue."""

    seq: int
    name: str
    input: msgspec.Raw
    attempt: int = 1
    visible_at: datetime | None = None
    """None means at once."""
    last_error: ErrorInfo | None = None
    scheduled_at: datetime | None = None
    """When the step was first scheduled; stored with the task, kept across retries and
    handed back in its claims (``ActivityTaskClaim.scheduled_at``)."""


class TimerTaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    fire_at: datetime


class OutboxMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message to another workflow, written into the sender's outbox (on the sender's
    shard key) in the sender's own commit; ``body`` is flows_core's (the store keeps it
    as JSON and knows nothing of it). ``delay``: ``claim_outbox`` leaves it alone this
    long (the committing worker delivers it itself first)."""

    message_id: str
    """A UUID, unique per message."""
    body: msgspec.Raw
    delay: timedelta = timedelta(0)


class OutboxRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored outbox message and its sender (``shard_key`` is the sender's)."""

    tenant_id: str
    workflow_id: str
    shard_key: str
    message_id: str
    body: msgspec.Raw


class WorkflowTaskCommit(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one workflow task, applied atomically.

    Fenced by ``lease``, by ``expected_next_seq`` == the row's next_seq and by
    ``claimed_history_length`` == the history's length (LeaseLost otherwise, nothing
    written). Appends ``events``, sets next_seq, status, output and error, inserts the
    new tasks, deletes the activity/timer tasks of ``drop_seqs``. The workflow task is
    deleted, unless the inbox is not empty (something arrived while it ran), in which
    case it stays pending, unleased, so the workflow runs again. A terminal status
    deletes every task of the workflow; inbox events that arrived too late stay there.
    """

    lease: Lease
    claimed_history_length: int
    expected_next_seq: int
    next_seq: int
    events: list[Event]
    status: WorkflowStatus = WorkflowStatus.RUNNING
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    activity_tasks: list[ActivityTaskSpec] = []
    timers: list[TimerTaskSpec] = []
    drop_seqs: list[int] = []
    keep_lease: timedelta | None = None
    """Keep the workflow task leased for this long after the commit (the worker goes on
    running inline steps) and move the inbox into the history, returning its events.
    Only with a RUNNING status. A store may leave a lease that still has more than half
    of ``keep_lease`` to run as it is (PostgreSQL does: the row update is then
    heap-only); the claim's attempt count is reset either way. Such a commit need not
    move the row's ``updated_at`` either."""
    outbox: list[OutboxMessage] = []
    """Messages to other workflows, written in the same transaction into the outbox
    under the lease's shard key (``Outbox``); only if the commit is written."""
    status_value: msgspec.Raw | None = None
    """A status the workflow published (``ctx.set_status``) since it was last stored:
    written to the row's ``status_value`` in the same transaction (None: unchanged)."""
    continue_as_new: ContinueAsNew | None = None
    """End this run and start the next one (see ``ContinueAsNew``), in the same
    transaction, after the rest of the commit. Only with a RUNNING status and no
    ``keep_lease``; ``events`` end with the WorkflowContinuedAsNew event."""


class ActivityResult(msgspec.Struct, frozen=True, kw_only=True):
    """Final outcome of a queued activity: to the inbox, task deleted, workflow task
    ensured."""

    lease: Lease
    event: ActivityCompleted | ActivityFailedEvent


class ActivityRetry(msgspec.Struct, frozen=True, kw_only=True):
    """A failed attempt to retry: the task is released until ``visible_at``."""

    lease: Lease
    next_attempt: int
    visible_at: datetime
    error: ErrorInfo


class HeartbeatReply(msgspec.Struct, frozen=True, kw_only=True):
    expires_at: datetime
    cancel_requested: bool


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    workflow_types: list[tuple[str, int]]
    activity_names: list[str]
    heartbeat_at: datetime
    host: str = ""
    pid: int = 0


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A listing of workflow rows, newest first: ordered by (created_at DESC,
    workflow_id DESC), ids compared by code point (PostgreSQL: ``COLLATE "C"``), so
    every adapter pages in the same order. Filters combine (AND).

    Paging: ``after`` is a keyset cursor (the (created_at, workflow_id) of the last row
    of the previous page): rows strictly after it in the listing order. It stays exact
    while workflows start or end meanwhile, and a page costs the same however deep it
    is (an index scan from the cursor). ``offset`` (applied after ``after``) skips rows.
    """

    tenant_id: str | None
    """None lists every tenant (operators only; the Engine always sets it)."""
    status: WorkflowStatus | None = None
    name: str | None = None
    limit: int = 100
    offset: int = 0
    after: tuple[datetime, str] | None = None
    """Keyset cursor: only rows with (created_at, workflow_id) < this pair."""
    id_prefix: str | None = None
    """Only workflow ids starting with this text (case-sensitive)."""
    created_from: datetime | None = None
    """Only rows created at or after this time (inclusive)."""
    created_to: datetime | None = None
    """Only rows created before this time (exclusive)."""

    def matches(self, record: WorkflowRecord) -> bool:
        """Whether ``record`` is one this query lists (its filters and cursor, not its
        limit or offset): the reference every adapter's listing agrees with."""
        return (
            (self.tenant_id is None or record.tenant_id == self.tenant_id)
            and (self.status is None or record.status == self.status)
            and (self.name is None or record.name == self.name)
            and (self.id_prefix is None or record.workflow_id.startswith(self.id_prefix))
            and (self.created_from is None or record.created_at >= self.created_from)
            and (self.created_to is None or record.created_at < self.created_to)
            and (self.after is None or list_key(record) < self.after)
        )


def list_key(record: WorkflowRecord) -> tuple[datetime, str]:
    """A row's place in a listing (``ListQuery``): rows come in descending order of it,
    and it is the ``after`` cursor that continues past the row."""
    return (record.created_at, record.workflow_id)


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Store.stats`` reports (operations: queue depth, backlog age, dead letters)."""

    queue_depth: dict[str, int]
    """Claimable tasks (workflow and activity; visible now, not leased) per shard key."""
    oldest_pending_age: timedelta | None
    """How long the oldest claimable task has been waiting (None if there is none)."""
    in_flight: int
    """Tasks currently leased by a worker."""
    dead_letters: int
    """Workflows parked (dead-lettered) waiting for a code fix and a retry."""
    workflows: dict[str, int]
    """Workflow rows per status."""


@runtime_checkable
class Store(Protocol):
    """Storage protocol. See the module docstring for the data model and guarantees.

    Optional: a store whose placement of workflows is not free has an attribute
    ``sharder`` (a ``Sharder`` with ``key_for``); ``Engine`` then names the shard keys of
    new workflows with it (Citus: the key follows from tenant and workflow id, so a
    lookup by id is a single-shard query), and ``start_workflow`` refuses other keys.
    Another optional capability is ``EagerStart`` below.
    """

    @property
    def clock(self) -> Clock:
        """The time source workers and the engine use with this store."""
        ...

    # -- client operations (``tx`` is an adapter-specific open transaction, or None) --

    async def start_workflow(self, new: NewWorkflow, *, tx: Any = None) -> None:
        """Insert row + WorkflowStarted + workflow task. WorkflowAlreadyExists if taken."""
        ...

    async def signal_workflow(
        self, tenant_id: str, workflow_id: str, event: SignalReceived, *, tx: Any = None
    ) -> None:
        """Put the signal in the inbox and ensure a workflow task.

        WorkflowNotFound, or WorkflowNotRunning if terminal.
        """
        ...

    async def cancel_workflow(
        self, tenant_id: str, workflow_id: str, event: CancelRequested, *, tx: Any = None
    ) -> CancelOutcome:
        """Set cancel_requested, put CancelRequested in the inbox once, ensure a workflow
        task; no-op when finished (ALREADY_FINISHED).

        A PARKED workflow cannot run its code, so it ends at once instead: append
        CancelRequested then WorkflowCancelledEvent (error type ``Cancelled``, message
        the reason), status CANCELLED, drop its tasks and inbox, wake its waiters; CANCELLED.
        """
        ...

    async def terminate_workflow(
        self,
        tenant_id: str,
        workflow_id: str,
        event: WorkflowTerminatedEvent,
        *,
        tx: Any = None,
    ) -> TerminateOutcome:
        """End a RUNNING or PARKED workflow at once, in one transaction: append ``event``
        to its history (position history_length + 1, so any leased commit is fenced out),
        status TERMINATED with error ``ErrorInfo(type="WorkflowTerminated",
        message=event.reason)``, delete all its tasks (workflow, activity, timer) and
        inbox rows, wake its waiters. ALREADY_FINISHED when it is terminal already (nothing
        written); WorkflowNotFound if unknown."""
        ...

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, *, tx: Any = None
    ) -> WorkflowRecord:
        """The workflow row, or WorkflowNotFound."""
        ...

    async def get_history(self, tenant_id: str, workflow_id: str, *, after: int = 0) -> list[Event]:
        """Events at positions after ``after``, in order. WorkflowNotFound if no workflow."""
        ...

    async def list_workflows(self, query: ListQuery) -> list[WorkflowRecord]:
        """Up to ``query.limit`` workflows matching the query (``ListQuery.matches``),
        newest first (descending ``list_key``), after skipping ``query.offset``."""
        ...

    async def wait_for_workflow(self, tenant_id: str, workflow_id: str, timeout: float) -> None:
        """Return when the workflow may have changed, or after ``timeout`` seconds."""
        ...

    # -- worker operations --

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        """Lease up to ``limit`` visible tasks, oldest first, skipping locked ones.

        A claimed workflow task first moves its workflow's inbox into the history; the
        claim returns the whole history (or, for a workflow of ``request.cached``, the
        events after the cached length) and the row as of after that move.

        Attempts (one failure policy: every claim that does not end in the task's own
        outcome counts): every claim of a workflow task counts (see
        ``WorkflowTaskClaim.attempt``; a commit resets it). An activity task's claim
        counts on from its last one when that claim's lease ran out, i.e. the task was
        claimed before and neither completed, retried nor released since: it gets
        attempt + 1. A task given back by ``release`` keeps its count.
        """
        ...

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        """Apply a workflow task's outcome (see WorkflowTaskCommit). LeaseLost if fenced.

        Returns the inbox events moved into the history after ``events`` when
        ``keep_lease`` is set (the claimant applies them and goes on); else [].
        """
        ...

    async def park_workflow(self, lease: Lease, error: ErrorInfo) -> None:
        """Dead-letter the workflow: status PARKED with ``error`` (whose ``attempts`` the
        caller sets); the workflow task stays, unleased, but is not claimable."""
        ...

    # -- dead letters (a PARKED workflow is a dead letter) --

    async def fail_workflow_task(
        self, lease: Lease, error: ErrorInfo, visible_at: datetime
    ) -> None:
        """A workflow task attempt failed with an unexpected error (not the workflow's
        own): release the task until ``visible_at``, keeping its attempt count (the next
        claim counts on from it). LeaseLost if fenced."""
        ...

    async def retry_workflow(self, tenant_id: str, workflow_id: str) -> bool:
        """Put a PARKED workflow back to RUNNING: error cleared, its workflow task (made
        if missing) claimable now with the attempt count reset; history and inbox
        untouched. False (nothing written) if the workflow is not PARKED;
        WorkflowNotFound if there is no such workflow."""
        ...

    async def complete_activity(self, result: ActivityResult) -> None:
        """Put the activity's final event in the inbox, delete its task, ensure a
        workflow task."""
        ...

    async def retry_activity(self, retry: ActivityRetry) -> None:
        """Release a failed attempt's task until ``visible_at``, its attempt count set to
        ``next_attempt`` (the number its next claim gets, lease expiry aside).
        LeaseLost if fenced."""
        ...

    async def heartbeat(self, lease: Lease, extend: timedelta) -> HeartbeatReply:
        """Extend a lease to now + ``extend``. LeaseLost if the task is gone or re-leased."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give a task back at once, unleased and visible now. Silent if already lost.

        The claim is not counted as an attempt: a workflow task's count goes back by
        one, an activity task's stays as it was (its next claim gets the same attempt
        number). For claims given back unstarted (a claim that waited too long for a
        slot, a suspected poison task left to an idle worker, an activity this worker
        does not serve); work cut at shutdown is a counted attempt (``retry_activity``,
        ``fail_workflow_task``)."""
        ...

    async def fire_due_timers(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        """For timers due now: TimerFired into the inbox, delete the timer, ensure a
        workflow task. Returns how many fired."""
        ...

    async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        """Earliest ``visible_at`` of tasks not yet visible (timers, retries), if any."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new tasks may be claimable, or after ``timeout`` seconds."""
        ...

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or refresh a worker's registration (what it serves, last heartbeat)."""
        ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def list_workers(self) -> list[WorkerInfo]: ...

    # -- operations (retention, stats) --

    async def prune(self, older_than: timedelta, limit: int) -> int:
        """Delete up to ``limit`` finished workflows (completed, failed, cancelled) whose
        ``updated_at`` is older than ``older_than`` (store clock): row, history, inbox
        and tasks, in one transaction. Oldest first; returns how many were deleted (less
        than ``limit`` means none is left). Running and parked workflows are never
        deleted."""
        ...

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        """Queue depth per shard, oldest pending task age, in-flight tasks, dead letters
        and workflows per status; only rows under ``shard_keys`` when given."""
        ...


@runtime_checkable
class EagerStart(Protocol):
    """An OPTIONAL store capability: start a workflow with its first workflow task
    already leased (eager workflow start).

    When the process that starts a workflow also runs a Worker serving that workflow type
    with free capacity, the Engine starts the workflow through this method and hands the
    returned claim to that worker in-process: no claim transaction, no work notification.
    The Engine and Worker look for it with ``getattr(store, "start_workflow_leased",
    None)`` and use ``start_workflow`` when it is missing (or None), so a store without
    it (Citus, for one) works unchanged.
    """

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        """``start_workflow`` (one transaction, WorkflowAlreadyExists if taken, nothing
        written then) whose workflow task is inserted leased to ``owner`` until now +
        ``lease``, exactly as if ``claim`` had just leased it: the returned claim has
        attempt 1, the row as written and the history ``[new.started]``. A later claim
        of the task after the lease expires counts as attempt 2 (the claimant crashed).
        No work notification is needed (nothing is claimable)."""
        ...


@runtime_checkable
class Outbox(Protocol):
    """A store capability every adapter has (memory, PostgreSQL, Citus): the per-shard
    outbox that carries messages between workflows (child starts, signals and cancels
    to children, completion notices to parents), and once-only inbox delivery.

    A sender writes its messages in its own commit (``WorkflowTaskCommit.outbox``); a
    worker delivers each one with ordinary single-workflow writes on the target, each
    idempotent, then deletes it. A crash between the two repeats the delivery, which
    changes nothing. Nothing here spans two workflows' rows in one transaction."""

    async def claim_outbox(
        self, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> list[OutboxRecord]:
        """Up to ``limit`` messages due (their ``delay`` passed, no live claim) under
        ``shard_keys`` (None: any), oldest first, each hidden from other claims for
        ``lease``, skipping rows another transaction holds."""
        ...

    async def delete_outbox(self, records: Sequence[OutboxRecord]) -> None:
        """Delete delivered messages (those already gone are ignored)."""
        ...

    async def deliver_once(
        self, tenant_id: str, workflow_id: str, event: Event, key: str, *, tx: Any = None
    ) -> bool:
        """Put ``event`` (a SignalReceived or ChildWorkflowEnded) in the inbox and
        ensure a workflow task, in one transaction, unless ``key`` was delivered to this
        workflow before: then nothing is written and False is returned. The keys are
        kept with the workflow and deleted with it (``prune``). WorkflowNotFound, or
        WorkflowNotRunning if terminal and the key is new."""
        ...


@runtime_checkable
class WorkflowCounts(Protocol):
    """An OPTIONAL store capability: one tenant's workflow counts per status (a
    dashboard scoped to one tenant shows them; ``Store.stats`` counts every tenant).
    Memory, PostgreSQL and Citus have it; look for it with ``getattr(store,
    "count_workflows", None)``."""

    async def count_workflows(self, tenant_id: str) -> dict[str, int]:
        """``tenant_id``'s workflow rows per status value (statuses with none left out).
        Reads an index of the tenant's rows: its cost grows with the tenant's rows,
        not with the table."""
        ...


class FsckWorkflow(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow row as ``FsckScan.fsck_workflows`` reads it: the row and counts of the
    rows stored under it."""

    record: WorkflowRecord
    workflow_tasks: int
    activity_tasks: int
    timer_tasks: int
    inbox_rows: int
    history_rows: int
    history_last: int
    """The highest history position (0 when there is none)."""


class FsckOrphan(msgspec.Struct, frozen=True, kw_only=True):
    """Inbox or task rows (``kind`` "inbox" or "task") of a workflow row that does not
    exist."""

    kind: str
    tenant_id: str
    workflow_id: str
    shard_key: str
    rows: int


class FsckExpiredLease(msgspec.Struct, frozen=True, kw_only=True):
    """A task still carrying a lease that expired at ``expired_at``."""

    tenant_id: str
    workflow_id: str
    shard_key: str
    task_id: str
    kind: str
    seq: int
    owner: str | None
    expired_at: datetime


@runtime_checkable
class FsckScan(Protocol):
    """An OPTIONAL store capability: the read-only scans ``flows fsck`` checks a store
    with (``flows_core.fsck``). Raw rows only; what is damage is decided in flows_core."""

    async def fsck_workflows(
        self, *, tenant_id: str | None, after: tuple[str, str, str] | None, limit: int
    ) -> list[FsckWorkflow]:
        """Up to ``limit`` workflow rows (of ``tenant_id``, or every tenant) ordered by
        (shard_key, tenant_id, workflow_id), after the key ``after`` when given."""
        ...

    async def fsck_orphans(self, *, tenant_id: str | None, limit: int) -> list[FsckOrphan]:
        """Up to ``limit`` groups of inbox or task rows whose workflow row is missing."""
        ...

    async def fsck_expired_leases(
        self, *, tenant_id: str | None, older_than: timedelta, limit: int
    ) -> list[FsckExpiredLease]:
        """Up to ``limit`` tasks whose lease expired more than ``older_than`` ago (store
        clock) and that nobody claimed or released since, oldest expiry first."""
        ...


class ScheduleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule row (``ScheduleStore``), keyed by (tenant_id, schedule_id) and kept
    under ``shard_key`` (chosen like a workflow's: on Citus it follows from the tenant and
    the schedule id). ``spec`` is flows_core's JSON, opaque to stores; of the times, a
    store reads only ``due_at`` (when the schedule wants a scheduler's attention)."""

    tenant_id: str
    schedule_id: str
    shard_key: str
    workflow_name: str
    workflow_version: int
    input: msgspec.Raw
    spec: msgspec.Raw
    paused: bool = False
    next_tick_at: datetime | None = None
    """The next nominal tick (None: the spec has no more)."""
    due_at: datetime | None = None
    """When a scheduler should claim the schedule next (None: never)."""
    trigger_at: datetime | None = None
    """A manual trigger waiting to fire (its time names the workflow)."""
    last_tick_at: datetime | None = None
    last_workflow_id: str | None = None
    buffered_tick_at: datetime | None = None
    revision: int = 0
    """Bumped by every ``put_schedule``; written by the store."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ScheduleLease(msgspec.Struct, frozen=True, kw_only=True):
    """A scheduler's claim on one schedule row until ``expires_at``."""

    tenant_id: str
    schedule_id: str
    shard_key: str
    token: str
    expires_at: datetime


class ScheduleClaim(msgspec.Struct, frozen=True, kw_only=True):
    lease: ScheduleLease
    schedule: ScheduleRecord


class ScheduleAdvance(msgspec.Struct, frozen=True, kw_only=True):
    """What a scheduler writes after firing a claimed schedule's due ticks (fenced by
    its lease). The scheduler's own fields (last tick, last workflow, buffered tick)
    are always written; the plan (next tick, due time, trigger) only if the row's
    revision is still ``revision`` (a client's ``put_schedule`` meanwhile wins)."""

    lease: ScheduleLease
    revision: int
    next_tick_at: datetime | None
    due_at: datetime | None
    trigger_at: datetime | None
    last_tick_at: datetime | None
    last_workflow_id: str | None
    buffered_tick_at: datetime | None


@runtime_checkable
class ScheduleStore(Protocol):
    """An OPTIONAL store capability: durable schedules (``Engine.schedule``). Memory,
    PostgreSQL and Citus have it. Every method is one transaction on one shard key (the
    row's); ``claim_schedules`` and ``next_schedule_due`` look at ``shard_keys`` (None:
    all). Firing a tick is not done here: flows_core starts the tick's workflow (its
    own transaction, an id derived from the tick) and then ``advance_schedule``."""

    async def put_schedule(
        self, schedule: ScheduleRecord, *, expected_revision: int | None
    ) -> bool:
        """Insert (``expected_revision`` None: only if no row has this tenant and id) or
        replace the client's fields of the row whose revision is ``expected_revision``:
        workflow, input, spec, paused, next tick, due time and trigger. The scheduler's
        fields (last tick, last workflow, buffered tick) and any lease are kept.
        The stored revision becomes 1 (insert) or ``expected_revision + 1``. False, and
        nothing written, if the row exists (insert) or is missing or changed (update)."""
        ...

    async def get_schedule(self, tenant_id: str, schedule_id: str) -> ScheduleRecord:
        """The row; ScheduleNotFound if there is none."""
        ...

    async def list_schedules(
        self, tenant_id: str | None, *, after: tuple[str, str] | None, limit: int
    ) -> list[ScheduleRecord]:
        """Up to ``limit`` rows of ``tenant_id`` (None: every tenant), ordered by
        (schedule_id, tenant_id) compared by code point, after the pair ``after``."""
        ...

    async def delete_schedule(self, tenant_id: str, schedule_id: str) -> bool:
        """Delete the row; False if there was none."""
        ...

    async def claim_schedules(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[ScheduleClaim]:
        """Lease up to ``limit`` rows that are not paused or hold a trigger, whose
        ``due_at`` has come and whose lease (if any) ran out; earliest ``due_at``
        first. Rows another claimant has locked are skipped, not waited for."""
        ...

    async def advance_schedule(self, advance: ScheduleAdvance) -> bool:
        """Write ``advance`` (see ScheduleAdvance) and clear the lease, if the row still
        holds ``advance.lease``'s token; False (nothing written) otherwise."""
        ...

    async def next_schedule_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        """The earliest time a row of ``shard_keys`` becomes claimable (its ``due_at``,
        or its lease expiry if later), among rows that are not paused or hold a trigger;
        None if none."""
        ...


class PendingStart(msgspec.Struct, frozen=True, kw_only=True):
    """A debounced start (``DebounceStore``) waiting for its window to close: one open
    row per (tenant_id, workflow_name, debounce_key), kept under ``shard_key`` (chosen
    like a workflow's from the debounce key: on Citus it follows from the tenant and the
    key). When it fires, the workflow ``workflow_id`` starts with ``input``."""

    tenant_id: str
    workflow_name: str
    debounce_key: str
    shard_key: str
    workflow_id: str
    """The workflow the window starts (flows_core derives it from the key and the time
    the window opened); fixed when the window opens."""
    workflow_version: int
    input: msgspec.Raw
    fires_at: datetime | None = None
    """When the window closes and the start fires (store clock); written by the store."""
    starts: int = 1
    """How many starts the window took (the last one's input is kept)."""


class PendingStartLease(msgspec.Struct, frozen=True, kw_only=True):
    """A firer's claim on one closed window until ``expires_at``."""

    tenant_id: str
    workflow_name: str
    debounce_key: str
    shard_key: str
    workflow_id: str
    token: str
    expires_at: datetime


class PendingStartClaim(msgspec.Struct, frozen=True, kw_only=True):
    lease: PendingStartLease
    pending: PendingStart


@runtime_checkable
class DebounceStore(Protocol):
    """An OPTIONAL store capability: debounced starts (``Engine.start(debounce=...)``).
    Memory, PostgreSQL and Citus have it. Every method is one transaction on one shard
    key (the row's); ``claim_pending_starts`` and ``next_pending_start_due`` look at
    ``shard_keys`` (None: all). Firing is not done here: flows_core starts the window's
    workflow (its own transaction; its id is the row's, so a second firing after a crash
    finds it started) and then ``finish_pending_start``.

    A window is OPEN until it is claimed or its time comes; a claimed (closed) window
    never changes again, so what fires is what the last start within the window wrote.
    """

    async def debounce_start(
        self, pending: PendingStart, *, window: timedelta, tx: Any = None
    ) -> PendingStart:
        """One start with ``pending``'s key (in the caller's transaction ``tx`` where the
        store supports one). If the key has an open window whose
        ``fires_at`` is still ahead (store clock), replace its input and version and
        count the start (its workflow id and ``fires_at`` are kept: the window is fixed
        from its first start). Otherwise close any window of the key whose time has come
        (it fires as it is) and open a new one: ``pending.workflow_id``, fires at now +
        ``window``, one start. Returns the open row as stored."""
        ...

    async def claim_pending_starts(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[PendingStartClaim]:
        """Close and lease up to ``limit`` rows whose ``fires_at`` has come and whose
        lease (if any) ran out, earliest first; rows another claimant has locked are
        skipped, not waited for."""
        ...

    async def finish_pending_start(self, lease: PendingStartLease) -> bool:
        """Delete the row if it still holds ``lease``'s token; False otherwise."""
        ...

    async def next_pending_start_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        """The earliest time a row of ``shard_keys`` becomes claimable (``fires_at``, or
        its lease expiry if later); None if none."""
        ...

    async def get_pending_start(
        self, tenant_id: str, workflow_name: str, debounce_key: str, shard_key: str
    ) -> PendingStart | None:
        """The key's open window, or else its closed one not yet finished; None."""
        ...


class StartRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One start of ``GroupCommit.start_workflows``: ``start_workflow(new)``, or, with
    ``owner`` and ``lease``, ``EagerStart.start_workflow_leased(new, owner=, lease=)``."""

    new: NewWorkflow
    owner: str | None = None
    lease: timedelta | None = None


@runtime_checkable
class GroupCommit(Protocol):
    """An OPTIONAL store capability: the writes of several workflows in one call (group
    commit, DESIGN.md idea 7), for the commits that are ready at the same moment.

    Each item is applied exactly as its single method applies it: the same fence, the
    same effects, the same outcome. A store may put several items in one transaction
    (PostgreSQL: all of them; Citus: those under one shard key, never a transaction
    across shards). An item that fails (its fence refused: LeaseLost; a value the store
    cannot keep: PayloadError, InvalidArgument; a taken id: WorkflowAlreadyExists; the
    store unreachable: StoreUnavailable) writes nothing of itself and does not keep the
    others from committing: its exception is returned in its place, in input order.
    ``flows_core`` uses the capability through ``flows_core._group_commit``, only for
    calls made while another of the same kind is in flight; a store without it works
    unchanged.
    """

    async def commit_workflow_tasks(
        self, commits: Sequence[WorkflowTaskCommit]
    ) -> list[list[Event] | Exception]:
        """``commit_workflow_task`` of each commit: its moved events, or its error."""
        ...

    async def complete_activities(
        self, results: Sequence[ActivityResult]
    ) -> list[Exception | None]:
        """``complete_activity`` of each result: None, or its error."""
        ...

    async def start_workflows(
        self, starts: Sequence[StartRequest]
    ) -> list[WorkflowTaskClaim | Exception | None]:
        """Each start: None (or, leased, its claim), or its error (WorkflowAlreadyExists
        for an id taken before or earlier in the same call)."""
        ...


TransactionWrite = WorkflowTaskCommit | ActivityResult
"""What a transactional activity's transaction records: the workflow task's commit
(the step ran inline, fenced by the workflow task's lease; ``keep_lease`` set) or the
queued activity task's result (fenced by the activity task's lease)."""


@runtime_checkable
class TransactionalActivities(Protocol):
    """An OPTIONAL store capability: run a transactional activity's function and record
    its result in ONE transaction of the store's database (exactly-once effects).

    Memory (a stand-in: ``flows_memory.MemoryTransaction``), PostgreSQL and Citus have
    it. A Worker serving a transactional activity refuses a store without it.
    """

    async def run_transaction(
        self,
        body: Callable[[Any], Any],
        finish: Callable[[Any], TransactionWrite],
        *,
        sync: bool,
        pool: Any = None,
    ) -> list[Event]:
        """Open a transaction (on a connection of ``pool``, an application pool of the
        same database, or of the store), call ``body(conn)`` (``sync``: in a thread, on a
        sync connection; else awaited), pass its return value to ``finish`` and write
        what it returns on the same connection, fenced by that write's lease, then commit
        once. Returns what the write returns (``commit_workflow_task``: the inbox events
        moved into the history; ``complete_activity``: []).

        Nothing is committed when anything fails, and the exception propagates after the
        rollback: ``body``'s or ``finish``'s own exception; LeaseLost when the fence
        refuses the write (another claimant took over); TransactionConflict (its driver
        error as ``__cause__``) when the database aborted the transaction with a
        serialization failure or a deadlock; a cancellation of the call (a timeout)
        cancels the running query and rolls back. A cancellation that arrives once the
        write has started waits for the commit to end (its outcome is kept either way:
        the fences decide)."""
        ...

    async def check_transaction_pool(self, pool: Any) -> None:
        """Refuse (InvalidArgument, naming both) an application pool that is not of a
        kind this store takes or that points at another database than the store's."""
        ...


class SlotHolder(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a concurrency slot (``FlowLimits``). ``kind`` "task": the lease
    (``task_id``, ``token``) of a task, alive while the task holds that lease; "workflow":
    the workflow (``tenant_id``, ``workflow_id``), alive until it ends. ``task_id`` is
    also the task woken when a slot frees, and ``expires_at`` the holder's lease expiry.
    ``part`` tells apart several slots held under one lease (the activities a workflow
    task runs inline: one per step)."""

    kind: str
    tenant_id: str
    shard_key: str
    workflow_id: str
    task_id: str
    token: str
    expires_at: datetime
    part: str = ""


class SlotGrant(msgspec.Struct, frozen=True, kw_only=True):
    acquired: bool
    retry_at: datetime | None = None
    """When not acquired: the earliest lease expiry of a holder (None: unknown)."""


class LimitUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One limit as the store sees it (``flows stats``)."""

    bucket: str
    """``a:<activity>`` or ``w:<workflow>``."""
    limit_key: str
    """``c`` / ``c:<key>`` (concurrency), ``r`` / ``r:<key>`` (rate)."""
    held: int = 0
    """Slots held now (by a holder alive, or one not yet found dead)."""
    slots: int = 0
    """Slot rows: the largest capacity a worker asked for (a lowered limit keeps them)."""
    waiting: int = 0
    """Tasks waiting for a slot, or holding a reserved rate token."""
    next_token_at: datetime | None = None
    """Rate limits: when the next token is free."""
    every: timedelta | None = None
    """Rate limits: one token every this long (as the last taker asked)."""


RATE_GRACE: Final = timedelta(seconds=0.25)
"""A task may use the rate token reserved for it up to max(interval, RATE_GRACE) after
the token's time (``FlowLimits.take_rate_token``): claims come a little late, and a
reservation dropped for lateness sends its task to the back of the line."""


@runtime_checkable
class FlowLimits(Protocol):
    """An OPTIONAL store capability: concurrency slots and rate tokens shared by every
    worker (``flows_core._limits``). Each method is one short transaction of its own,
    apart from any task's (on Citus: router statements on the ``bucket``, one limit's
    rows never cross shards). Limits themselves are not stored: callers pass them."""

    async def acquire_slot(
        self, bucket: str, limit_key: str, capacity: int, holder: SlotHolder, *, wait: bool = True
    ) -> SlotGrant:
        """Take one of slots 0..capacity-1 of (bucket, limit_key) for ``holder``;
        acquired at once if the holder already holds one. A slot is free when unheld
        or when its holder is no longer alive (see SlotHolder; a held slot past its
        expiry is checked against the holder's task or workflow and extended or freed).
        Not acquired: the holder's task is remembered as a waiter (woken, oldest first,
        by ``release_slot``), unless ``wait`` is False."""
        ...

    async def release_slot(self, bucket: str, limit_key: str, holder: SlotHolder) -> None:
        """Free the slots ``holder`` holds and wake the oldest waiter of the limit (its
        task, if deferred, becomes visible now). Silent if none is held."""
        ...

    async def take_rate_token(
        self, bucket: str, limit_key: str, interval: timedelta, task_id: str, horizon: timedelta
    ) -> datetime | None:
        """One token of a limit that gives one every ``interval`` (no burst): None if
        ``task_id`` may run now (a token free now, or one reserved for it earlier whose
        time is now within max(``interval``, ``RATE_GRACE``); a reservation come later
        than that is dropped and a new token taken, so late starts crowd a window by
        at most that grace's worth of tokens). Else the time of the token now reserved for
        it (at most ``horizon`` ahead; beyond it, nothing is reserved and the time
        returned is when its token would be within ``horizon``)."""
        ...

    async def defer_task(self, lease: Lease, visible_at: datetime, reason: str) -> None:
        """Give a claimed task back unrun until ``visible_at``, uncounted (as
        ``release``), noting ``reason`` for ``waiting_reason``. Silent if already lost."""
        ...

    async def waiting_reason(self, tenant_id: str, workflow_id: str) -> str | None:
        """The reason of a task of the workflow deferred by ``defer_task`` and still
        waiting (not claimed nor changed since), if any."""
        ...

    async def limit_usage(self, buckets: Sequence[str]) -> list[LimitUsage]:
        """The limits with rows under ``buckets`` and their usage."""
        ...


def eager_start_claim(
    new: NewWorkflow,
    *,
    task_id: str,
    token: str,
    expires_at: datetime,
    created_at: datetime,
    updated_at: datetime,
) -> WorkflowTaskClaim:
    """The claim ``EagerStart.start_workflow_leased`` returns: ``new``'s row as written
    (running, history ``[new.started]``), its workflow task leased by ``token``."""
    return WorkflowTaskClaim(
        lease=Lease(
            task_id=task_id,
            token=token,
            tenant_id=new.tenant_id,
            shard_key=new.shard_key,
            workflow_id=new.workflow_id,
            expires_at=expires_at,
        ),
        workflow=WorkflowRecord(
            tenant_id=new.tenant_id,
            workflow_id=new.workflow_id,
            name=new.name,
            version=new.version,
            shard_key=new.shard_key,
            status=WorkflowStatus.RUNNING,
            input=new.input,
            created_at=created_at,
            updated_at=updated_at,
            history_length=1,
            next_seq=1,
        ),
        history=[new.started],
        attempt=1,
    )


# -- outcomes of client operations: interpreted here, once, for every adapter --
# An adapter reads the workflow's status as it was before its write (None: no such
# workflow) and hands it to these functions; they raise or say what happened.


def signal_outcome(tenant_id: str, workflow_id: str, status: WorkflowStatus | None) -> None:
    """``signal_workflow``: WorkflowNotFound, WorkflowNotRunning if terminal, else None."""
    if status is None:
        raise WorkflowNotFound(workflow_id, tenant_id)
    if status in TERMINAL_STATUSES:
        raise WorkflowNotRunning(workflow_id, status.value)


def cancel_outcome(
    tenant_id: str, workflow_id: str, status: WorkflowStatus | None, already_requested: bool
) -> CancelOutcome:
    """``cancel_workflow``'s outcome from the status before it and whether a cancel was
    already requested. A PARKED workflow is ended at once (CANCELLED)."""
    if status is None:
        raise WorkflowNotFound(workflow_id, tenant_id)
    if status in TERMINAL_STATUSES:
        return CancelOutcome.ALREADY_FINISHED
    if status == WorkflowStatus.PARKED:
        return CancelOutcome.CANCELLED
    if already_requested:
        return CancelOutcome.ALREADY_REQUESTED
    return CancelOutcome.REQUESTED


def terminate_outcome(
    tenant_id: str, workflow_id: str, status: WorkflowStatus | None
) -> TerminateOutcome:
    """``terminate_workflow``'s outcome from the status before it."""
    if status is None:
        raise WorkflowNotFound(workflow_id, tenant_id)
    if status in TERMINAL_STATUSES:
        return TerminateOutcome.ALREADY_FINISHED
    return TerminateOutcome.TERMINATED


def parked_cancellation(request: CancelRequested) -> WorkflowCancelledEvent:
    """The event that ends a PARKED workflow cancelled, appended right after ``request``."""
    message = request.reason or "cancelled while dead-lettered (parked)"
    return WorkflowCancelledEvent(error=ErrorInfo(type="Cancelled", message=message), at=request.at)


def terminated_error(event: WorkflowTerminatedEvent) -> ErrorInfo:
    """The ``error`` a terminated workflow's row shows."""
    return ErrorInfo(type="WorkflowTerminated", message=event.reason)


# -- what a store can keep: every adapter writes exactly these forms, and refuses the
# same values (PostgreSQL cannot store NUL in text nor encode a lone surrogate; its
# `json` columns take only valid UTF-8 JSON), so memory fails where production fails.

_stored_json: Final = msgspec.json.Encoder()
_any_json: Final = msgspec.json.Decoder(msgspec.Raw)


def stored_text(value: str, what: str) -> str:
    """``value`` as a store keeps it in a text column (ids, names, shard keys, owners):
    unchanged, or InvalidArgument if it holds NUL or a lone surrogate."""
    if "\x00" in value:
        raise InvalidArgument(f"{what} {value[:80]!r} contains NUL (\\x00); a store cannot keep it")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{what} {value[:80]!r} is not valid Unicode text (lone surrogate): {exc}"
            ) from None
    return value


def stored_payload(raw: msgspec.Raw | bytes, what: str = "payload") -> str:
    """The JSON text a store keeps for a payload (input, output, activity input);
    PayloadError unless it is valid UTF-8 JSON that decodes back."""
    try:
        text = bytes(raw).decode()
        _any_json.decode(text)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} is not valid UTF-8: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    return text


def stored_event(event: Event) -> str:
    """The JSON text a store keeps for an event; PayloadError if a store could not keep
    it exactly (a string with a lone surrogate, an embedded payload that is not valid
    UTF-8 JSON)."""
    return _round_trip(event)[0]


def round_trip_event(event: Event) -> Event:
    """``event`` as a store gives it back after keeping it (``stored_event`` then decoded):
    what a store without a database (memory) keeps, so it refuses what the others do."""
    return _round_trip(event)[1]


def _round_trip(event: Event) -> tuple[str, Event]:
    try:
        text = encode_event(event).decode()
        return text, decode_event(text)
    except UnicodeError as exc:
        raise PayloadError(f"{_event_name(event)} event cannot be stored: {exc}") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(
            f"{_event_name(event)} event cannot be stored: a payload is not valid JSON: {exc}"
        ) from None


def stored_error(error: ErrorInfo, what: str = "error") -> str:
    """The JSON text a store keeps for an ErrorInfo; PayloadError if it holds a string a
    store cannot encode (a lone surrogate)."""
    try:
        return _stored_json.encode(error).decode()
    except UnicodeError as exc:
        raise PayloadError(f"{what} {error.type!r} cannot be stored: {exc}") from None


def _event_name(event: Event) -> str:
    return type(event).__name__


# -- runs (continue-as-new) and published status --


class ContinueAsNew(msgspec.Struct, frozen=True, kw_only=True):
    """The next run a workflow-task commit starts (``WorkflowTaskCommit.continue_as_new``).

    After the commit's own writes, in the same transaction, the store:

    * archives the run that ends: a run record (``RunRecord``: its number, input, start,
      end, history length) and its history, both readable through ``RunArchive``;
    * resets the workflow row for run ``run_number + 1``: ``input`` = ``started.input``,
      history ``[started, *carried]`` (positions 1..n), ``next_seq`` 1, status RUNNING,
      no output nor error; ``cancel_requested`` and ``status_value`` stay as they are;
    * deletes every activity and timer task of the workflow (steps of the ended run) and
      leaves its workflow task pending, unleased, visible now, attempt count 1;
    * keeps the inbox (signals and cancel requests that arrived meanwhile go to the new
      run), except the results of the ended run's steps (events with a ``seq``:
      ActivityCompleted, ActivityFailed, TimerFired), which it deletes.
    """

    started: Event
    """The WorkflowStarted event of the new run (its ``run_number`` is the next one)."""
    carried: list[Event] = []
    """Events the ended run received but did not consume (signals no wait took, a cancel
    request), in their order: the new run's history continues with them."""


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An earlier run of a workflow id, ended by continue-as-new (``RunArchive``)."""

    run_number: int
    input: msgspec.Raw
    started_at: datetime
    ended_at: datetime
    history_length: int
    status: str = "continued"


@runtime_checkable
class RunArchive(Protocol):
    """The earlier runs of a workflow id (those ``ContinueAsNew`` archived). Memory,
    PostgreSQL and Citus have it; the Engine looks for it with ``getattr(store,
    "list_runs", None)``. Archived runs are deleted with their workflow (``prune``)."""

    async def list_runs(self, tenant_id: str, workflow_id: str) -> list[RunRecord]:
        """The archived runs of the workflow, oldest first (the current run, in the
        workflow row, is not among them). WorkflowNotFound if there is no such workflow."""
        ...

    async def get_run_history(
        self, tenant_id: str, workflow_id: str, run_number: int
    ) -> list[Event]:
        """The history of archived run ``run_number``, oldest first; [] if there is no
        such archived run (WorkflowNotFound if there is no such workflow)."""
        ...
