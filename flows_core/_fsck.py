"""Consistency checks of a store (``flows fsck``): what a live store must never hold.

The semantic checks of one workflow are pure functions of its history and row here
(``history_damage``, ``record_disagreements``, ``open_signal_waits``); a store that can be
checked provides the read-only scan ``flows_core.store.FsckScan`` (rows with their task,
inbox and history counts, orphaned rows, expired leases) and ``fsck`` puts them together.
The contract tests assert the same invariants with these functions.

Vocabulary (see ``flows_core.events``):

* a *command event* records that the workflow took step ``seq``: ActivityScheduled,
  TimerStarted, SignalWaitStarted, SideEffectRecorded. Replay allocates seqs 1, 2, 3...
  in the order the code takes steps, and every allocated seq gets its command event in
  the same commit, so command seqs appear in strictly increasing order, without gaps;
* a *resolution event* records the outcome of a step: ActivityCompleted /
  ActivityFailed (of an ActivityScheduled), TimerFired (of a TimerStarted, or of the
  timeout of a SignalWaitStarted that has one);
* StepCancelled drops a pending step (its task or timer is deleted in the same commit);
* terminal events: WorkflowCompleted / WorkflowFailed / WorkflowCancelled /
  WorkflowTerminated;
* the execution deadline: the reserved step #0, a TimerStarted with seq 0 recorded before
  any step of the code, resolved by a TimerFired with seq 0;
* *inbox events* come from outside the workflow's own decisions: SignalReceived,
  CancelRequested, and resolutions written by complete_activity / fire_due_timers. An
  inbox event may follow a StepCancelled of its seq (it raced the task that dropped the
  step), but nothing follows the terminal event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import msgspec

from ._engine import WORKER_LIVENESS
from ._errors import WorkflowNotFound
from .events import (
    DEADLINE_SEQ,
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    ChildCancelRequested,
    ChildSignalRequested,
    ChildStartRequested,
    ChildWorkflowEnded,
    Event,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
    WorkflowTerminatedEvent,
    event_summary,
)
from .store import (
    TERMINAL_STATUSES,
    FsckScan,
    FsckWorkflow,
    Store,
    WorkflowRecord,
    WorkflowStatus,
)

__all__ = [
    "COMMAND_TYPES",
    "INBOX_TYPES",
    "RESOLUTION_TYPES",
    "TERMINAL_TYPES",
    "FsckFinding",
    "FsckReport",
    "HistoryDamage",
    "format_history",
    "fsck",
    "history_damage",
    "open_signal_waits",
    "record_disagreements",
    "workflow_findings",
]

COMMAND_TYPES = (
    ActivityScheduled,
    TimerStarted,
    SignalWaitStarted,
    SideEffectRecorded,
    ChildStartRequested,
    ChildSignalRequested,
    ChildCancelRequested,
)
RESOLUTION_TYPES = (ActivityCompleted, ActivityFailedEvent, TimerFired, ChildWorkflowEnded)
TERMINAL_TYPES = (
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowCancelledEvent,
    WorkflowTerminatedEvent,
)
INBOX_TYPES = (SignalReceived, CancelRequested, *RESOLUTION_TYPES)

# Which command kinds each resolution may resolve.
_RESOLVES: Final[dict[type, tuple[type, ...]]] = {
    ActivityCompleted: (ActivityScheduled,),
    ActivityFailedEvent: (ActivityScheduled,),
    TimerFired: (TimerStarted, SignalWaitStarted),
    ChildWorkflowEnded: (ChildStartRequested,),
}

_STATUS_OF: Final[dict[type, WorkflowStatus]] = {
    WorkflowCompleted: WorkflowStatus.COMPLETED,
    WorkflowFailedEvent: WorkflowStatus.FAILED,
    WorkflowCancelledEvent: WorkflowStatus.CANCELLED,
    WorkflowTerminatedEvent: WorkflowStatus.TERMINATED,
}


def format_history(history: Sequence[Event]) -> str:
    """One numbered line per event (position: summary)."""
    return "\n".join(f"  {i:>3}: {event_summary(e)}" for i, e in enumerate(history, start=1))


@dataclass(frozen=True, slots=True)
class HistoryDamage:
    """The first broken invariant of a history: its kind, where, and what."""

    kind: str
    """``bad-start``, ``after-terminal``, ``duplicate-seq``, ``seq-order``, ``seq-gap``,
    ``unscheduled-resolution``, ``wrong-resolution``, ``double-resolution``,
    ``bad-cancel``, ``duplicate-inbox`` or ``deadline``."""
    position: int | None
    message: str


def history_damage(
    history: Sequence[Event], *, contiguous_seqs: bool = True, terminal_last: bool = True
) -> HistoryDamage | None:
    """The first structural guarantee ``history`` breaks, or None.

    1. It is not empty, starts with WorkflowStarted, and has no other WorkflowStarted.
    2. No seq is scheduled twice: each seq has at most one command event (of any kind).
    3. Command seqs are positive and strictly increasing along the history; with
       ``contiguous_seqs`` (the default) they are exactly 1..n.
    4. Every resolution follows a command event with the same seq, of a kind it can
       resolve (activity result -> ActivityScheduled; TimerFired -> TimerStarted, or a
       SignalWaitStarted with a timeout), and each seq has at most one resolution.
    5. Every StepCancelled follows the command of its seq, at most once per seq.
    6. At most one CancelRequested; signal ids are unique.
    7. At most one terminal event, and it is the last one. ``terminal_last=False``
       tolerates inbox events after it, never a command, StepCancelled or a second
       terminal.
    8. The execution deadline (seq 0): only with an execution_timeout, then once, before
       every other command, at ``started.at + execution_timeout``, never cancelled; its
       TimerFired only after it; a WorkflowTimeout failure only after that TimerFired.
    """
    if not history:
        return HistoryDamage("bad-start", None, "history is empty (no WorkflowStarted)")
    started = history[0]
    if not isinstance(started, WorkflowStarted):
        return HistoryDamage(
            "bad-start", 1, f"first event is {type(started).__name__}, not WorkflowStarted"
        )

    commands: dict[int, Event] = {}
    resolved: dict[int, int] = {}  # seq -> position of its resolution
    cancelled: dict[int, int] = {}  # seq -> position of its StepCancelled
    last_seq = 0
    cancels = 0
    signal_ids: Counter[str] = Counter()
    terminal_at: int | None = None
    deadline_fired = False

    for pos, event in enumerate(history, start=1):
        found: tuple[str, str] | None = None
        if isinstance(event, TimerStarted) and event.seq == DEADLINE_SEQ:
            if started.execution_timeout is None:
                found = ("deadline", "an execution deadline without execution_timeout")
            elif commands:
                found = ("deadline", "the execution deadline is not the first command")
            elif event.fire_at != started.at + started.execution_timeout:
                found = ("deadline", f"execution deadline at {event.fire_at}")
            else:
                commands[DEADLINE_SEQ] = event
                continue
            return HistoryDamage(found[0], pos, found[1])
        if isinstance(event, TimerFired) and event.seq == DEADLINE_SEQ:
            if DEADLINE_SEQ not in commands:
                found = ("deadline", "the execution deadline fired but was never set")
            elif deadline_fired:
                found = ("double-resolution", "the execution deadline fired twice")
            elif terminal_at is not None and terminal_last:
                found = ("after-terminal", f"TimerFired after the terminal event at {terminal_at}")
            else:
                deadline_fired = True
                continue
            return HistoryDamage(found[0], pos, found[1])
        found = _event_damage(
            event,
            pos,
            started=started,
            commands=commands,
            resolved=resolved,
            cancelled=cancelled,
            last_seq=last_seq,
            deadline_fired=deadline_fired,
            terminal_at=terminal_at,
            terminal_last=terminal_last,
            contiguous_seqs=contiguous_seqs,
        )
        if found is not None:
            return HistoryDamage(found[0], pos, found[1])
        if isinstance(event, COMMAND_TYPES):
            commands[event.seq] = event
            last_seq = event.seq
        elif isinstance(event, RESOLUTION_TYPES):
            resolved[event.seq] = pos
        elif isinstance(event, StepCancelled):
            cancelled[event.seq] = pos
        elif isinstance(event, CancelRequested):
            cancels += 1
            if cancels > 1:
                return HistoryDamage("duplicate-inbox", pos, "a second CancelRequested")
        elif isinstance(event, SignalReceived):
            signal_ids[event.signal_id] += 1
            if signal_ids[event.signal_id] > 1:
                return HistoryDamage(
                    "duplicate-inbox", pos, f"signal {event.signal_id} recorded twice"
                )
        elif isinstance(event, TERMINAL_TYPES):
            terminal_at = pos
    return None


def _event_damage(
    event: Event,
    pos: int,
    *,
    started: WorkflowStarted,
    commands: dict[int, Event],
    resolved: dict[int, int],
    cancelled: dict[int, int],
    last_seq: int,
    deadline_fired: bool,
    terminal_at: int | None,
    terminal_last: bool,
    contiguous_seqs: bool,
) -> tuple[str, str] | None:
    """What is wrong with ``event`` at ``pos`` given what came before (not the deadline's
    own events), as (kind, message); None if nothing."""
    if isinstance(event, StepCancelled) and event.seq == DEADLINE_SEQ:
        return "deadline", "the execution deadline was cancelled"
    if (
        isinstance(event, WorkflowFailedEvent)
        and event.error.type == "WorkflowTimeout"
        and not deadline_fired
    ):
        return "deadline", "WorkflowTimeout before the execution deadline fired"
    if pos > 1 and isinstance(event, WorkflowStarted):
        return "bad-start", "a second WorkflowStarted"
    if terminal_at is not None and (terminal_last or not isinstance(event, INBOX_TYPES)):
        return (
            "after-terminal",
            f"{type(event).__name__} after the terminal event at position {terminal_at}",
        )
    if isinstance(event, COMMAND_TYPES):
        seq = event.seq
        if seq in commands:
            return (
                "duplicate-seq",
                f"seq {seq} scheduled twice ({type(commands[seq]).__name__} then "
                f"{type(event).__name__})",
            )
        if seq <= 0:
            return "seq-order", f"non-positive seq {seq}"
        if seq <= last_seq:
            return "seq-order", f"seq {seq} taken after seq {last_seq}"
        if contiguous_seqs and seq != last_seq + 1:
            return "seq-gap", f"seq {seq} follows seq {last_seq}: a gap"
    elif isinstance(event, RESOLUTION_TYPES):
        seq = event.seq
        command = commands.get(seq)
        if command is None:
            return (
                "unscheduled-resolution",
                f"{type(event).__name__} for seq {seq}, which was never taken",
            )
        if not isinstance(command, _RESOLVES[type(event)]):
            return (
                "wrong-resolution",
                f"{type(event).__name__} cannot resolve seq {seq} ({type(command).__name__})",
            )
        if isinstance(command, SignalWaitStarted) and command.timeout_at is None:
            return "wrong-resolution", f"TimerFired for seq {seq}, a wait with no timeout"
        if seq in resolved:
            return (
                "double-resolution",
                f"seq {seq} resolved twice (first at position {resolved[seq]})",
            )
        if isinstance(event, ActivityCompleted) and event.attempt < 1:
            return "wrong-resolution", f"activity attempt {event.attempt} < 1"
    elif isinstance(event, StepCancelled):
        if event.seq not in commands:
            return "bad-cancel", f"StepCancelled for seq {event.seq}, never taken"
        if event.seq in cancelled:
            return "bad-cancel", f"seq {event.seq} cancelled twice"
    return None


def record_disagreements(record: WorkflowRecord, history: Sequence[Event]) -> list[str]:
    """Where the cached row disagrees with the history it is derived from.

    history_length, next_seq (one past the last command seq), status (terminal iff the
    history has the matching terminal event), output of a completed workflow,
    cancel_requested (iff a CancelRequested is in the history, or still in the inbox).
    """
    found: list[str] = []
    if record.history_length != len(history):
        found.append(f"row says {record.history_length} events, history has {len(history)}")
    seqs = [e.seq for e in history if isinstance(e, COMMAND_TYPES) and e.seq != DEADLINE_SEQ]
    expected_next = (max(seqs) + 1) if seqs else 1
    if record.next_seq != expected_next:
        found.append(
            f"row next_seq {record.next_seq}, history's last command seq + 1 is {expected_next}"
        )
    terminals = [e for e in history if isinstance(e, TERMINAL_TYPES)]
    last = terminals[-1] if terminals else None
    if last is not None:
        if record.status != _STATUS_OF[type(last)]:
            found.append(f"history ends with {type(last).__name__}, row status is {record.status}")
        elif isinstance(last, WorkflowCompleted) and (
            record.output is None
            or msgspec.json.decode(record.output) != msgspec.json.decode(last.output)
        ):
            found.append("row output differs from the WorkflowCompleted output")
    elif record.status in TERMINAL_STATUSES:
        found.append(f"row status {record.status} but the history has no terminal event")
    has_cancel = any(isinstance(e, CancelRequested) for e in history)
    if (has_cancel or record.inbox_length == 0) and record.cancel_requested != has_cancel:
        found.append(
            f"row cancel_requested={record.cancel_requested}, "
            f"CancelRequested in history={has_cancel}, inbox empty"
        )
    return found


def open_signal_waits(history: Sequence[Event]) -> list[SignalWaitStarted]:
    """The signal waits the workflow may still be blocked on: started, not timed out,
    not cancelled, and no signal of that name received after them."""
    waits: dict[int, SignalWaitStarted] = {}
    for event in history:
        if isinstance(event, SignalWaitStarted):
            waits[event.seq] = event
        elif isinstance(event, TimerFired | StepCancelled):
            waits.pop(event.seq, None)
        elif isinstance(event, SignalReceived):
            waits = {seq: w for seq, w in waits.items() if w.name != event.name}
    return list(waits.values())


@dataclass(frozen=True, slots=True)
class FsckFinding:
    """One broken invariant: which workflow, what kind of damage, the detail."""

    tenant_id: str
    workflow_id: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.tenant_id}/{self.workflow_id}: {self.kind}: {self.detail}"


def workflow_findings(
    row: FsckWorkflow, history: Sequence[Event], *, inbox_after_terminal_ok: bool = True
) -> list[FsckFinding]:
    """Everything wrong with one workflow, from its scanned row and its history."""
    record = row.record
    out: list[FsckFinding] = []

    def add(kind: str, detail: str) -> None:
        out.append(FsckFinding(record.tenant_id, record.workflow_id, kind, detail))

    if row.history_rows != row.history_last:
        add(
            "history-gap",
            f"positions 1..{row.history_last} hold {row.history_rows} events: "
            "a position is missing",
        )
    damage = history_damage(history)
    if damage is not None:
        where = "" if damage.position is None else f"at position {damage.position}: "
        add(damage.kind, where + damage.message)
    for text in record_disagreements(record, history):
        add("cached-state", text)
    if record.inbox_length != row.inbox_rows:
        add("cached-state", f"row inbox_length {record.inbox_length}, inbox has {row.inbox_rows}")
    tasks = row.workflow_tasks + row.activity_tasks + row.timer_tasks
    if record.status in TERMINAL_STATUSES and tasks:
        add(
            "terminal-tasks",
            f"{record.status} workflow still has {row.workflow_tasks} workflow, "
            f"{row.activity_tasks} activity and {row.timer_tasks} timer tasks",
        )
    if record.status == WorkflowStatus.TERMINATED and row.inbox_rows:
        # terminate_workflow deletes the inbox; other terminal commits leave events that
        # arrived during the last workflow task (the Store protocol), which is no damage.
        add("orphan-inbox", f"{row.inbox_rows} inbox events of a terminated workflow")
    if record.status == WorkflowStatus.RUNNING and row.workflow_tasks == 0:
        if row.inbox_rows:
            add("stuck", f"{row.inbox_rows} inbox events and no workflow task to take them in")
        elif tasks == 0 and not open_signal_waits(history):
            add("stuck", "running with no workflow, activity or timer task and no signal wait")
    return out


@dataclass
class FsckReport:
    """What ``fsck`` found, and how much it looked at."""

    findings: list[FsckFinding] = field(default_factory=list)
    workflows: int = 0
    """Workflow rows checked."""

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        if self.ok:
            return f"fsck: {self.workflows} workflows checked, no damage found"
        kinds = Counter(f.kind for f in self.findings)
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return (
            f"fsck: {self.workflows} workflows checked, {len(self.findings)} findings ({counted})"
        )


async def fsck(
    store: Store,
    *,
    tenant_id: str | None = None,
    limit: int | None = None,
    lease: timedelta = timedelta(seconds=30),
    lease_periods: int = 10,
    page: int = 200,
    on_finding: Callable[[FsckFinding], None] | None = None,
) -> FsckReport:
    """Check ``store`` (which must provide ``FsckScan``) for broken invariants.

    Reads only. ``tenant_id``: only that tenant; ``limit``: at most that many workflow
    rows; a lease counts as long expired ``lease_periods`` times ``lease`` after its
    expiry when its owner is not a live worker. ``on_finding`` hears each finding as it
    is made.
    """
    if not isinstance(store, FsckScan):
        raise TypeError(f"{type(store).__name__} cannot be checked: it has no FsckScan methods")
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    if lease <= timedelta(0) or lease_periods < 1:
        raise ValueError("lease must be positive and lease_periods at least 1")
    report = FsckReport()

    def found(items: Sequence[FsckFinding]) -> None:
        for item in items:
            report.findings.append(item)
            if on_finding is not None:
                on_finding(item)

    after: tuple[str, str, str] | None = None
    while limit is None or report.workflows < limit:
        size = page if limit is None else min(page, limit - report.workflows)
        rows = await store.fsck_workflows(tenant_id=tenant_id, after=after, limit=size)
        for row in rows:
            record = row.record
            try:
                history = await store.get_history(record.tenant_id, record.workflow_id)
            except WorkflowNotFound:
                continue  # pruned since the scan read its row
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                found(
                    [
                        FsckFinding(
                            record.tenant_id,
                            record.workflow_id,
                            "undecodable-history",
                            f"the stored history cannot be read: {exc}",
                        )
                    ]
                )
                continue
            found(workflow_findings(row, history))
        report.workflows += len(rows)
        if len(rows) < size:
            break
        last = rows[-1].record
        after = (last.shard_key, last.tenant_id, last.workflow_id)

    orphan_limit = 1000 if limit is None else limit
    for orphan in await store.fsck_orphans(tenant_id=tenant_id, limit=orphan_limit):
        found(
            [
                FsckFinding(
                    orphan.tenant_id,
                    orphan.workflow_id,
                    f"orphan-{orphan.kind}",
                    f"{orphan.rows} {orphan.kind} rows under shard {orphan.shard_key!r} "
                    "of a workflow that does not exist",
                )
            ]
        )

    now = store.clock.now()
    live = {
        w.worker_id for w in await store.list_workers() if w.heartbeat_at >= now - WORKER_LIVENESS
    }
    expired = await store.fsck_expired_leases(
        tenant_id=tenant_id, older_than=lease * lease_periods, limit=orphan_limit
    )
    for task in expired:
        if task.owner in live:
            continue
        found(
            [
                FsckFinding(
                    task.tenant_id,
                    task.workflow_id,
                    "expired-lease",
                    f"{task.kind} task {task.task_id} (seq {task.seq}) leased by "
                    f"{task.owner or '?'} (not a live worker) expired at "
                    f"{task.expired_at.isoformat()} and was never claimed again",
                )
            ]
        )
    return report
