"""The worker: claims tasks and runs them in a bounded number of slots.

This module is the poll loop and the slots. The workflow-task runner (replay, inline
activities, commits, the one failure policy) is flows_core._workflow_task, the activity
runner (attempts, timeouts, the lease keeper) flows_core._activity_runner, and the pure
commit plan flows_core._commit.

Eager start and backlog. An Engine of the same process that shares an ``EagerStarts``
with this worker (``eager=``) hands a workflow it starts straight to it when it serves
the workflow and has room, and the store offers ``start_workflow_leased`` (an optional
capability): the workflow task is inserted already leased to the worker, so there is no
claim and no notification. Room is the free slots plus a small backlog of leased tasks
waiting for a slot (``backlog``), which claims also fill (one claim statement then
serves several tasks); a task waiting there longer than ``backlog_wait`` is released to
the queue for any worker to take (uncounted: none of its code ran).

Dead letters. A workflow task that cannot make progress is dead-lettered (status
PARKED, ``error.attempts`` = attempts of the task) instead of being retried forever:
at once on an error that needs a code fix (NonDeterminismError, IllegalAwaitError);
after ``max_workflow_task_attempts`` counted attempts (see flows_core._workflow_task for
what counts); and when the task keeps killing its claimant (a poison task: the lease
expires and it is claimed again and again), the claim that exceeds
``max_workflow_task_attempts`` dead-letters it without running it (error type
``WorkflowTaskCrashed``). ``Engine.retry`` puts a dead letter back to running after a
code fix, ``Engine.rerun`` starts a new workflow with its input.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import uuid6

from ._activity_runner import ActivityRunner, cancelled_from_outside, retrieve
from ._children import deliver_all, outbox_of
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES
from ._commit import build_commit
from ._debounce import Debouncer
from ._definitions import Activity, Workflow
from ._eager import EagerStarts
from ._errors import InvalidArgument, LeaseLost
from ._limits import workflows_with_limits
from ._observe import Observer, TraceContexts, run_sampler
from ._registry import WorkflowRegistry
from ._retention import prune_store
from ._schedules import Scheduler
from ._sharding import Sharder, StoreSharder
from ._sticky import StickyCache
from ._workflow_task import BlockingWatchdog, WorkflowTaskRunner, log_extra
from .store import (
    ClaimedTask,
    ClaimRequest,
    DebounceStore,
    NewWorkflow,
    ScheduleStore,
    Store,
    TransactionalActivities,
    WorkerInfo,
    WorkflowTaskClaim,
)

__all__ = ["Worker", "WorkerStats", "build_commit"]

log = logging.getLogger("flows.worker")

REGISTER_EVERY = 10.0
TIMER_CHECK_EVERY = 0.05
SCHEDULE_CHECK_EVERY = 1.0
SCHEDULE_BATCH = 20
SCHEDULE_FAILURE_PAUSE = 5.0
OUTBOX_CHECK_EVERY = 1.0
"""How often a worker looks for outbox messages left undelivered (their sender's worker
crashed or failed to deliver them; see flows_core._children)."""


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
    sticky_cached: int = 0
    """Suspended workflows this worker holds in its sticky cache now."""


class Worker:
    """Runs workflows and activities from a store until stopped.

    ``concurrency`` bounds the tasks processed at once and the activity attempts running
    at once, inline ones included; ``poll_interval`` is the fallback wake-up when no
    notification arrives; ``lease`` is how long a claimed task is reserved without a
    heartbeat; ``max_inline_steps`` bounds the activities one workflow task runs inline
    before committing. A workflow task that fails is retried after
    ``workflow_task_backoff`` (doubling, at most 64x) and dead-lettered once it has been
    tried ``max_workflow_task_attempts`` times (see flows_core._workflow_task for what
    counts). Workflow code that holds the event loop longer than
    ``workflow_task_deadlock`` seconds is logged with its stack as it happens, and its
    workflow task fails as a counted attempt (None: no watchdog). ``eager``: the
    ``EagerStarts`` shared with the Engines of this process (eager start; None: none).
    ``observer``: told of every workflow task, activity attempt, lease loss, store error
    and dead letter, and asked to sample the store if it wants (see flows_observe);
    the default does nothing. ``schedules``: fire the due ticks of durable schedules
    (``Engine.schedule``) of this worker's shard keys, on stores that have them;
    ``sharder`` places the workflows they start (default: the store's, else
    ``HashSharder()``, as ``Engine`` does). ``sticky_cache_size``: how many suspended
    workflows the worker keeps in memory between their workflow tasks (the next task
    reads only the events after what it holds and replays nothing; 0: every task
    replays the whole history); ``sticky_max_events`` bounds the history events they
    hold together. ``transaction_pool``: the application's psycopg pool
    (``AsyncConnectionPool`` for async transactional activities, ``ConnectionPool`` for
    sync ones, or a tuple of both) that transactional activities take their connection
    from; it must reach the store's database (checked when ``run`` starts). None: the
    store's own connections.
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
        workflow_task_deadlock: float | None = 2.0,
        eager: EagerStarts | None = None,
        observer: Observer | None = None,
        schedules: bool = True,
        sharder: Sharder | None = None,
        sticky_cache_size: int = 1000,
        sticky_max_events: int = 250_000,
        transaction_pool: Any = None,
    ) -> None:
        if concurrency < 1:
            raise InvalidArgument("Worker concurrency must be at least 1")
        if poll_interval <= 0:
            raise InvalidArgument("Worker poll_interval must be positive")
        if lease <= timedelta(0):
            raise InvalidArgument("Worker lease must be positive")
        if max_workflow_task_attempts < 1:
            raise InvalidArgument("Worker max_workflow_task_attempts must be at least 1")
        if workflow_task_deadlock is not None and not workflow_task_deadlock > 0:
            raise InvalidArgument("Worker workflow_task_deadlock must be positive or None")
        if sticky_cache_size < 0 or sticky_max_events < 0:
            raise InvalidArgument(
                "Worker sticky_cache_size and sticky_max_events must not be negative"
            )
        self.store = store
        self.observer = observer if observer is not None else Observer()
        if not isinstance(self.observer, Observer):
            raise InvalidArgument(f"Worker observer must be a flows.Observer, got {observer!r}")
        self._sampler: asyncio.Task[None] | None = None
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
        transactional = sorted(a.name for a in self.activities.values() if a.transactional)
        if transactional and not isinstance(store, TransactionalActivities):
            raise InvalidArgument(
                f"activities {transactional} are transactional but "
                f"{type(store).__name__} cannot run transactional activities (memory, "
                "PostgreSQL and Citus stores can)"
            )
        if transaction_pool is not None and not isinstance(store, TransactionalActivities):
            raise InvalidArgument(
                f"transaction_pool= was given but {type(store).__name__} cannot run "
                "transactional activities"
            )
        self.transaction_pool = transaction_pool
        """The application's connection pool transactional activities use (checked at
        ``run()``: same database as the store), or None for the store's own."""
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
        self._cutting = False
        """Set while the worker cancels its in-flight work at shutdown (its own
        cancellation, as opposed to a CancelledError from user code)."""
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = True
        self._timers_at = 0.0
        self._schedules_at = 0.0
        self._schedules_failed_until = 0.0
        self._outbox_at = 0.0
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
            "activity_task_failures": 0,
            "transaction_conflicts": 0,
            "outbox_delivered": 0,
        }
        self.eager = eager
        self._activity_runner = ActivityRunner(
            store,
            self.activities,
            lease=lease,
            max_payload_bytes=max_payload_bytes,
            concurrency=concurrency,
            counters=self.counters,
            worker_id=self.worker_id,
            stopping=self._cutting_work,
            observer=self.observer,
            trace_contexts=TraceContexts(),
            transaction_pool=transaction_pool,
        )
        self._scheduler: Scheduler | None = None
        if schedules and isinstance(store, ScheduleStore):
            self._scheduler = Scheduler(
                store,
                store.clock,
                sharder or StoreSharder(store),
                lease=lease,
                started=self.observer.workflow_started,
            )
        self._debouncer: Debouncer | None = None
        if schedules and isinstance(store, DebounceStore):
            self._debouncer = Debouncer(
                store,
                store.clock,
                sharder or StoreSharder(store),
                lease=lease,
                started=self.observer.workflow_started,
            )
        self._debounce_at = 0.0
        self._debounce_failed_until = 0.0
        for act in self.activities.values():
            if act.limits is not None:
                self._activity_runner.gate.check_supported(f"activity {act.name!r}")
        for wf_def in workflows_with_limits(self.registry):
            self._activity_runner.gate.check_supported(f"workflow {wf_def.name!r}")
        self._watchdog = (
            None if workflow_task_deadlock is None else BlockingWatchdog(workflow_task_deadlock)
        )
        self.sticky = StickyCache(sticky_cache_size, sticky_max_events, self.counters)
        """Suspended workflow instances kept between their tasks (see flows_core._sticky);
        its hits, misses and evictions are counted in ``counters``."""
        self._workflow_tasks = WorkflowTaskRunner(
            store,
            self.registry,
            self._activity_runner,
            lease=lease,
            max_inline_steps=max_inline_steps,
            max_payload_bytes=max_payload_bytes,
            max_attempts=max_workflow_task_attempts,
            backoff=workflow_task_backoff,
            counters=self.counters,
            worker_id=self.worker_id,
            watchdog=self._watchdog,
            observer=self.observer,
            sticky=self.sticky if self.sticky.enabled else None,
        )
        self._workflow_tasks.outbox_left = self._look_at_outbox

    def _look_at_outbox(self) -> None:
        self._outbox_at = 0.0

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
        if self.transaction_pool is not None and isinstance(self.store, TransactionalActivities):
            await self.store.check_transaction_pool(self.transaction_pool)
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        backoff = 0.05
        registered_at = 0.0
        self._start_pruner()
        if self.observer.sample_interval is not None:
            self._sampler = asyncio.ensure_future(
                run_sampler(self.observer, self.store, self.shard_keys, stop=self._stopping)
            )
        self._cutting = False
        self._loop = asyncio.get_running_loop()
        if self._watchdog is not None:
            self._watchdog.start()
        if self.eager is not None:
            self.eager.add(self)
        try:
            while not self._stopping.is_set():
                if cancelled_from_outside():
                    # A cancel of this task that an await below swallowed (CPython
                    # 3.11's wait_for returns a result that arrived with the cancel,
                    # bpo-42130; drivers wait with it) would leave run() going forever.
                    raise asyncio.CancelledError
                try:
                    if time.monotonic() - registered_at > REGISTER_EVERY:
                        await self.store.register_worker(self._info())
                        registered_at = time.monotonic()
                    progressed = await self.poll_once()
                    backoff = 0.05
                    if not progressed:
                        # reads the store too (next_due): its failures are poll failures
                        await self._idle_wait()
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # a store outage (StoreUnavailable, StoreError, a connection or OS
                    # error) or any other failure of a poll: back off, go on
                    self.counters["store_errors"] += 1
                    self.observer.store_error("poll")
                    log.warning(
                        "worker %s: store error, retrying in %.2fs: %r",
                        self.worker_id,
                        backoff,
                        exc,
                        extra={"worker_id": self.worker_id},
                    )
                    await self._sleep_or_stop(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            self._stopping.set()  # cancelled from outside: no longer running either
            if self.eager is not None:
                self.eager.remove(self)
            await self._stop_pruner()
            await self._stop_sampler()
            await self._release_backlog()
            await self._drain()
            with contextlib.suppress(Exception):
                await self.store.unregister_worker(self.worker_id)
            if self._watchdog is not None:
                self._watchdog.stop()
            self._done.set()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop claiming; let in-flight work finish within the grace period, then
        cancel it: each cut task is recorded as a failed attempt and is claimable again
        at once (an activity after its retry delay); leased tasks still waiting for a
        slot are released uncounted."""
        if grace_period is not None:
            self.grace_period = grace_period
        if self._stopping is None or self._done is None:
            return
        self._stopping.set()
        await self._done.wait()

    def _cutting_work(self) -> bool:
        return self._cutting

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
        if self._scheduler is not None and time.monotonic() >= self._schedules_failed_until:
            try:
                ticks = await self._scheduler.store.next_schedule_due(self.shard_keys)
            except Exception as exc:
                ticks = None
                self._scheduler_failed(exc)
            if ticks is not None and (due is None or ticks < due):
                due = ticks
        if self._debouncer is not None and time.monotonic() >= self._debounce_failed_until:
            try:
                closes = await self._debouncer.store.next_pending_start_due(self.shard_keys)
            except Exception as exc:
                closes = None
                self._debouncer_failed(exc)
            if closes is not None and (due is None or closes < due):
                due = closes
        if due is not None:
            timeout = max(0.0, min(timeout, (due - self.store.clock.now()).total_seconds()))
        if timeout <= 0:
            self._timers_at = self._schedules_at = self._debounce_at = 0.0
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
            self._timers_at = self._schedules_at = self._debounce_at = 0.0

    async def _drain(self) -> None:
        if not self._inflight:
            return
        _done, pending = await asyncio.wait(self._inflight, timeout=self.grace_period)
        if pending:
            self._cutting = True
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

    async def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

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
            sticky_cached=len(self.sticky),
        )

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
        if self._scheduler is not None and time.monotonic() >= max(
            self._schedules_at, self._schedules_failed_until
        ):
            try:
                ticked = await self._scheduler.run_due(self.shard_keys, SCHEDULE_BATCH)
            except Exception as exc:
                ticked = 0
                self._scheduler_failed(exc)
            wait = 0.0 if ticked >= SCHEDULE_BATCH else SCHEDULE_CHECK_EVERY
            self._schedules_at = time.monotonic() + wait
            fired += ticked
        if self._debouncer is not None and time.monotonic() >= max(
            self._debounce_at, self._debounce_failed_until
        ):
            try:
                debounced = await self._debouncer.run_due(self.shard_keys, SCHEDULE_BATCH)
            except Exception as exc:
                debounced = 0
                self._debouncer_failed(exc)
            wait = 0.0 if debounced >= SCHEDULE_BATCH else SCHEDULE_CHECK_EVERY
            self._debounce_at = time.monotonic() + wait
            fired += debounced
        if time.monotonic() >= self._outbox_at:
            fired += await self.deliver_outbox()
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
                cached=self.sticky.hints(),
            )
        )
        self.sticky.pin(claimed)
        claimed = await self._isolate_suspects(claimed)
        self._idle = not claimed and not fired
        for task in claimed[:free]:
            self._spawn(task)
        for task in claimed[free:]:
            self._wait_for_slot(task)
        return bool(claimed or fired)

    async def deliver_outbox(self, limit: int = 100) -> int:
        """Deliver outbox messages left over in this worker's shards (their delay
        passed); returns how many were delivered. Looked at every OUTBOX_CHECK_EVERY
        seconds, at once again while it finds some."""
        outbox = outbox_of(self.store)
        if outbox is None:
            self._outbox_at = float("inf")
            return 0
        records = await outbox.claim_outbox(self.shard_keys, limit, self.lease)
        delivered = await deliver_all(self.store, records)
        self.counters["outbox_delivered"] += delivered
        self._outbox_at = time.monotonic() + (0.0 if records else OUTBOX_CHECK_EVERY)
        return delivered

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
            self.sticky.unpin(c)
            await self.store.release(c.lease)
        return keep

    def _scheduler_failed(self, exc: Exception) -> None:
        """A failing scheduler (a store outage, a schema not yet migrated to schedules)
        never stops the worker from running workflows: it is left alone for a while."""
        self.counters["store_errors"] += 1
        self.observer.store_error("schedules")
        self._schedules_failed_until = time.monotonic() + SCHEDULE_FAILURE_PAUSE
        log.warning(
            "worker %s: firing schedules failed, retrying in %.0fs: %r",
            self.worker_id,
            SCHEDULE_FAILURE_PAUSE,
            exc,
            extra={"worker_id": self.worker_id},
        )

    def _debouncer_failed(self, exc: Exception) -> None:
        """As ``_scheduler_failed``, for firing debounced starts (flows_core._debounce)."""
        self.counters["store_errors"] += 1
        self.observer.store_error("debounce")
        self._debounce_failed_until = time.monotonic() + SCHEDULE_FAILURE_PAUSE
        log.warning(
            "worker %s: firing debounced starts failed, retrying in %.0fs: %r",
            self.worker_id,
            SCHEDULE_FAILURE_PAUSE,
            exc,
            extra={"worker_id": self.worker_id},
        )

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
        self.sticky.unpin(claim)
        task = asyncio.ensure_future(self.store.release(claim.lease))
        task.add_done_callback(retrieve)

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
            self.sticky.unpin(claim)
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
                await self._workflow_tasks.run(claim)
            else:
                self.counters["activity_tasks"] += 1
                await self._activity_runner.run_task(claim)
        except LeaseLost:
            # the store counts the next claim of a workflow task
            self.counters["lease_lost"] += 1
            if isinstance(claim, WorkflowTaskClaim):
                self.observer.lease_lost("workflow_task", claim.workflow.name)
            else:
                self.observer.lease_lost("activity_task", claim.workflow_name)
            log.info(
                "worker %s lost the lease of %s (workflow %s)",
                self.worker_id,
                lease.task_id,
                lease.workflow_id,
                extra=log_extra(self.worker_id, lease, claim.attempt),
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # the runners count every failure themselves; this is a failure of that
            # accounting: the lease runs out and the next claim counts it
            log.exception(
                "worker %s failed on task %s of workflow %s; leaving it to its lease",
                self.worker_id,
                lease.task_id,
                lease.workflow_id,
                extra=log_extra(self.worker_id, lease, claim.attempt),
            )
