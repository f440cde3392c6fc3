"""The activity runner: one attempt of an activity (input, timeouts, heartbeat timeout,
retry decision), the queue path of activity tasks, the lease keeper, fenced writes.

Failure policy for activities. Every attempt is counted and ends in an outcome:
whatever the activity raises (any exception, ``asyncio.CancelledError`` included, and
exceptions whose ``str()`` raises) is a failed attempt that follows the activity's
retry policy. So does a failure of the runner itself or of the store around a queued
attempt (``fail_task``). Only the worker's own cancellation at shutdown (its grace
period is over) is not the activity's failure; the attempt is still counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar

import msgspec

from ._activity_context import ActivityInfo, _ActivityState, _state
from ._codec import decode_payload, encode_payload
from ._commit import AttemptOutcome, resolution
from ._definitions import Activity
from ._errors import (
    ActivityTimeout,
    ErrorInfo,
    FlowsError,
    HeartbeatTimeout,
    LeaseLost,
    PayloadError,
    ScheduleToCloseTimeout,
    StoreError,
    TransactionConflict,
)
from ._group_commit import group_writes
from ._limits import LimitGate
from ._observe import ActivityAttempt, Observer, TraceContext, TraceContexts
from .events import ActivityCompleted
from .store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    Lease,
    Store,
    TransactionalActivities,
    TransactionWrite,
    WorkflowTaskCommit,
)

__all__ = [
    "TRANSACTION_CONFLICT_RETRIES",
    "ActivityRunner",
    "LeaseKeeper",
    "Recorder",
    "cancelled_from_outside",
    "is_store_outage",
]

TRANSACTION_CONFLICT_RETRIES: Final = 5
"""How many times a transactional activity's transaction that hit a serialization
failure or deadlock (``TransactionConflict``) runs again at once (after 10, 20, 40, 80,
160 ms, jittered) before the conflict counts as a failed attempt."""

Recorder = Callable[[msgspec.Raw], TransactionWrite]
"""What a transactional attempt writes in its transaction, given its encoded output."""

log = logging.getLogger("flows.worker")

C = TypeVar("C", ActivityResult, ActivityRetry, WorkflowTaskCommit)
R = TypeVar("R")


def is_store_outage(exc: BaseException) -> bool:
    """A store failure worth retrying a fenced write for: ``flows.StoreError`` (and
    ``StoreUnavailable``), connection errors and OS errors, and any exception that is
    not a Flows error (a driver's own exception). LeaseLost and the other Flows errors
    (a payload or argument the store refuses) would fail the same way again."""
    if isinstance(exc, StoreError | ConnectionError | OSError):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, FlowsError)


def cancelled_from_outside() -> bool:
    """True when the current task itself was asked to cancel (``Worker.stop`` cutting
    work, the application cancelling ``Worker.run``, the loop shutting down): the
    CancelledError is then the worker's own and must propagate. User code that lets a
    CancelledError escape raises it without any cancel request of this task: that is a
    failed attempt (workflow code cannot cancel: asyncio is refused there)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ActivityRunner:
    """Runs activity attempts for a Worker: inline ones (for the workflow-task runner)
    and queued activity tasks. At most ``concurrency`` attempts run at once."""

    def __init__(
        self,
        store: Store,
        activities: dict[str, Activity[Any, Any]],
        *,
        lease: timedelta,
        max_payload_bytes: int,
        concurrency: int,
        counters: dict[str, int],
        worker_id: str,
        stopping: Callable[[], bool],
        observer: Observer | None = None,
        trace_contexts: TraceContexts | None = None,
        transaction_pool: Any = None,
    ) -> None:
        self.store = store
        self.transaction_pool = transaction_pool
        """The application's pool transactional activities take connections from (None:
        the store's own connections)."""
        self.gate = LimitGate(store)
        """Flow control of limited activities (flows_core._limits)."""
        self.activities = activities
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self.concurrency = concurrency
        self.counters = counters
        self.worker_id = worker_id
        self.stopping = stopping
        """True once the worker cuts its in-flight work (its own cancellation)."""
        self.running_now = 0
        """Attempts running at this moment (bounded by ``concurrency``)."""
        self._slots: asyncio.Semaphore | None = None
        self.observer = observer if observer is not None else Observer()
        """Told of every attempt (``activity_attempt``) and of store errors."""
        self.observed = type(self.observer) is not Observer
        """False for the no-op observer: attempts then skip the observer's block."""
        self.trace_contexts = trace_contexts if trace_contexts is not None else TraceContexts()
        """Trace contexts of recent workflows, for queued attempts (see ``_trace_context``)."""

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    # -- one attempt --

    async def attempt(
        self,
        activity: Activity[Any, Any],
        payload: msgspec.Raw,
        keeper: LeaseKeeper,
        info: ActivityInfo,
        scheduled_at: datetime | None = None,
        *,
        inline: bool = False,
        trace_context: TraceContext | None = None,
        record: Recorder | None = None,
    ) -> AttemptOutcome:
        """Run one attempt (once one of the ``concurrency`` places is free); never
        raises for the activity's own failures, CancelledError included. Raises
        CancelledError only when the worker cuts its work at shutdown. The observer's
        ``activity_attempt`` block is around the attempt (``inline``: run by a workflow
        task; ``trace_context``: the workflow's, for a queued attempt). A transactional
        activity's successful output is written by ``record`` in its own transaction
        (``AttemptOutcome.recorded``); LeaseLost is raised when that write was fenced."""
        try:
            async with self._semaphore():
                self.running_now += 1
                try:
                    if not self.observed:
                        return await self._attempt(
                            activity, payload, keeper, info, scheduled_at, record
                        )
                    return await self._observed_attempt(
                        activity,
                        payload,
                        keeper,
                        info,
                        scheduled_at,
                        inline,
                        trace_context,
                        record,
                    )
                finally:
                    self.running_now -= 1
                    keeper.touch()
        except asyncio.CancelledError as exc:
            if self.stopping() or cancelled_from_outside():
                raise
            return self._failed(activity, info, exc, None)

    async def _observed_attempt(
        self,
        activity: Activity[Any, Any],
        payload: msgspec.Raw,
        keeper: LeaseKeeper,
        info: ActivityInfo,
        scheduled_at: datetime | None,
        inline: bool,
        trace_context: TraceContext | None,
        record: Recorder | None = None,
    ) -> AttemptOutcome:
        """``_attempt`` inside the observer's ``activity_attempt`` block (the activity's
        code runs in it, in this task, so a tracer's span is current there)."""
        observed = ActivityAttempt(
            activity_name=info.activity_name,
            workflow_name=info.workflow_name,
            workflow_id=info.workflow_id,
            tenant_id=info.tenant_id,
            seq=info.seq,
            attempt=info.attempt,
            inline=inline,
            trace_context=trace_context,
        )
        with self.observer.activity_attempt(observed):
            outcome = await self._attempt(activity, payload, keeper, info, scheduled_at, record)
            observed.record(outcome.error, retrying=outcome.retry_in is not None)
        return outcome

    async def _attempt(
        self,
        activity: Activity[Any, Any],
        payload: msgspec.Raw,
        keeper: LeaseKeeper,
        info: ActivityInfo,
        scheduled_at: datetime | None,
        record: Recorder | None = None,
    ) -> AttemptOutcome:
        """With ``schedule_to_close`` (counted from ``scheduled_at``, when the step was
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
                return AttemptOutcome(error=_schedule_to_close(activity, attempt - 1, None))
        try:
            value = decode_payload(payload, activity.input_type, what=f"input of {what}")
        except PayloadError as exc:
            return AttemptOutcome(error=ErrorInfo.from_exception(exc, attempts=attempt))
        state = _ActivityState(info)
        keeper.watch(state)
        token = _state.set(state)
        left = None if deadline is None else (deadline - clock.now()).total_seconds()
        if activity.transactional:
            if record is None:
                raise RuntimeError(f"{what} is transactional: its attempt needs a recorder")
            transaction = _Transaction(self, activity, value, record, what)
            call: Callable[[], Awaitable[Any]] = transaction.run
        else:
            call = partial(activity.run, value)
        try:
            result = await _run_once(activity, call, state, what, left)
        except asyncio.CancelledError as exc:
            if self.stopping() or cancelled_from_outside():
                raise
            return self._failed(activity, info, exc, deadline)
        except LeaseLost as exc:
            if activity.transactional:
                raise  # its write was fenced: rolled back, nothing to record
            return self._failed(activity, info, exc, deadline)
        except Exception as exc:
            return self._failed(activity, info, exc, deadline)
        finally:
            _state.reset(token)
            keeper.unwatch(state)
        if activity.transactional:
            assert isinstance(result, _Recorded)
            return AttemptOutcome(output=result.output, recorded=result.moved)
        try:
            output = encode_payload(
                result,
                what=f"output of {what}",
                expected_type=activity.output_type,
                max_bytes=self.max_payload_bytes,
            )
        except PayloadError as exc:
            return AttemptOutcome(error=ErrorInfo.from_exception(exc, attempts=attempt))
        return AttemptOutcome(output=output)

    def _failed(
        self,
        activity: Activity[Any, Any],
        info: ActivityInfo,
        exc: BaseException,
        deadline: datetime | None,
    ) -> AttemptOutcome:
        """The outcome of attempt ``info.attempt`` that raised ``exc``: retried after the
        policy's delay, or final. Logged either way."""
        attempt = info.attempt
        error = ErrorInfo.from_exception(exc, attempts=attempt)
        if isinstance(exc, ScheduleToCloseTimeout):
            outcome = AttemptOutcome(error=error)
        elif activity.retry.should_retry(exc, attempt):
            delay = activity.retry.delay(attempt)
            if deadline is not None and self.store.clock.now() + delay >= deadline:
                outcome = AttemptOutcome(error=_schedule_to_close(activity, attempt, error))
            else:
                outcome = AttemptOutcome(error=error, retry_in=delay)
        else:
            outcome = AttemptOutcome(error=error)
        log.warning(
            "activity %r of workflow %s: attempt %d failed, %s: %s",
            activity.name,
            info.workflow_id,
            attempt,
            "no retry" if outcome.retry_in is None else f"retrying in {outcome.retry_in}",
            error,
            extra={
                "worker_id": self.worker_id,
                "workflow_id": info.workflow_id,
                "tenant_id": info.tenant_id,
                "attempt": attempt,
            },
        )
        return outcome

    @staticmethod
    def info(lease: Lease, workflow_name: str, name: str, seq: int, attempt: int) -> ActivityInfo:
        return ActivityInfo(
            workflow_id=lease.workflow_id,
            tenant_id=lease.tenant_id,
            workflow_name=workflow_name,
            activity_name=name,
            seq=seq,
            attempt=attempt,
            shard_key=lease.shard_key,
        )

    # -- the queue path --

    async def run_task(self, claim: ActivityTaskClaim) -> None:
        """Run a queued activity task; any failure is a counted attempt (``fail_task``).
        Raises LeaseLost (nothing to record), or CancelledError at shutdown (after
        recording the attempt)."""
        activity = self.activities.get(claim.activity_name)
        if activity is None:
            await self.store.release(claim.lease)  # not ours to run: nothing ran
            return
        if claim.attempt > activity.retry.max_attempts:
            # a store that counts the claims of crashed attempts says none is left
            ran = claim.attempt - 1
            error = ErrorInfo(
                type="ActivityTaskCrashed",
                message=f"activity {activity.name!r} was claimed {ran} times without its "
                "outcome being recorded (each claimant crashed or lost its lease); its "
                f"retry policy allows {activity.retry.max_attempts} attempts",
                attempts=ran,
            )
            await self.record(claim, AttemptOutcome(error=error))
            return
        try:
            await self._run_task(claim, activity)
        except LeaseLost:
            raise
        except asyncio.CancelledError as exc:
            if self.stopping() or cancelled_from_outside():
                await asyncio.shield(self.fail_task(claim, activity, exc))
                raise
            await self.fail_task(claim, activity, exc)
        except Exception as exc:
            await self.fail_task(claim, activity, exc)

    async def _run_task(self, claim: ActivityTaskClaim, activity: Activity[Any, Any]) -> None:
        if activity.limits is None:
            await self._run_admitted(claim, activity)
            return
        held = await self.gate.admit_activity(claim, activity.limits, activity.input_type)
        if held is None:
            return  # deferred, uncounted: no slot or rate token now
        try:
            await self._run_admitted(claim, activity)
        finally:
            await self.gate.leave(held)

    async def _run_admitted(self, claim: ActivityTaskClaim, activity: Activity[Any, Any]) -> None:
        info = self.info(
            claim.lease, claim.workflow_name, claim.activity_name, claim.seq, claim.attempt
        )
        context = await self._trace_context(claim.lease) if self.observed else None
        keeper = LeaseKeeper(self.store, claim.lease, self.lease)
        record = None
        if activity.transactional:
            record = completed_by(claim.lease, claim.seq, claim.attempt, self.store.clock.now)
        try:
            outcome = await self.attempt(
                activity,
                claim.input,
                keeper,
                info,
                claim.scheduled_at,
                inline=False,
                trace_context=context,
                record=record,
            )
        finally:
            await keeper.close()
        if outcome.recorded is not None:
            return  # its own transaction recorded it
        keeper.check()
        await self.record(claim, outcome)

    async def _trace_context(self, lease: Lease) -> TraceContext | None:
        """The trace context of a queued attempt's workflow when the observer wants it:
        remembered from its workflow tasks, else read from its history. A failed read is
        a store error; the attempt then runs untraced (a new root) rather than failing."""
        if not self.observer.wants_trace_context:
            return None
        try:
            return await self.trace_contexts.lookup(self.store, lease.tenant_id, lease.workflow_id)
        except Exception as exc:
            self.observer.store_error("get_history")
            log.warning(
                "trace context of workflow %s not read: %r",
                lease.workflow_id,
                exc,
                extra={"workflow_id": lease.workflow_id, "task_id": lease.task_id},
            )
            return None

    async def record(self, claim: ActivityTaskClaim, outcome: AttemptOutcome) -> None:
        """Write a queued attempt's outcome: a retry, or the step's final event."""
        now = self.store.clock.now()
        event = resolution(claim.seq, claim.attempt, outcome, now)
        if event is None:
            assert outcome.retry_in is not None
            assert outcome.error is not None
            await self.write_fenced(
                self.store.retry_activity,
                ActivityRetry(
                    lease=claim.lease,
                    next_attempt=claim.attempt + 1,
                    visible_at=now + outcome.retry_in,
                    error=outcome.error,
                ),
            )
        else:
            await self.write_fenced(
                group_writes(self.store).complete_activity,
                ActivityResult(lease=claim.lease, event=event),
            )

    async def fail_task(
        self, claim: ActivityTaskClaim, activity: Activity[Any, Any], exc: BaseException
    ) -> None:
        """A queued attempt did not end in its recorded outcome (the worker, the store,
        or a cancellation failed it): count it as a failed attempt under the activity's
        retry policy. If even that write fails, the lease runs out and the task is
        claimed again."""
        self.counters["activity_task_failures"] += 1
        info = self.info(
            claim.lease, claim.workflow_name, claim.activity_name, claim.seq, claim.attempt
        )
        outcome = self._failed(activity, info, exc, None)
        log.error(
            "worker %s: activity %r of workflow %s failed outside its code (attempt %d, %s): %s",
            self.worker_id,
            claim.activity_name,
            claim.lease.workflow_id,
            claim.attempt,
            "retrying" if outcome.retry_in is not None else "no retry left",
            outcome.error,
            exc_info=exc,
            extra={"workflow_id": claim.lease.workflow_id, "task_id": claim.lease.task_id},
        )
        try:
            await self.record(claim, outcome)
        except Exception as failure:
            log.error(
                "worker %s: could not record the failed attempt %d of task %s (%r); it is "
                "claimed again once its lease runs out",
                self.worker_id,
                claim.attempt,
                claim.lease.task_id,
                failure,
                extra={"workflow_id": claim.lease.workflow_id, "task_id": claim.lease.task_id},
            )

    # -- fenced writes --

    async def write_fenced(self, write: Callable[[C], Awaitable[R]], request: C) -> R:
        """Run a fenced write, retrying store outages (``is_store_outage``: a dropped
        connection, a restart) with backoff for as long as the lease lasts. Safe because
        the write is fenced: if a lost reply hid a success, the retry gets LeaseLost and
        changes nothing, and the work of the step is not thrown away over a blip. Gives
        up (raises) once the lease would run out, or after one lease duration of wall
        time."""
        delay = 0.05
        give_up = time.monotonic() + self.lease.total_seconds()  # also on a virtual clock
        while True:
            try:
                return await write(request)
            except Exception as exc:
                lease: Lease = request.lease
                if not is_store_outage(exc):
                    raise
                if (
                    self.store.clock.now() + timedelta(seconds=delay) >= lease.expires_at
                    or time.monotonic() + delay >= give_up
                ):
                    raise
                self.counters["store_errors"] += 1
                self.observer.store_error(getattr(write, "__name__", "write"))
                log.warning(
                    "store write for %s failed, retrying in %.2fs: %r", lease.task_id, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


@dataclass
class _Recorded:
    """A transactional attempt whose output its own transaction recorded."""

    output: msgspec.Raw
    moved: list[Any]


class _Transaction:
    """One transactional attempt: the function and the recording of its output in one
    transaction of the store, run again at once on a TransactionConflict (within
    ``TRANSACTION_CONFLICT_RETRIES``)."""

    def __init__(
        self,
        runner: ActivityRunner,
        activity: Activity[Any, Any],
        value: Any,
        record: Recorder,
        what: str,
    ) -> None:
        self.runner, self.activity, self.value = runner, activity, value
        self.record, self.what = record, what
        self.output: msgspec.Raw | None = None

    def _body(self, conn: Any) -> Any:
        fn: Callable[..., Any] = self.activity.fn
        return fn(conn, self.value)

    def _finish(self, result: Any) -> TransactionWrite:
        """Encode the output (a PayloadError rolls the transaction back) and say what to
        write with it."""
        runner, activity = self.runner, self.activity
        self.output = encode_payload(
            result,
            what=f"output of {self.what}",
            expected_type=activity.output_type,
            max_bytes=runner.max_payload_bytes,
        )
        return self.record(self.output)

    async def run(self) -> _Recorded:
        store = self.runner.store
        if not isinstance(store, TransactionalActivities):
            raise TypeError(f"{type(store).__name__} cannot run transactional activities")
        conflicts = 0
        while True:
            try:
                moved = await store.run_transaction(
                    self._body,
                    self._finish,
                    sync=not self.activity.is_async,
                    pool=self.runner.transaction_pool,
                )
            except TransactionConflict as exc:
                if conflicts >= TRANSACTION_CONFLICT_RETRIES:
                    raise
                conflicts += 1
                self.runner.counters["transaction_conflicts"] += 1
                log.info(
                    "%s: transaction conflict (%s), running it again (%d of %d)",
                    self.what,
                    exc.__cause__ or exc,
                    conflicts,
                    TRANSACTION_CONFLICT_RETRIES,
                )
                await asyncio.sleep(0.01 * 2 ** (conflicts - 1) * random.uniform(0.5, 1.5))
                continue
            assert self.output is not None
            return _Recorded(self.output, moved)


def completed_by(
    lease: Lease, seq: int, attempt: int, clock_now: Callable[[], datetime]
) -> Recorder:
    """The recorder of a queued transactional attempt: its ActivityCompleted, fenced by
    the activity task's lease."""

    def record(output: msgspec.Raw) -> TransactionWrite:
        event = ActivityCompleted(seq=seq, output=output, attempt=attempt, at=clock_now())
        return ActivityResult(lease=lease, event=event)

    return record


async def _run_once(
    activity: Activity[Any, Any],
    call: Callable[[], Awaitable[Any]],
    state: _ActivityState,
    what: str,
    left: float | None,
) -> Any:
    """The activity's code under its timeouts (``left``: seconds to its schedule-to-close
    deadline)."""
    if activity.heartbeat_timeout is not None:
        return await _run_with_heartbeat_timeout(activity, call, state, what, left)
    if activity.timeout is None and left is None:
        return await call()
    limit = activity.timeout.total_seconds() if activity.timeout else None
    cut_by_deadline = left is not None and (limit is None or left < limit)
    try:
        return await asyncio.wait_for(call(), left if cut_by_deadline else limit)
    except TimeoutError as exc:
        if cut_by_deadline:
            raise ScheduleToCloseTimeout(
                f"{what} was not done within {activity.schedule_to_close} "
                "of being scheduled; its running attempt was cut"
            ) from exc
        raise ActivityTimeout(f"{what} did not finish within {activity.timeout}") from exc


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
    call: Callable[[], Awaitable[Any]],
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
    task = asyncio.ensure_future(call())
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
            task.add_done_callback(retrieve)


def retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback: fetch a background task's exception so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


class LeaseKeeper:
    """Extends a lease while the activities it watches heartbeat or attempts finish
    (``touch``); relays cancellation."""

    def __init__(self, store: Store, lease: Lease, duration: timedelta) -> None:
        self.store, self.lease, self.duration = store, lease, duration
        self.states: set[_ActivityState] = set()
        self.lost: BaseException | None = None
        self.expires_at = lease.expires_at
        self._last_extend = time.monotonic()
        self._progress = 0.0
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

    def touch(self) -> None:
        """An attempt ended: the claimant is making progress (attempts waiting for a
        place under ``concurrency`` keep the lease this way)."""
        self._progress = time.monotonic()

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLost(f"lease of task {self.lease.task_id} lost: {self.lost}")

    async def _loop(self) -> None:
        first = True
        while True:
            if not first:
                await asyncio.sleep(self._interval)
            first = False
            beat = self._progress > self._last_extend or any(
                s.last_beat > self._last_extend for s in self.states
            )
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
