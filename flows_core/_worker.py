"""The worker: claims tasks, replays workflows, runs activities, commits outcomes.

Fast path: when a workflow task schedules activities this worker can run, it runs them
at once under the workflow task's lease and feeds their results back into the replayed
instance, so one commit records the schedule, the results and the next decision. The
queue path (activity tasks) takes over for activities served elsewhere, for retries
with backoff, and after a crash (the lease expires and the task is claimed again).

Eager start and backlog. An Engine of the same process, on the same store, hands a
workflow it starts straight to a running Worker that serves it and has room, when the
store offers ``start_workflow_leased`` (an optional capability): the workflow task is
inserted already leased to the worker, so there is no claim and no notification. Room is
the free slots plus a small backlog of leased tasks waiting for a slot (``backlog``),
which claims also fill (one claim statement then serves several tasks); a task waiting
there longer than ``backlog_wait`` is released to the queue for any worker to take.

Dead letters. A workflow task that cannot make progress is dead-lettered (status
PARKED, ``error.attempts`` = claims of the task) instead of being retried forever:

* at once on a NonDeterminismError / IllegalAwaitError (a code fix is needed);
* when replay or the decision raises an unexpected exception inside the worker (not the
  workflow's own exceptions, which fail the workflow): the task is retried with backoff
  and dead-lettered on attempt ``max_workflow_task_attempts``;
* when the task keeps killing its claimant (a poison task: the lease expires and it is
  claimed again and again): the store counts the claims since the last successful
  commit, and the claim that exceeds ``max_workflow_task_attempts`` dead-letters it
  without running it (error type ``WorkflowTaskCrashed``).

``Engine.retry`` puts a dead letter back to running after a code fix, ``Engine.rerun``
starts a new workflow with its input.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec
import uuid6

from ._activity_context import ActivityInfo, _ActivityState, _state
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, decode_payload, encode_payload
from ._definitions import Activity, Workflow
from ._engine import WorkflowRegistry, add_local_worker, prune_store, remove_local_worker
from ._errors import (
    ActivityTimeout,
    ErrorInfo,
    HeartbeatTimeout,
    InvalidArgument,
    LeaseLost,
    PayloadError,
    ScheduleToCloseTimeout,
)
from ._replay import WorkflowInstance
from .events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    Event,
    SignalWaitStarted,
    StepCancelled,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
)
from .store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    ActivityTaskSpec,
    ClaimedTask,
    ClaimRequest,
    Lease,
    NewWorkflow,
    Store,
    TimerTaskSpec,
    WorkerInfo,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

__all__ = ["Worker", "WorkerStats", "build_commit"]

log = logging.getLogger("flows.worker")

C = TypeVar("C", ActivityResult, ActivityRetry, WorkflowTaskCommit)
R = TypeVar("R")

REGISTER_EVERY = 10.0
TIMER_CHECK_EVERY = 0.05


@dataclass(frozen=True)
class WorkerStats:
    """What ``Worker.stats()`` reports."""

    worker_id: str
    queue_depth: dict[str, int]
    """Claimable tasks per shard key (this worker's shards, or all)."""
    oldest_pending_age: timedelta | None
    in_flight: int
    """Tasks this worker is processing now."""
    leased: int
    """Tasks leased by any worker (store-wide, in this worker's shards)."""
    dead_letters: int
    """Parked workflows (dead letters)."""
    workflows: dict[str, int]
    """Workflows per status."""
    counters: dict[str, int]
    """This worker's counters since it started (``Worker.counters``)."""


@dataclass
class _Progress:
    """Where a workflow task stands: its lease and what has been committed so far."""

    lease: Lease
    history_length: int
    next_seq: int


@dataclass
class _Outcome:
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    retry_in: timedelta | None = None


class Worker:
    """Runs workflows and activities from a store until stopped.

    ``concurrency`` bounds the tasks processed at once; ``poll_interval`` is the
    fallback wake-up when no notification arrives; ``lease`` is how long a claimed task
    is reserved without a heartbeat; ``max_inline_steps`` bounds the activities one
    workflow task runs inline before committing. A workflow task that fails unexpectedly
    is retried after ``workflow_task_backoff`` (doubling, at most 64x) and dead-lettered
    once it has been tried ``max_workflow_task_attempts`` times (see the module doc).
    """

    def __init__(
        self,
        store: Store,
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        activities: Iterable[Activity[Any, Any]] = (),
        concurrency: int = 10,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(seconds=30),
        worker_id: str | None = None,
        shard_keys: Sequence[str] | None = None,
        max_inline_steps: int = 64,
        grace_period: float = 10.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_workflow_task_attempts: int = 5,
        workflow_task_backoff: timedelta = timedelta(seconds=1),
        retention: timedelta | None = None,
        retention_interval: float = 300.0,
        retention_batch: int = 1000,
    ) -> None:
        if concurrency < 1:
            raise InvalidArgument("Worker concurrency must be at least 1")
        if poll_interval <= 0:
            raise InvalidArgument("Worker poll_interval must be positive")
        if lease <= timedelta(0):
            raise InvalidArgument("Worker lease must be positive")
        if max_workflow_task_attempts < 1:
            raise InvalidArgument("Worker max_workflow_task_attempts must be at least 1")
        self.store = store
        self.registry = WorkflowRegistry(workflows)
        self.activities: dict[str, Activity[Any, Any]] = {}
        for act in activities:
            if not isinstance(act, Activity):
                raise InvalidArgument(
                    f"expected an Activity made with @flows.activity, got {act!r}"
                )
            if act.name in self.activities and self.activities[act.name] is not act:
                raise InvalidArgument(f"activity {act.name!r} is registered twice")
            self.activities[act.name] = act
        if not self.registry.keys() and not self.activities:
            raise InvalidArgument("a Worker needs at least one workflow or activity")
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease = lease
        self.worker_id = (
            worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid6.uuid7().hex[-8:]}"
        )
        self.shard_keys = list(shard_keys) if shard_keys is not None else None
        self.max_inline_steps = max_inline_steps
        self.grace_period = grace_period
        self.max_payload_bytes = max_payload_bytes
        self._init_retention(retention, retention_interval, retention_batch)
        self.max_workflow_task_attempts = max_workflow_task_attempts
        self.workflow_task_backoff = workflow_task_backoff
        self._inflight: set[asyncio.Task[None]] = set()
        self._reserved = 0
        """Slots promised to eager starts in progress (``reserve_slot``)."""
        self._backlog: collections.deque[tuple[ClaimedTask, asyncio.TimerHandle]] = (
            collections.deque()
        )
        """Leased tasks waiting here for a slot (at most ``backlog``)."""
        self.backlog = max(concurrency, 8)
        """How many leased tasks may wait here for a slot, beyond ``concurrency``: eager
        starts handed over by an Engine of this process, and tasks a claim took beyond
        the free slots (one claim statement then serves several tasks). One that waits
        longer than ``backlog_wait`` seconds is given back to the queue (released,
        uncounted), where any worker can take it."""
        self.backlog_wait = min(lease.total_seconds() / 3, 1.0)
        self._stopping: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = True
        self._timers_at = 0.0
        self._suspects = 0
        self.counters: dict[str, int] = {
            "workflow_tasks": 0,
            "activity_tasks": 0,
            "inline_activities": 0,
            "commits": 0,
            "lease_lost": 0,
            "store_errors": 0,
            "parked": 0,
            "workflow_task_failures": 0,
            "eager_starts": 0,
        }

    # -- lifecycle --

    @property
    def idle(self) -> bool:
        """No task in progress and the last poll found nothing."""
        return self._idle and not self._inflight and not self._reserved and not self._backlog

    @property
    def running(self) -> bool:
        return self._stopping is not None and not self._stopping.is_set()

    async def run(self) -> None:
        """Poll and process until ``stop()``; survives store outages with backoff."""
        if self._stopping is not None:
            raise RuntimeError("this Worker is already running")
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        backoff = 0.05
        registered_at = 0.0
        self._start_pruner()
        self._loop = asyncio.get_running_loop()
        add_local_worker(self.store, self)
        try:
            while not self._stopping.is_set():
                try:
                    if time.monotonic() - registered_at > REGISTER_EVERY:
                        await self.store.register_worker(self._info())
                        registered_at = time.monotonic()
                    progressed = await self.poll_once()
                    backoff = 0.05
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    self.counters["store_errors"] += 1
                    log.warning(
                        "worker %s: store error, retrying in %.2fs: %r",
                        self.worker_id,
                        backoff,
                        exc,
                        extra={"worker_id": self.worker_id},
                    )
                    await self._sleep_or_stop(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if not progressed:
                    await self._idle_wait()
        finally:
            remove_local_worker(self.store, self)
            await self._stop_pruner()
            await self._release_backlog()
            await self._drain()
            with contextlib.suppress(Exception):
                await self.store.unregister_worker(self.worker_id)
            self._done.set()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop claiming; let in-flight work finish within the grace period, then
        cancel it and release its leases so another worker takes it at once."""
        if grace_period is not None:
            self.grace_period = grace_period
        if self._stopping is None or self._done is None:
            return
        self._stopping.set()
        await self._done.wait()

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            workflow_types=self.registry.keys(),
            activity_names=sorted(self.activities),
            heartbeat_at=self.store.clock.now(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    async def _sleep_or_stop(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle_wait(self) -> None:
        assert self._stopping is not None
        timeout = self.poll_interval
        due = await self.store.next_due(self.shard_keys)
        if due is not None:
            timeout = max(0.0, min(timeout, (due - self.store.clock.now()).total_seconds()))
        if timeout <= 0:
            self._timers_at = 0.0
            return
        waiters = [
            asyncio.ensure_future(self.store.wait_for_work(timeout)),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        started = time.monotonic()
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        # Woken because a timer (or retry) came due, or the poll interval ran out: look
        # at the timers at once. Woken by a notification of new work: go straight to the
        # claim (a signal resumes its workflow one transaction sooner).
        timed_out = time.monotonic() - started >= timeout * 0.99
        if timed_out or (due is not None and self.store.clock.now() >= due):
            self._timers_at = 0.0

    async def _drain(self) -> None:
        if not self._inflight:
            return
        _done, pending = await asyncio.wait(self._inflight, timeout=self.grace_period)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- retention (background pruner), stats, log fields --

    def _init_retention(self, retention: timedelta | None, interval: float, batch: int) -> None:
        if retention is not None and (
            not isinstance(retention, timedelta) or retention < timedelta(0)
        ):
            raise InvalidArgument("Worker retention must be a non-negative timedelta or None")
        if interval <= 0 or batch < 1:
            raise InvalidArgument("Worker retention_interval and retention_batch must be positive")
        self.retention = retention
        """Finished workflows older than this are pruned in the background (None: never)."""
        self.retention_interval = interval
        self.retention_batch = batch
        self.retention_max_batches = 10
        """Batches per pruning round: a round deletes at most this many x batch workflows."""
        self._pruner: asyncio.Task[None] | None = None

    async def prune_once(self) -> int:
        """One bounded pruning round with this worker's ``retention`` (0 if it has none)."""
        if self.retention is None:
            return 0
        deleted = await prune_store(
            self.store,
            self.retention,
            batch=self.retention_batch,
            max_batches=self.retention_max_batches,
        )
        self.counters["pruned"] = self.counters.get("pruned", 0) + deleted
        if deleted:
            log.info(
                "worker %s pruned %d finished workflows older than %s",
                self.worker_id,
                deleted,
                self.retention,
                extra={"worker_id": self.worker_id, "pruned": deleted},
            )
        return deleted

    async def _retention_loop(self) -> None:
        while self.running:
            try:
                await self.prune_once()
            except Exception as exc:
                log.warning(
                    "worker %s: pruning failed: %r",
                    self.worker_id,
                    exc,
                    extra={"worker_id": self.worker_id},
                )
            await self._sleep_or_stop(self.retention_interval)

    def _start_pruner(self) -> None:
        if self.retention is not None and self._pruner is None:
            self._pruner = asyncio.ensure_future(self._retention_loop())

    async def _stop_pruner(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

    async def stats(self) -> WorkerStats:
        """Queue depth per shard and oldest pending task age (of this worker's shards, or
        all), tasks in flight here and leased store-wide, dead letters, and counters."""
        found = await self.store.stats(self.shard_keys)
        return WorkerStats(
            worker_id=self.worker_id,
            queue_depth=dict(found.queue_depth),
            oldest_pending_age=found.oldest_pending_age,
            in_flight=len(self._inflight),
            leased=found.in_flight,
            dead_letters=found.dead_letters,
            workflows=dict(found.workflows),
            counters=dict(self.counters),
        )

    def _log_extra(self, lease: Lease, attempt: int) -> dict[str, Any]:
        """The ``extra=`` of task log records: structured fields for log handlers."""
        return {
            "worker_id": self.worker_id,
            "workflow_id": lease.workflow_id,
            "tenant_id": lease.tenant_id,
            "shard_key": lease.shard_key,
            "task_id": lease.task_id,
            "attempt": attempt,
        }

    # -- polling --

    async def poll_once(self) -> bool:
        """Fire due timers and claim what capacity allows. True if anything happened.

        Timers are looked at most every TIMER_CHECK_EVERY seconds while busy (each look
        is a transaction), and at once after an idle wait, which ends when one is due.
        """
        fired = 0
        if time.monotonic() >= self._timers_at:
            fired = await self.store.fire_due_timers(self.shard_keys, 100)
            self._timers_at = time.monotonic() + (0.0 if fired else TIMER_CHECK_EVERY)
        self._next_from_backlog()
        free = self.concurrency - len(self._inflight) - self._reserved - len(self._backlog)
        if free <= 0 or self._suspects:
            # A suspected poison task runs alone: if it kills the process, it takes
            # nothing else down with it.
            if self._inflight:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            else:  # every slot is promised to an eager start under way
                await asyncio.sleep(0.001)
            return True
        # Claim for the backlog too: one statement for several tasks.
        room = max(0, self.backlog - len(self._backlog) - self._reserved)
        claimed = await self.store.claim(
            ClaimRequest(
                owner=self.worker_id,
                workflow_types=self.registry.keys(),
                activity_names=sorted(self.activities),
                limit=free + room,
                lease=self.lease,
                shard_keys=self.shard_keys,
                fresh_only=bool(self._inflight),
            )
        )
        claimed = await self._isolate_suspects(claimed)
        self._idle = not claimed and not fired
        for task in claimed[:free]:
            self._spawn(task)
        for task in claimed[free:]:
            self._wait_for_slot(task)
        return bool(claimed or fired)

    async def _isolate_suspects(self, claimed: list[ClaimedTask]) -> list[ClaimedTask]:
        """Workflow tasks a previous claimant did not finish (attempt > 1) may be poison
        that kills the process: run one only alone, give the others back uncounted."""
        suspects = [c for c in claimed if isinstance(c, WorkflowTaskClaim) and c.attempt > 1]
        if not suspects:
            return claimed
        keep = [c for c in claimed if c not in suspects]
        if not keep and not self._inflight:
            keep = [suspects.pop(0)]  # nothing else here: run one suspect, alone
            self._suspects += 1
        for c in suspects:
            await self.store.release(c.lease)
        return keep

    # -- eager start (Engine.start hands over a workflow task it started leased) --

    def reserve_slot(self, new: NewWorkflow) -> bool:
        """Promise a slot to an eager start of ``new`` if this worker runs it now: it is
        running, serves the workflow's (name, version) and shard key, runs no suspected
        poison task, and has a free slot. The caller then calls ``accept_eager`` with
        the claim, or ``unreserve_slot`` if the start failed."""
        if not self.running or self._suspects:
            return False
        try:
            if asyncio.get_running_loop() is not self._loop:
                return False  # an Engine on another event loop (thread)
        except RuntimeError:
            return False
        if self.registry.get(new.name, new.version) is None:
            return False
        if self.shard_keys is not None and new.shard_key not in self.shard_keys:
            return False
        if len(self._inflight) + self._reserved + len(self._backlog) >= (
            self.concurrency + self.backlog
        ):
            return False
        self._reserved += 1
        return True

    def unreserve_slot(self) -> None:
        self._reserved -= 1

    async def accept_eager(self, claim: WorkflowTaskClaim) -> None:
        """Run a workflow task started leased to this worker (after ``reserve_slot``);
        give it back at once if the worker stopped meanwhile."""
        self._reserved -= 1
        if not self.running:
            with contextlib.suppress(Exception):
                await self.store.release(claim.lease)
            return
        self.counters["eager_starts"] += 1
        if len(self._inflight) < self.concurrency and not self._backlog and not self._suspects:
            self._spawn(claim)
            return
        self._wait_for_slot(claim)

    def _wait_for_slot(self, claim: ClaimedTask) -> None:
        timer = asyncio.get_running_loop().call_later(self.backlog_wait, self._give_back, claim)
        self._backlog.append((claim, timer))

    def _give_back(self, claim: ClaimedTask) -> None:
        """A leased task waited too long for a slot here: back to the queue."""
        for item in self._backlog:
            if item[0] is claim:
                self._backlog.remove(item)
                break
        else:
            return
        task = asyncio.ensure_future(self.store.release(claim.lease))
        task.add_done_callback(_retrieve)

    def _next_from_backlog(self, _task: asyncio.Task[None] | None = None) -> None:
        while (
            self._backlog
            and len(self._inflight) < self.concurrency
            and not self._suspects
            and self.running
        ):
            claim, timer = self._backlog.popleft()
            timer.cancel()
            self._spawn(claim)

    async def _release_backlog(self) -> None:
        while self._backlog:
            claim, timer = self._backlog.popleft()
            timer.cancel()
            with contextlib.suppress(Exception):
                await self.store.release(claim.lease)

    def _spawn(self, claim: ClaimedTask) -> None:
        task = asyncio.ensure_future(self._process(claim))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        if isinstance(claim, WorkflowTaskClaim) and claim.attempt > 1:
            task.add_done_callback(self._suspect_done)
        task.add_done_callback(self._next_from_backlog)

    def _suspect_done(self, _task: asyncio.Task[None]) -> None:
        self._suspects -= 1

    async def _process(self, claim: ClaimedTask) -> None:
        lease = claim.lease
        try:
            if isinstance(claim, WorkflowTaskClaim):
                self.counters["workflow_tasks"] += 1
                await self._workflow_task(claim)
            else:
                self.counters["activity_tasks"] += 1
                await self._activity_task(claim)
        except LeaseLost:
            self.counters["lease_lost"] += 1
            log.info(
                "worker %s lost the lease of %s (workflow %s)",
                self.worker_id,
                lease.task_id,
                lease.workflow_id,
                extra=self._log_extra(lease, claim.attempt),
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(lease))
            raise
        except Exception:
            log.exception(
                "worker %s failed on task %s of workflow %s; releasing it",
                self.worker_id,
                lease.task_id,
                lease.workflow_id,
                extra=self._log_extra(lease, claim.attempt),
            )
            with contextlib.suppress(Exception):
                await self.store.release(lease)

    # -- workflow tasks --

    async def _workflow_task(self, claim: WorkflowTaskClaim) -> None:
        wf = claim.workflow
        definition = self.registry.get(wf.name, wf.version)
        if definition is None:
            await self.store.release(claim.lease)
            return
        if claim.attempt > self.max_workflow_task_attempts:
            ran = claim.attempt - 1
            await self._dead_letter(
                claim,
                ErrorInfo(
                    type="WorkflowTaskCrashed",
                    message=f"the workflow task was claimed {ran} times without completing "
                    "(each claimant crashed or lost its lease); not running it again",
                    attempts=ran,
                ),
            )
            return
        try:
            await self._run_workflow_task(claim, definition)
        except _DecisionError as failure:
            exc = failure.__cause__ or failure
            self.counters["workflow_task_failures"] += 1
            error = ErrorInfo.from_exception(exc, attempts=claim.attempt)
            if claim.attempt >= self.max_workflow_task_attempts:
                log.error(
                    "workflow %s: workflow task failed (attempt %d): %r",
                    wf.workflow_id,
                    claim.attempt,
                    exc,
                    exc_info=exc,
                    extra=self._log_extra(claim.lease, claim.attempt),
                )
                await self._dead_letter(claim, error)
                return
            delay = self.workflow_task_backoff * min(2 ** (claim.attempt - 1), 64)
            log.warning(
                "workflow %s: workflow task failed (attempt %d), retrying in %s: %r",
                wf.workflow_id,
                claim.attempt,
                delay,
                exc,
                extra=self._log_extra(claim.lease, claim.attempt),
            )
            await self.store.fail_workflow_task(claim.lease, error, self.store.clock.now() + delay)

    async def _dead_letter(self, claim: WorkflowTaskClaim, error: ErrorInfo) -> None:
        self.counters["parked"] += 1
        log.error(
            "workflow %s dead-lettered: %s",
            claim.workflow.workflow_id,
            error,
            extra=self._log_extra(claim.lease, claim.attempt),
        )
        await self.store.park_workflow(claim.lease, error)

    @staticmethod
    def _apply(instance: WorkflowInstance, events: list[Event], now: Any) -> Any:
        """``instance.apply``; an unexpected exception becomes a _DecisionError."""
        try:
            return instance.apply(events, now)
        except Exception as exc:
            raise _DecisionError("workflow task failed") from exc

    async def _run_workflow_task(
        self, claim: WorkflowTaskClaim, definition: Workflow[Any, Any]
    ) -> None:
        wf = claim.workflow
        clock = self.store.clock
        instance = WorkflowInstance(definition, max_payload_bytes=self.max_payload_bytes)
        activation = self._apply(instance, claim.history, clock.now())
        progress = _Progress(claim.lease, len(claim.history), wf.next_seq)
        pending: list[Event] = list(activation.new_events)
        fresh: list[Event] = list(activation.new_events)
        retries: dict[int, ActivityTaskSpec] = {}
        budget = self.max_inline_steps
        keeper = _LeaseKeeper(self.store, claim.lease, self.lease)
        try:
            while activation.nondeterminism is None and budget > 0:
                inline = self._inline_candidates(instance, fresh)[:budget]
                if not inline:
                    break
                split = pending.index(inline[0])
                if split > 0:
                    # Record what came before these activities first, keeping the lease,
                    # so a crash during them repeats nothing that had finished.
                    moved = await self._commit(
                        progress,
                        instance,
                        pending[:split],
                        retries,
                        keep=True,
                        next_seq=inline[0].seq,
                    )
                    pending, retries = pending[split:], {}
                    if moved:
                        activation = self._apply(instance, moved, clock.now())
                        pending += activation.new_events
                        fresh = activation.new_events
                        continue
                budget -= len(inline)
                self.counters["inline_activities"] += len(inline)
                attempts = [
                    self._attempt(
                        self.activities[e.name],
                        e.input,
                        keeper,
                        self._activity_info(claim.lease, wf.name, e.name, e.seq, 1),
                        e.at,
                    )
                    for e in inline
                ]
                # one step (the common case) runs in this task: no task to create
                outcomes = (
                    [await attempts[0]] if len(attempts) == 1 else await asyncio.gather(*attempts)
                )
                keeper.check()
                now = clock.now()
                resolutions: list[Event] = []
                for scheduled, outcome in zip(inline, outcomes, strict=True):
                    event = _resolution(scheduled.seq, 1, outcome, now)
                    if event is not None:
                        resolutions.append(event)
                    else:
                        assert outcome.retry_in is not None
                        retries[scheduled.seq] = ActivityTaskSpec(
                            seq=scheduled.seq,
                            name=scheduled.name,
                            input=scheduled.input,
                            attempt=2,
                            visible_at=now + outcome.retry_in,
                            last_error=outcome.error,
                            scheduled_at=scheduled.at,
                        )
                if not resolutions:
                    break
                activation = self._apply(instance, resolutions, now)
                pending += [*resolutions, *activation.new_events]
                fresh = activation.new_events
        finally:
            await keeper.close()
        if activation.nondeterminism is not None:
            await self._dead_letter(
                claim, ErrorInfo.from_exception(activation.nondeterminism, attempts=claim.attempt)
            )
            return
        await self._commit(
            progress, instance, pending, retries, keep=False, next_seq=instance.next_seq
        )

    def _inline_candidates(
        self, instance: WorkflowInstance, fresh: list[Event]
    ) -> list[ActivityScheduled]:
        """Just-scheduled steps this worker runs itself, still awaited by the code."""
        if instance.finished:
            return []
        return [
            e
            for e in fresh
            if isinstance(e, ActivityScheduled)
            and e.name in self.activities
            and instance.is_pending(e.seq)
        ]

    async def _commit(
        self,
        progress: _Progress,
        instance: WorkflowInstance,
        events: list[Event],
        retries: dict[int, ActivityTaskSpec],
        *,
        keep: bool,
        next_seq: int,
    ) -> list[Event]:
        """Commit ``events``; with ``keep`` the lease is kept and the inbox handed back."""
        commit = build_commit(
            progress.lease,
            progress.history_length,
            progress.next_seq,
            next_seq,
            events,
            retries,
            keep_lease=self.lease if keep else None,
        )
        moved = await self._write_fenced(self.store.commit_workflow_task, commit)
        self.counters["commits"] += 1
        progress.history_length += len(events) + len(moved)
        progress.next_seq = next_seq
        return moved

    async def _write_fenced(self, write: Callable[[C], Awaitable[R]], request: C) -> R:
        """Run a fenced write, retrying store errors (a dropped connection, a restart)
        with backoff for as long as the lease lasts. Safe because the write is fenced:
        if a lost reply hid a success, the retry gets LeaseLost and changes nothing, and
        the work of the step is not thrown away over a blip."""
        delay = 0.05
        while True:
            try:
                return await write(request)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except Exception as exc:
                lease: Lease = request.lease
                if self.store.clock.now() + timedelta(seconds=delay) >= lease.expires_at:
                    raise
                self.counters["store_errors"] += 1
                log.warning(
                    "store write for %s failed, retrying in %.2fs: %r", lease.task_id, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- activity tasks --

    async def _activity_task(self, claim: ActivityTaskClaim) -> None:
        activity = self.activities.get(claim.activity_name)
        if activity is None:
            await self.store.release(claim.lease)
            return
        info = self._activity_info(
            claim.lease, claim.workflow_name, claim.activity_name, claim.seq, claim.attempt
        )
        keeper = _LeaseKeeper(self.store, claim.lease, self.lease)
        try:
            outcome = await self._attempt(activity, claim.input, keeper, info, claim.scheduled_at)
        finally:
            await keeper.close()
        keeper.check()
        now = self.store.clock.now()
        event = _resolution(claim.seq, claim.attempt, outcome, now)
        if event is None:
            assert outcome.retry_in is not None
            assert outcome.error is not None
            await self._write_fenced(
                self.store.retry_activity,
                ActivityRetry(
                    lease=claim.lease,
                    next_attempt=claim.attempt + 1,
                    visible_at=now + outcome.retry_in,
                    error=outcome.error,
                ),
            )
        else:
            assert isinstance(event, ActivityCompleted | ActivityFailedEvent)
            await self._write_fenced(
                self.store.complete_activity, ActivityResult(lease=claim.lease, event=event)
            )

    @staticmethod
    def _activity_info(
        lease: Lease, workflow_name: str, name: str, seq: int, attempt: int
    ) -> ActivityInfo:
        return ActivityInfo(
            workflow_id=lease.workflow_id,
            tenant_id=lease.tenant_id,
            workflow_name=workflow_name,
            activity_name=name,
            seq=seq,
            attempt=attempt,
        )

    async def _attempt(
        self,
        activity: Activity[Any, Any],
        payload: msgspec.Raw,
        keeper: _LeaseKeeper,
        info: ActivityInfo,
        scheduled_at: datetime | None = None,
    ) -> _Outcome:
        """Run one attempt; never raises for the activity's own failures.

        With ``schedule_to_close`` (counted from ``scheduled_at``, when the step was
        first scheduled): an attempt due after the deadline is not run, one still
        running at the deadline is cut, and a retry that would start past it is not
        made; each ends the step with a ScheduleToCloseTimeout error."""
        attempt = info.attempt
        what = f"activity {activity.name!r}"
        clock = self.store.clock
        deadline = None
        if activity.schedule_to_close is not None and scheduled_at is not None:
            deadline = scheduled_at + activity.schedule_to_close
            if clock.now() >= deadline:
                error = _schedule_to_close(activity, attempt - 1, None)
                return _Outcome(error=error)
        try:
            value = decode_payload(payload, activity.input_type, what=f"input of {what}")
        except PayloadError as exc:
            return _Outcome(error=ErrorInfo.from_exception(exc, attempts=attempt))
        state = _ActivityState(info)
        keeper.watch(state)
        token = _state.set(state)
        left = None if deadline is None else (deadline - clock.now()).total_seconds()
        try:
            if activity.heartbeat_timeout is not None:
                result = await _run_with_heartbeat_timeout(activity, value, state, what, left)
            elif activity.timeout is not None or left is not None:
                limit = activity.timeout.total_seconds() if activity.timeout else None
                cut_by_deadline = left is not None and (limit is None or left < limit)
                try:
                    result = await asyncio.wait_for(
                        activity.run(value), left if cut_by_deadline else limit
                    )
                except TimeoutError as exc:
                    if cut_by_deadline:
                        raise ScheduleToCloseTimeout(
                            f"{what} was not done within {activity.schedule_to_close} "
                            "of being scheduled; its running attempt was cut"
                        ) from exc
                    raise ActivityTimeout(
                        f"{what} did not finish within {activity.timeout}"
                    ) from exc
            else:
                result = await activity.run(value)
        except Exception as exc:
            error = ErrorInfo.from_exception(exc, attempts=attempt)
            if isinstance(exc, ScheduleToCloseTimeout):
                return _Outcome(error=error)
            if activity.retry.should_retry(exc, attempt):
                delay = activity.retry.delay(attempt)
                if deadline is not None and clock.now() + delay >= deadline:
                    return _Outcome(error=_schedule_to_close(activity, attempt, error))
                return _Outcome(error=error, retry_in=delay)
            return _Outcome(error=error)
        finally:
            _state.reset(token)
            keeper.unwatch(state)
        try:
            output = encode_payload(
                result,
                what=f"output of {what}",
                expected_type=activity.output_type,
                max_bytes=self.max_payload_bytes,
            )
        except PayloadError as exc:
            return _Outcome(error=ErrorInfo.from_exception(exc, attempts=attempt))
        return _Outcome(output=output)


def _schedule_to_close(
    activity: Activity[Any, Any], attempts: int, last: ErrorInfo | None
) -> ErrorInfo:
    """The error of a step whose schedule-to-close deadline passed between attempts."""
    message = f"activity {activity.name!r} was not done within {activity.schedule_to_close} "
    message += "of being scheduled"
    if last is not None:
        message += f"; no retry after attempt {attempts} failed with {last}"
    return ErrorInfo(type=ScheduleToCloseTimeout.__name__, message=message, attempts=attempts)


async def _run_with_heartbeat_timeout(
    activity: Activity[Any, Any],
    value: Any,
    state: _ActivityState,
    what: str,
    left: float | None = None,
) -> Any:
    """Run one attempt that must call flows.heartbeat() at least every
    ``heartbeat_timeout`` (and finish within ``timeout``, if set, and within ``left``
    seconds, the rest of its schedule-to-close): HeartbeatTimeout / ActivityTimeout /
    ScheduleToCloseTimeout otherwise. The first period starts when the attempt starts. A
    sync activity's thread cannot be stopped: its attempt fails, the thread runs on."""
    assert activity.heartbeat_timeout is not None
    period = activity.heartbeat_timeout.total_seconds()
    started = time.monotonic()
    deadline = None if activity.timeout is None else started + activity.timeout.total_seconds()
    cutoff = None if left is None else started + left
    task = asyncio.ensure_future(activity.run(value))
    try:
        while True:
            now = time.monotonic()
            wait = max(state.last_beat, started) + period - now
            for limit in (deadline, cutoff):
                if limit is not None:
                    wait = min(wait, limit - now)
            done, _ = await asyncio.wait({task}, timeout=max(wait, 0.0))
            if done:
                return task.result()
            now = time.monotonic()
            if cutoff is not None and now >= cutoff:
                raise ScheduleToCloseTimeout(
                    f"{what} was not done within {activity.schedule_to_close} "
                    "of being scheduled; its running attempt was cut"
                )
            if deadline is not None and now >= deadline:
                raise ActivityTimeout(f"{what} did not finish within {activity.timeout}")
            if now - max(state.last_beat, started) >= period:
                raise HeartbeatTimeout(
                    f"{what} sent no heartbeat within {activity.heartbeat_timeout}"
                )
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _DecisionError(Exception):
    """Replay or the decision raised unexpectedly (the cause); not the workflow's own
    exception, which fails the workflow."""


def _resolution(seq: int, attempt: int, outcome: _Outcome, now: Any) -> Event | None:
    """The event recording an attempt's outcome; None when it is to be retried."""
    if outcome.output is not None:
        return ActivityCompleted(seq=seq, output=outcome.output, attempt=attempt, at=now)
    if outcome.retry_in is not None:
        return None
    assert outcome.error is not None
    return ActivityFailedEvent(seq=seq, error=outcome.error, at=now)


def build_commit(
    lease: Lease,
    history_length: int,
    expected_next_seq: int,
    next_seq: int,
    events: list[Event],
    retries: dict[int, ActivityTaskSpec] | None = None,
    *,
    keep_lease: timedelta | None = None,
) -> WorkflowTaskCommit:
    """Turn the events a workflow task produced into the store writes that record them."""
    retries = retries or {}
    resolved = {e.seq for e in events if isinstance(e, ActivityCompleted | ActivityFailedEvent)}
    cancelled = {e.seq for e in events if isinstance(e, StepCancelled)}
    activity_tasks: list[ActivityTaskSpec] = []
    timers: list[TimerTaskSpec] = []
    new_seqs: set[int] = set()
    status = WorkflowStatus.RUNNING
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    for e in events:
        match e:
            case ActivityScheduled():
                new_seqs.add(e.seq)
                if e.seq in resolved or e.seq in cancelled:
                    continue
                activity_tasks.append(
                    retries.get(e.seq)
                    or ActivityTaskSpec(seq=e.seq, name=e.name, input=e.input, scheduled_at=e.at)
                )
            case TimerStarted():
                new_seqs.add(e.seq)
                if e.seq not in cancelled:
                    timers.append(TimerTaskSpec(seq=e.seq, fire_at=e.fire_at))
            case SignalWaitStarted():
                new_seqs.add(e.seq)
                if e.timeout_at is not None and e.seq not in cancelled:
                    timers.append(TimerTaskSpec(seq=e.seq, fire_at=e.timeout_at))
            case WorkflowCompleted():
                status, output = WorkflowStatus.COMPLETED, e.output
            case WorkflowFailedEvent():
                status, error = WorkflowStatus.FAILED, e.error
            case WorkflowCancelledEvent():
                status, output, error = WorkflowStatus.CANCELLED, e.output, e.error
            case _:
                pass
    return WorkflowTaskCommit(
        lease=lease,
        claimed_history_length=history_length,
        expected_next_seq=expected_next_seq,
        next_seq=next_seq,
        keep_lease=keep_lease,
        events=events,
        status=status,
        output=output,
        error=error,
        activity_tasks=activity_tasks,
        timers=timers,
        drop_seqs=sorted(cancelled - new_seqs),
    )


class _LeaseKeeper:
    """Extends a lease while the activities it watches heartbeat; relays cancellation."""

    def __init__(self, store: Store, lease: Lease, duration: timedelta) -> None:
        self.store, self.lease, self.duration = store, lease, duration
        self.states: set[_ActivityState] = set()
        self.lost: BaseException | None = None
        self.expires_at = lease.expires_at
        self._last_extend = time.monotonic()
        self._interval = max(duration.total_seconds() / 3, 0.01)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, state: _ActivityState) -> None:
        self.states.add(state)
        if self._task is None and self._timer is None:
            # Most activities end long before the first look: a timer handle is far
            # cheaper than a task that would only be cancelled.
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    def unwatch(self, state: _ActivityState) -> None:
        self.states.discard(state)

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLost(f"lease of task {self.lease.task_id} lost: {self.lost}")

    async def _loop(self) -> None:
        first = True
        while True:
            if not first:
                await asyncio.sleep(self._interval)
            first = False
            beat = any(s.last_beat > self._last_extend for s in self.states)
            if not beat:
                continue
            self._last_extend = time.monotonic()
            try:
                reply = await self.store.heartbeat(self.lease, self.duration)
            except LeaseLost as exc:
                self.lost = exc
                reply = None
            except Exception as exc:
                log.warning(
                    "heartbeat for %s failed: %r",
                    self.lease.task_id,
                    exc,
                    extra={"workflow_id": self.lease.workflow_id, "task_id": self.lease.task_id},
                )
                continue
            self.expires_at = reply.expires_at if reply is not None else self.expires_at
            if reply is None or reply.cancel_requested:
                for s in list(self.states):
                    with s.lock:
                        s.cancelled = True
            if reply is None:
                return

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
