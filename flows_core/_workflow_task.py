"""The workflow-task runner: replay, inline activities, commits, and the one failure
policy of workflow tasks.

Fast path: when a workflow task schedules activities this worker can run, it runs them
at once under the workflow task's lease and feeds their results back into the replayed
instance, so one commit records the schedule, the results and the next decision.

The failure policy. Every claim of a workflow task that does not end in its commit is a
counted attempt, whatever the reason: replay or the decision raised, workflow code held
the event loop longer than ``workflow_task_deadlock``, a store write failed, the commit
was refused, a CancelledError came out of workflow code or reached the worker's task
(``asyncio.timeout`` in workflow code does that), or the worker cut the task at
shutdown. The attempt is recorded with ``fail_workflow_task`` (the next claim counts on
from it) after a backoff, and on attempt ``max_workflow_task_attempts`` the workflow is
dead-lettered (PARKED, ``error.attempts`` = attempts). A lost lease and a crash are
counted by the store's next claim. Nothing is given back uncounted once code has run.
Parked at once, without retry: an ``Activation.park_error`` (NonDeterminismError,
IllegalAwaitError: a code fix is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ._activity_runner import ActivityRunner, LeaseKeeper, cancelled_from_outside
from ._children import INLINE_DELIVERIES, deliver_all, outbox_for, records_of
from ._commit import AttemptOutcome, build_commit, next_run, resolution, retry_spec
from ._definitions import Workflow
from ._errors import ErrorInfo, LeaseLost
from ._group_commit import group_writes
from ._limits import prioritized, runs_inline
from ._observe import Observer, TaskOutcome, TraceContext, WorkflowTask, trace_context_of
from ._registry import WorkflowRegistry
from ._replay import Activation, WorkflowInstance
from ._sharding import Sharder, StoreSharder
from ._sticky import CachedWorkflow, StickyCache
from .events import ActivityCompleted, ActivityScheduled, Event
from .store import (
    ActivityTaskSpec,
    Lease,
    OutboxMessage,
    Store,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

__all__ = ["BlockingWatchdog", "WorkflowTaskRunner"]

log = logging.getLogger("flows.worker")


class WorkflowTaskFailure(Exception):
    """Replay or the decision failed (the cause); not the workflow's own exception,
    which fails the workflow."""


class DeadlockDetected(Exception):
    """Workflow code held the event loop longer than the worker's
    ``workflow_task_deadlock`` (blocking calls such as ``time.sleep`` or synchronous
    I/O in workflow code; such work belongs in an activity)."""


@dataclass
class _Progress:
    """Where a workflow task stands: its lease and what has been committed so far."""

    lease: Lease
    workflow_name: str
    history_length: int
    next_seq: int
    run_number: int = 1
    published: bytes | None = None
    """The status stored on the row (as claimed, then as this task committed it)."""
    limited: bool = False
    """The workflow holds a ``max_running`` slot (given back when it ends)."""


class WorkflowTaskRunner:
    """Runs claimed workflow tasks for a Worker under the one failure policy."""

    def __init__(
        self,
        store: Store,
        registry: WorkflowRegistry,
        activities: ActivityRunner,
        *,
        lease: timedelta,
        max_inline_steps: int,
        max_payload_bytes: int,
        max_attempts: int,
        backoff: timedelta,
        counters: dict[str, int],
        worker_id: str,
        watchdog: BlockingWatchdog | None,
        observer: Observer | None = None,
        sticky: StickyCache | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.activities = activities
        self.lease = lease
        self.max_inline_steps = max_inline_steps
        self.max_payload_bytes = max_payload_bytes
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.counters = counters
        self.worker_id = worker_id
        self.watchdog = watchdog
        self.observer = observer if observer is not None else Observer()
        """Told of every workflow task (``workflow_task``, around all of it), terminal
        commits and dead letters."""
        self.observed = type(self.observer) is not Observer
        self.sticky = sticky
        """Suspended instances kept between tasks (None: every task replays)."""
        self.sharder: Sharder = StoreSharder(store)
        """Where child workflows go (the store's own placement, if it imposes one)."""
        self.outbox_left: Callable[[], None] = lambda: None
        """Called when a commit left messages for claims (beyond INLINE_DELIVERIES): the
        Worker then looks at the outbox at once."""

    async def run(self, claim: WorkflowTaskClaim) -> None:
        """Run a claimed workflow task to its commit, or count the attempt (see the
        module doc). Raises LeaseLost (the next claim counts), or CancelledError when
        the worker cuts it at shutdown (after counting it)."""
        cached = self.sticky.take(claim) if self.sticky is not None else None
        if cached is None and claim.history_from > 0:
            try:  # the claim continued an entry this worker no longer has
                claim = await self._with_whole_history(claim)
            except Exception as exc:
                await self.fail(claim, exc)
                return
        if not self.observed:
            await self._run_claim(claim, None, cached)
            return
        wf = claim.workflow
        context = _trace_context(claim, cached)
        if self.observer.wants_trace_context:
            self.activities.trace_contexts.remember(wf.tenant_id, wf.workflow_id, context)
        task = WorkflowTask(wf.name, wf.workflow_id, wf.tenant_id, claim.attempt, context)
        with self.observer.workflow_task(task):
            await self._run_claim(claim, task, cached)

    async def _with_whole_history(self, claim: WorkflowTaskClaim) -> WorkflowTaskClaim:
        """``claim`` with the whole history (read under its lease: nothing else appends)."""
        wf = claim.workflow
        history = await self.store.get_history(wf.tenant_id, wf.workflow_id)
        return msgspec.structs.replace(claim, history=history[: wf.history_length], history_from=0)

    async def _run_claim(
        self, claim: WorkflowTaskClaim, task: WorkflowTask | None, cached: CachedWorkflow | None
    ) -> None:
        """``run``, inside the observer's block when ``task`` is not None."""
        wf = claim.workflow
        definition = self.registry.get(wf.name, wf.version)
        if definition is None:
            if task is not None:
                task.outcome = TaskOutcome.RELEASED
            await self.store.release(claim.lease)  # not ours to run: nothing ran
            return
        if claim.attempt > self.max_attempts:
            ran = claim.attempt - 1
            await self.park(
                claim,
                ErrorInfo(
                    type="WorkflowTaskCrashed",
                    message=f"the workflow task was claimed {ran} times without completing "
                    "(each claimant crashed or lost its lease); not running it again",
                    attempts=ran,
                ),
                task,
            )
            return
        try:
            if definition.max_running is not None and not await self.activities.gate.admit_workflow(
                claim, definition.max_running
            ):
                if task is not None:
                    task.outcome = TaskOutcome.RELEASED
                return  # deferred, uncounted: it waits for a running slot
            await self._run(claim, definition, task, cached)
        except LeaseLost:
            raise
        except asyncio.CancelledError as exc:
            if self.activities.stopping() or cancelled_from_outside():
                await asyncio.shield(self.fail(claim, exc, task, cut=True))
                raise
            await self.fail(claim, exc, task)
        except Exception as exc:
            await self.fail(claim, exc, task)

    async def fail(
        self,
        claim: WorkflowTaskClaim,
        exc: BaseException,
        task: WorkflowTask | None = None,
        *,
        cut: bool = False,
    ) -> None:
        """Count a failed attempt: retried after a backoff (at once if the worker
        ``cut`` it at shutdown), dead-lettered on attempt ``max_attempts``. If the
        store cannot record it, the lease runs out and the next claim counts it."""
        cause = exc.__cause__ if isinstance(exc, WorkflowTaskFailure) and exc.__cause__ else exc
        self.counters["workflow_task_failures"] += 1
        wf_id = claim.workflow.workflow_id
        error = ErrorInfo.from_exception(cause, attempts=claim.attempt, traceback=True)
        extra = log_extra(self.worker_id, claim.lease, claim.attempt)
        try:
            if claim.attempt >= self.max_attempts:
                log.error(
                    "workflow %s: workflow task failed (attempt %d of %d): %s",
                    wf_id,
                    claim.attempt,
                    self.max_attempts,
                    error,
                    exc_info=cause,
                    extra=extra,
                )
                await self.park(claim, error, task)
                return
            if task is not None:
                task.outcome = TaskOutcome.RETRY
            delay = timedelta(0) if cut else self.backoff * min(2 ** (claim.attempt - 1), 64)
            log.warning(
                "workflow %s: workflow task failed (attempt %d of %d), retrying in %s: %s",
                wf_id,
                claim.attempt,
                self.max_attempts,
                delay,
                error,
                exc_info=cause,
                extra=extra,
            )
            await self.store.fail_workflow_task(claim.lease, error, self.store.clock.now() + delay)
        except Exception as failure:
            log.error(
                "workflow %s: could not record failed attempt %d (%r); the task is claimed "
                "again once its lease runs out, and that claim counts",
                wf_id,
                claim.attempt,
                failure,
                extra=extra,
            )

    async def park(
        self, claim: WorkflowTaskClaim, error: ErrorInfo, task: WorkflowTask | None = None
    ) -> None:
        """Dead-letter the workflow (PARKED with ``error``)."""
        self.counters["parked"] += 1
        log.error(
            "workflow %s dead-lettered: %s",
            claim.workflow.workflow_id,
            error,
            extra=log_extra(self.worker_id, claim.lease, claim.attempt),
        )
        await self.store.park_workflow(claim.lease, error)
        if task is not None:
            task.outcome = TaskOutcome.PARKED
        self.observer.workflow_parked(claim.workflow.name, claim.workflow.tenant_id, error)

    def _apply(self, instance: WorkflowInstance, events: list[Event], now: datetime) -> Activation:
        """``instance.apply`` under the deadlock watchdog; an unexpected exception, or
        code that held the loop too long, becomes a WorkflowTaskFailure."""
        watchdog = self.watchdog
        started = time.monotonic()
        try:
            with watchdog.watch(instance.workflow_id) if watchdog else contextlib.nullcontext():
                activation = instance.apply(events, now)
        except Exception as exc:
            raise WorkflowTaskFailure("workflow task failed") from exc
        held = time.monotonic() - started
        if watchdog is not None and held > watchdog.threshold:
            raise WorkflowTaskFailure("workflow task failed") from DeadlockDetected(
                f"workflow code held the event loop for {held:.1f}s, more than the worker's "
                f"workflow_task_deadlock of {watchdog.threshold}s: it blocks every workflow "
                "on this worker. Move blocking calls (time.sleep, synchronous I/O, long "
                "computations) into an activity, and use ctx.sleep to wait"
            )
        return activation

    async def _run(
        self,
        claim: WorkflowTaskClaim,
        definition: Workflow[Any, Any],
        task: WorkflowTask | None,
        cached: CachedWorkflow | None = None,
    ) -> None:
        wf = claim.workflow
        clock = self.store.clock
        if cached is not None and cached.instance.definition is definition:
            instance = cached.instance  # sticky: claim.history is what came after its own
        else:
            instance = WorkflowInstance(definition, max_payload_bytes=self.max_payload_bytes)
            instance.workflow_id = wf.workflow_id  # for the watchdog's log before the start
            if claim.history_from > 0:
                claim = await self._with_whole_history(claim)
        activation = self._apply(instance, claim.history, clock.now())
        progress = _Progress(
            claim.lease,
            wf.name,
            claim.history_from + len(claim.history),
            wf.next_seq,
            wf.run_number,
            None if wf.status_value is None else bytes(wf.status_value),
            limited=definition.max_running is not None,
        )
        pending: list[Event] = list(activation.new_events)
        fresh: list[Event] = list(activation.new_events)
        settled = 0
        """How much of ``pending`` precedes the last activation (recorded even if it parks)."""
        retries: dict[int, ActivityTaskSpec] = {}
        budget = self.max_inline_steps
        keeper = LeaseKeeper(self.store, claim.lease, self.lease)
        try:
            while activation.park_error is None and budget > 0:
                inline = self._inline_candidates(instance, fresh)[:budget]
                if len(inline) > 1:
                    # Parallel transactional steps take the queue: each its own
                    # transaction, fenced by its own task's lease.
                    inline = [e for e in inline if not self._transactional(e)]
                if not inline:
                    break
                split = pending.index(inline[0])
                if split > 0:
                    # Record what came before these activities first, keeping the lease,
                    # so a crash during them repeats nothing that had finished.
                    moved = await self._commit(
                        progress,
                        pending[:split],
                        retries,
                        keep=True,
                        next_seq=inline[0].seq,
                        instance=instance,
                    )
                    pending, retries = pending[split:], {}
                    if moved:
                        activation = self._apply(instance, moved, clock.now())
                        settled = len(pending)
                        pending += activation.new_events
                        fresh = activation.new_events
                        continue
                inline, held = await self._take_slots(claim, inline)
                if not inline:
                    break
                budget -= len(inline)
                self.counters["inline_activities"] += len(inline)
                try:
                    if self._transactional(inline[0]):
                        outcome, recorded = await self._run_transactional(
                            claim, progress, instance, pending, retries, inline[0], keeper, task
                        )
                        keeper.check()
                        if recorded:
                            # Its transaction recorded everything pending and its result.
                            activation = self._apply(instance, recorded, clock.now())
                            pending, retries, settled = list(activation.new_events), {}, 0
                            fresh = activation.new_events
                            continue
                        outcomes = [outcome]
                    else:
                        outcomes = await self._run_inline(claim, inline, keeper, task)
                finally:
                    await self.activities.gate.leave(held)
                keeper.check()
                now = clock.now()
                resolutions: list[Event] = []
                for scheduled, outcome in zip(inline, outcomes, strict=True):
                    event = resolution(scheduled.seq, 1, outcome, now)
                    if event is not None:
                        resolutions.append(event)
                    else:
                        retries[scheduled.seq] = retry_spec(scheduled, 1, outcome, now)
                if not resolutions:
                    break
                activation = self._apply(instance, resolutions, now)
                pending += resolutions
                settled = len(pending)
                pending += activation.new_events
                fresh = activation.new_events
        finally:
            await keeper.close()
        error = activation.park_error
        if error is not None:
            if settled:
                # Results of activities that ran inline before the code went wrong are
                # recorded first, so a retry after the fix does not run them again.
                done = pending[:settled]
                await self._commit(
                    progress,
                    done,
                    retries,
                    keep=True,
                    next_seq=_next_seq(done, progress),
                    instance=instance,
                )
            await self.park(claim, ErrorInfo.from_exception(error, attempts=claim.attempt), task)
            return
        await self._commit(
            progress, pending, retries, keep=False, next_seq=instance.next_seq, instance=instance
        )
        if self.sticky is not None and not instance.finished:
            context = _trace_context(claim, cached)
            self.sticky.keep(claim, instance, progress.history_length, context)

    async def _run_inline(
        self,
        claim: WorkflowTaskClaim,
        inline: list[ActivityScheduled],
        keeper: LeaseKeeper,
        task: WorkflowTask | None,
    ) -> list[AttemptOutcome]:
        """Attempt 1 of each just-scheduled step, at most ``concurrency`` at once (their
        coroutines are made here, inside the observer's workflow-task block: its span
        is their parent)."""
        wf = claim.workflow
        runner = self.activities
        context = None if task is None else task.trace_context
        attempts = [
            runner.attempt(
                runner.activities[e.name],
                e.input,
                keeper,
                runner.info(claim.lease, wf.name, e.name, e.seq, 1),
                e.at,
                inline=True,
                trace_context=context,
            )
            for e in inline
        ]
        if len(attempts) == 1:  # the common case runs in this task: no task to create
            return [await attempts[0]]
        return await _all(attempts)

    def _transactional(self, scheduled: ActivityScheduled) -> bool:
        return self.activities.activities[scheduled.name].transactional

    async def _run_transactional(
        self,
        claim: WorkflowTaskClaim,
        progress: _Progress,
        instance: WorkflowInstance,
        pending: list[Event],
        retries: dict[int, ActivityTaskSpec],
        scheduled: ActivityScheduled,
        keeper: LeaseKeeper,
        task: WorkflowTask | None,
    ) -> tuple[AttemptOutcome, list[Event]]:
        """Attempt 1 of a transactional step run inline. On success its transaction
        committed ``pending`` and the step's ActivityCompleted, keeping the workflow
        task's lease (fenced by it); returns that event and the inbox events the commit
        moved, to apply in that order. Else returns [] and the outcome to handle as any
        inline attempt's (nothing was written)."""
        wf = claim.workflow
        runner = self.activities
        written: list[Event] = []
        outbox: list[OutboxMessage] = []
        lease_for = self.lease

        def record(output: msgspec.Raw) -> WorkflowTaskCommit:
            done = ActivityCompleted(
                seq=scheduled.seq, output=output, attempt=1, at=self.store.clock.now()
            )
            written[:] = [*pending, done]
            outbox[:] = outbox_for(written, instance, progress.lease, self.sharder, lease_for)
            return build_commit(
                progress.lease,
                progress.history_length,
                progress.next_seq,
                instance.next_seq,
                written,
                retries,
                keep_lease=lease_for,
                outbox=outbox,
            )

        outcome = await runner.attempt(
            runner.activities[scheduled.name],
            scheduled.input,
            keeper,
            runner.info(claim.lease, wf.name, scheduled.name, scheduled.seq, 1),
            scheduled.at,
            inline=True,
            trace_context=None if task is None else task.trace_context,
            record=record,
        )
        if outcome.recorded is None:
            return outcome, []
        await self._deliver(progress.lease, outbox)
        self.counters["commits"] += 1
        moved = outcome.recorded
        progress.history_length += len(written) + len(moved)
        progress.next_seq = instance.next_seq
        return outcome, [written[-1], *moved]

    async def _take_slots(
        self, claim: WorkflowTaskClaim, inline: list[ActivityScheduled]
    ) -> tuple[list[ActivityScheduled], list[Any]]:
        """The candidates that may run inline now, and the slots taken for them: a step
        with a concurrency limit runs inline only with a slot (taken under the workflow
        task's lease, one per step); without one it is left to the queue."""
        activities = self.activities.activities
        if all(activities[e.name].limits is None for e in inline):
            return inline, []
        admitted: list[ActivityScheduled] = []
        held: list[Any] = []
        try:
            for e in inline:
                act = activities[e.name]
                if act.limits is None:
                    admitted.append(e)
                    continue
                gate = self.activities.gate
                slot = await gate.admit_inline(
                    claim.lease, e.name, e.seq, e.input, act.limits, act.input_type
                )
                if slot is not None:
                    admitted.append(e)
                    held.append(slot)
        except BaseException:
            await self.activities.gate.leave(held)
            raise
        return admitted, held

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
            and e.name in self.activities.activities
            and runs_inline(self.activities.activities[e.name].limits)
            and instance.is_pending(e.seq)
        ]

    async def _commit(
        self,
        progress: _Progress,
        events: list[Event],
        retries: dict[int, ActivityTaskSpec],
        *,
        keep: bool,
        next_seq: int,
        instance: WorkflowInstance,
    ) -> list[Event]:
        """Commit ``events``; with ``keep`` the lease is kept and the inbox handed back.
        Messages to other workflows (child workflows) go into the outbox in the same
        commit and are delivered from here at once (see flows_core._children).
        The status the code published goes with it if it changed; the run's end by
        continue-as-new goes with the final commit."""
        outbox = outbox_for(events, instance, progress.lease, self.sharder, self.lease)
        published = instance.published
        if published is not None and bytes(published) == progress.published:
            published = None
        continued = None
        if not keep and events:
            continued = next_run(instance, progress.run_number, events[-1])
        commit = build_commit(
            progress.lease,
            progress.history_length,
            progress.next_seq,
            next_seq,
            events,
            retries,
            keep_lease=self.lease if keep else None,
            outbox=outbox,
            status_value=published,
            continue_as_new=continued,
        )
        commit = prioritized(commit)
        write = group_writes(self.store).commit_workflow_task
        moved = await self.activities.write_fenced(write, commit)
        await self._deliver(progress.lease, outbox)
        self.counters["commits"] += 1
        if commit.status is not WorkflowStatus.RUNNING:  # once: the write is fenced
            self.observer.workflow_finished(
                progress.workflow_name, progress.lease.tenant_id, commit.status
            )
            if progress.limited:
                await self.activities.gate.workflow_ended(progress.lease, progress.workflow_name)
        progress.history_length += len(events) + len(moved)
        progress.next_seq = next_seq
        if published is not None:
            progress.published = bytes(published)

        return moved

    async def _deliver(self, lease: Lease, outbox: list[OutboxMessage]) -> None:
        """Deliver the first messages a commit just wrote (the rest go to claims)."""
        if not outbox:
            return
        if len(outbox) > INLINE_DELIVERIES:
            self.outbox_left()
        inline = records_of(lease, outbox[:INLINE_DELIVERIES])
        self.counters["outbox_delivered"] += await deliver_all(self.store, inline)


def _trace_context(claim: WorkflowTaskClaim, cached: CachedWorkflow | None) -> TraceContext | None:
    """The trace context stored with the workflow: in its WorkflowStarted (the claim's
    first event when it has the whole history), else with its cached instance."""
    if cached is not None:
        return cached.trace_context
    return trace_context_of(claim.history)


def _next_seq(events: list[Event], progress: _Progress) -> int:
    """The step seq that follows ``events`` (commands carry increasing seqs)."""
    return max([progress.next_seq, *(e.seq + 1 for e in events if hasattr(e, "seq"))])


async def _all(attempts: list[Coroutine[Any, Any, AttemptOutcome]]) -> list[AttemptOutcome]:
    """Run the attempts as tasks and wait for all of them. Unlike ``asyncio.gather``,
    a cancellation of the waiting task reaches the attempts only as an explicit cancel,
    and waits for them to end."""
    tasks = [asyncio.ensure_future(a) for a in attempts]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    return [t.result() for t in tasks]


def log_extra(worker_id: str, lease: Lease, attempt: int) -> dict[str, Any]:
    """The ``extra=`` of task log records: structured fields for log handlers."""
    return {
        "worker_id": worker_id,
        "workflow_id": lease.workflow_id,
        "tenant_id": lease.tenant_id,
        "shard_key": lease.shard_key,
        "task_id": lease.task_id,
        "attempt": attempt,
    }


class BlockingWatchdog:
    """Logs workflow code that holds the event loop longer than ``threshold`` seconds,
    with its workflow id and the stack of the blocked code, as it happens (a thread
    reads ``sys._current_frames()`` while the replay step runs)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._watched: tuple[int, float, str, int] | None = None
        """(generation, started, workflow id, thread id) of the replay step running."""
        self._generation = 0
        self._reported = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, workflow_id: str) -> Iterator[None]:
        if self._thread is None:
            self.start()
        self._generation += 1
        self._watched = (self._generation, time.monotonic(), workflow_id, threading.get_ident())
        try:
            yield
        finally:
            self._watched = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flows-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=1.0)

    def _run(self) -> None:
        period = min(max(self.threshold / 4, 0.01), 0.5)
        while not self._stop.wait(period):
            watched = self._watched
            if watched is None or watched[0] == self._reported:
                continue
            generation, started, workflow_id, thread_id = watched
            held = time.monotonic() - started
            if held < self.threshold:
                continue
            self._reported = generation
            frame = sys._current_frames().get(thread_id)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(none)"
            log.warning(
                "workflow %s: workflow code has held the event loop for %.1fs (more than "
                "workflow_task_deadlock=%ss); every workflow on this worker waits. Stack "
                "of the blocked code:\n%s",
                workflow_id,
                held,
                self.threshold,
                stack,
                extra={"workflow_id": workflow_id},
            )
