"""A stateful test straight over the MemoryStore protocol.

Hypothesis interleaves starts, signals, cancels, claims, workflow commits (with fresh
or stale leases), activity completions and retries, heartbeats, releases, timer
firings and clock jumps (expiring leases). Invariants after every step:

* at most one workflow task per workflow, and it is the one the row points to;
* terminal workflows have no tasks;
* histories only grow (every earlier event is still there, in order), and satisfy
  the structural checks of ``prop_support.check_history``;
* a write with a stale lease (its task re-claimed since, or its lease already used)
  raises LeaseLost and changes nothing.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from prop_support import check_history, scaled

from flows_core import ErrorInfo, LeaseLost, WorkflowNotRunning
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    SignalReceived,
    TimerStarted,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
)
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    ActivityTaskSpec,
    ClaimRequest,
    Lease,
    NewWorkflow,
    TimerTaskSpec,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)
from flows_memory import MemoryStore, VirtualClock

NAME = "sm"
LEASE = timedelta(seconds=10)
RAW = msgspec.Raw(b"1")


def sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a MemoryStore write to completion (they never suspend)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("a MemoryStore write suspended")


class StoreMachine(RuleBasedStateMachine):
    workflows = Bundle("workflows")

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.store = MemoryStore(clock=self.clock)
        self.claims: list[WorkflowTaskClaim | ActivityTaskClaim] = []
        self.token_of: dict[str, str] = {}
        self.used: set[str] = set()
        self.seen: dict[str, list[bytes]] = {}
        self.serial = 0

    # -- helpers --

    def _history(self, wf_id: str) -> list[Event]:
        return sync(self.store.get_history("t", wf_id))

    def _snapshot(self) -> Any:
        return {
            k: ([msgspec.json.encode(e) for e in wf.history], wf.status, wf.next_seq)
            for k, wf in self.store._workflows.items()
        }, sorted((t.task_id, t.token, t.visible_at, t.attempt) for t in self.store._tasks.values())

    def _stale(self, lease: Lease) -> bool:
        return self.token_of.get(lease.task_id) != lease.token or lease.token in self.used

    def _fenced(self, lease: Lease, write: Coroutine[Any, Any, Any]) -> bool:
        """Run a fenced write; True if it was applied. Stale leases must not write."""
        stale = self._stale(lease)
        before = self._snapshot()
        try:
            sync(write)
        except LeaseLost:
            assert self._snapshot() == before, "a write that raised LeaseLost changed state"
            return False
        assert not stale, f"a stale lease wrote: {lease}"
        self.used.add(lease.token)
        return True

    def _pick(self, kind: type, index: int) -> Any:
        found = [c for c in self.claims if isinstance(c, kind)]
        return found[index % len(found)] if found else None

    # -- client operations --

    @initialize(target=workflows)
    def first(self) -> str:
        return self.start()

    @rule(target=workflows)
    def start(self) -> str:
        self.serial += 1
        wf_id = f"wf{self.serial}"
        now = self.clock.now()
        started = WorkflowStarted(
            name=NAME, version=1, workflow_id=wf_id, tenant_id="t", input=RAW, seed=1, at=now
        )
        sync(
            self.store.start_workflow(
                NewWorkflow(
                    tenant_id="t",
                    workflow_id=wf_id,
                    name=NAME,
                    version=1,
                    shard_key=f"{NAME}-shard-0",
                    input=RAW,
                    started=started,
                )
            )
        )
        return wf_id

    @rule(wf_id=workflows)
    def signal(self, wf_id: str) -> None:
        self.serial += 1
        event = SignalReceived(
            name="s", payload=RAW, signal_id=f"sig{self.serial}", at=self.clock.now()
        )
        terminal = self.store._workflows[("t", wf_id)].status in TERMINAL_STATUSES
        try:
            sync(self.store.signal_workflow("t", wf_id, event))
        except WorkflowNotRunning:
            assert terminal
        else:
            assert not terminal

    @rule(wf_id=workflows)
    def cancel(self, wf_id: str) -> None:
        sync(self.store.cancel_workflow("t", wf_id, CancelRequested(at=self.clock.now())))

    # -- worker operations --

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        claimed = sync(
            self.store.claim(
                ClaimRequest(
                    owner="w",
                    workflow_types=[(NAME, 1)],
                    activity_names=["act"],
                    limit=limit,
                    lease=LEASE,
                )
            )
        )
        assert len(claimed) <= limit
        for c in claimed:
            assert c.lease.token != self.token_of.get(c.lease.task_id)
            self.token_of[c.lease.task_id] = c.lease.token
            if isinstance(c, WorkflowTaskClaim):
                assert c.workflow.status == WorkflowStatus.RUNNING
                assert c.history == self._history(c.lease.workflow_id)
        self.claims.extend(claimed)

    @precondition(lambda self: any(isinstance(c, WorkflowTaskClaim) for c in self.claims))
    @rule(
        index=st.integers(0, 50),
        what=st.sampled_from(["nothing", "activity", "timer", "both", "complete", "fail"]),
    )
    def commit(self, index: int, what: str) -> None:
        claim: WorkflowTaskClaim = self._pick(WorkflowTaskClaim, index)
        now = self.clock.now()
        seq = claim.workflow.next_seq
        events: list[Event] = []
        acts: list[ActivityTaskSpec] = []
        timers: list[TimerTaskSpec] = []
        status = WorkflowStatus.RUNNING
        if what in ("activity", "both"):
            events.append(ActivityScheduled(seq=seq, name="act", input=RAW, at=now))
            acts.append(ActivityTaskSpec(seq=seq, name="act", input=RAW))
            seq += 1
        if what in ("timer", "both"):
            fire_at = now + timedelta(seconds=5)
            events.append(TimerStarted(seq=seq, fire_at=fire_at, at=now))
            timers.append(TimerTaskSpec(seq=seq, fire_at=fire_at))
            seq += 1
        if what == "complete":
            events.append(WorkflowCompleted(output=RAW, at=now))
            status = WorkflowStatus.COMPLETED
        if what == "fail":
            events.append(WorkflowFailedEvent(error=ErrorInfo(type="E", message="m"), at=now))
            status = WorkflowStatus.FAILED
        wf_id = claim.lease.workflow_id
        before = self._history(wf_id)
        applied = self._fenced(
            claim.lease,
            self.store.commit_workflow_task(
                WorkflowTaskCommit(
                    lease=claim.lease,
                    claimed_history_length=len(claim.history),
                    expected_next_seq=claim.workflow.next_seq,
                    next_seq=seq,
                    events=events,
                    status=status,
                    output=RAW if status == WorkflowStatus.COMPLETED else None,
                    activity_tasks=acts,
                    timers=timers,
                )
            ),
        )
        event(f"commit {what}: {'applied' if applied else 'fenced'}")
        if applied:
            at = len(claim.history)
            if at < len(before):
                event("commit after the history grew")
            assert self._history(wf_id) == before[:at] + events + before[at:]

    @precondition(lambda self: any(isinstance(c, ActivityTaskClaim) for c in self.claims))
    @rule(index=st.integers(0, 50), ok=st.booleans())
    def complete(self, index: int, ok: bool) -> None:
        claim: ActivityTaskClaim = self._pick(ActivityTaskClaim, index)
        now = self.clock.now()
        result: ActivityCompleted | ActivityFailedEvent = (
            ActivityCompleted(seq=claim.seq, output=RAW, attempt=claim.attempt, at=now)
            if ok
            else ActivityFailedEvent(seq=claim.seq, error=ErrorInfo(type="E", message="m"), at=now)
        )
        applied = self._fenced(
            claim.lease,
            self.store.complete_activity(ActivityResult(lease=claim.lease, event=result)),
        )
        event(f"complete: {'applied' if applied else 'fenced'}")

    @precondition(lambda self: any(isinstance(c, ActivityTaskClaim) for c in self.claims))
    @rule(index=st.integers(0, 50))
    def retry(self, index: int) -> None:
        claim: ActivityTaskClaim = self._pick(ActivityTaskClaim, index)
        self._fenced(
            claim.lease,
            self.store.retry_activity(
                ActivityRetry(
                    lease=claim.lease,
                    next_attempt=claim.attempt + 1,
                    visible_at=self.clock.now() + timedelta(seconds=1),
                    error=ErrorInfo(type="E", message="m"),
                )
            ),
        )

    @precondition(lambda self: bool(self.claims))
    @rule(index=st.integers(0, 50))
    def heartbeat(self, index: int) -> None:
        claim = self.claims[index % len(self.claims)]
        stale = self.token_of.get(claim.lease.task_id) != claim.lease.token
        try:
            reply = sync(self.store.heartbeat(claim.lease, LEASE))
        except LeaseLost:
            return
        assert not stale, "heartbeat extended a lease that was taken over"
        assert reply.expires_at == self.clock.now() + LEASE

    @precondition(lambda self: bool(self.claims))
    @rule(index=st.integers(0, 50))
    def release(self, index: int) -> None:
        claim = self.claims[index % len(self.claims)]
        before = self._snapshot()
        sync(self.store.release(claim.lease))
        if self._stale(claim.lease):
            assert self._snapshot() == before, "a stale release changed state"
        else:
            self.used.add(claim.lease.token)

    @rule()
    def fire_timers(self) -> None:
        sync(self.store.fire_due_timers(None, 100))

    @rule(seconds=st.sampled_from([1, 4, 11, 30]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(timedelta(seconds=seconds))

    # -- invariants --

    @invariant()
    def one_workflow_task_per_workflow(self) -> None:
        for key, wf in self.store._workflows.items():
            tasks = [t for t in self.store._tasks.values() if t.key == key and t.kind == "workflow"]
            assert len(tasks) <= 1, f"{key}: {len(tasks)} workflow tasks"
            assert (tasks[0] if tasks else None) is wf.workflow_task

    @invariant()
    def terminal_workflows_have_no_tasks(self) -> None:
        for key, wf in self.store._workflows.items():
            if wf.status in TERMINAL_STATUSES:
                assert not [t for t in self.store._tasks.values() if t.key == key], key

    @invariant()
    def histories_only_grow(self) -> None:
        for (_, wf_id), wf in self.store._workflows.items():
            now = [msgspec.json.encode(e) for e in wf.history]
            old = self.seen.get(wf_id, [])
            it = iter(now)
            assert all(e in it for e in old), f"{wf_id}: an event vanished or moved back"
            self.seen[wf_id] = now
            check_history(wf.history)

    @invariant()
    def resolved_steps_have_no_task(self) -> None:
        for wf in self.store._workflows.values():
            resolved = {
                e.seq for e in wf.history if isinstance(e, ActivityCompleted | ActivityFailedEvent)
            }
            for seq, task in wf.step_tasks.items():
                assert task.task_id in self.store._tasks
                assert task.kind != "activity" or seq not in resolved, f"#{seq} resolved, queued"


StoreMachine.TestCase.settings = settings(
    max_examples=scaled(200), stateful_step_count=50, deadline=None
)
test_memory_store_protocol = StoreMachine.TestCase
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
