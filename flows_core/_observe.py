"""Observation hooks: what the Engine and the Worker tell metrics and tracing.

Pure: imports nothing beyond the standard library and flows_core. An ``Observer`` is
called at well-defined points of a workflow's life; every method does nothing by
default, so an observer overrides only what it needs (``flows_observe.prometheus``
counts, ``flows_observe.otel`` traces; ``CompositeObserver`` runs several).

Two kinds of calls:

* events (``workflow_started``, ``workflow_finished``, ``lease_lost``, ``store_error``,
  ``workflow_parked``) are plain calls;
* units of work (a workflow start, a workflow task, an activity attempt) are context
  managers entered around the work, so a tracer can make its span current while the
  work runs (an activity's own spans become children of its attempt's span). The
  default context managers time the work and call the ``*_began`` / ``*_ended`` hooks.

Trace context travels with the workflow: ``Engine.start`` stores what
``workflow_start`` yields in ``WorkflowStarted.trace_context``; workers hand it back
(``WorkflowTask.trace_context``, ``ActivityAttempt.trace_context``) in every process
and after any crash.

Observers run on the event loop of the worker: they must be quick and must not raise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final, Generic, Literal, TypeVar

import msgspec

from ._errors import ActivityTimeout, ErrorInfo, InvalidArgument, LeaseLost
from .events import Event, WorkflowStarted
from .store import NewWorkflow, Store, WorkflowStatus

__all__ = [
    "ActivityAttempt",
    "AttemptOutcome",
    "CompositeObserver",
    "MAX_TRACE_CONTEXT_BYTES",
    "Observer",
    "TaskKind",
    "TaskOutcome",
    "TraceContext",
    "TraceContexts",
    "WorkflowTask",
    "run_sampler",
    "trace_context_of",
    "with_trace_context",
]

log = logging.getLogger("flows.observe")

TraceContext = dict[str, str]
"""A propagation carrier (W3C: ``traceparent`` and ``tracestate``)."""

TaskKind = Literal["workflow_task", "activity_task"]

MAX_TRACE_CONTEXT_BYTES: Final = 4096
"""The largest trace context stored with a workflow (W3C needs at most ~600 bytes)."""

_TIMEOUT_ERRORS: Final = frozenset(
    {"ActivityTimeout", "HeartbeatTimeout", "ScheduleToCloseTimeout"}
)


class TaskOutcome(StrEnum):
    """How a workflow task ended."""

    COMMITTED = "committed"
    """Its decision was committed (the normal end)."""
    RETRY = "retry"
    """Replay or the decision raised unexpectedly; the task is retried after a backoff."""
    PARKED = "parked"
    """The workflow was dead-lettered."""
    LEASE_LOST = "lease_lost"
    """Another claimant owns the task now; nothing was written."""
    RELEASED = "released"
    """Given back unrun or unfinished (not served here, the worker is stopping)."""
    ERROR = "error"
    """Something else went wrong (a store error); the task is released."""


class AttemptOutcome(StrEnum):
    """How an activity attempt ended."""

    OK = "ok"
    FAILED = "failed"
    """Failed, and the step fails with it (no retry left, or not retryable)."""
    RETRY = "retry"
    """Failed, and the step will be tried again."""
    TIMEOUT = "timeout"
    """Ran past its timeout, heartbeat timeout or schedule-to-close (retried or not)."""
    ABANDONED = "abandoned"
    """Did not finish: the worker stopped or cancelled it."""


@dataclass(slots=True)
class WorkflowTask:
    """One workflow task as observers see it; the worker sets ``outcome`` before leaving
    the ``Observer.workflow_task`` block (unset: COMMITTED, or taken from the exception
    that leaves the block)."""

    workflow_name: str
    workflow_id: str
    tenant_id: str
    attempt: int
    trace_context: TraceContext | None = None
    """``WorkflowStarted.trace_context`` of the workflow (see ``trace_context_of``)."""
    outcome: TaskOutcome | None = None

    def settle(self, exc: BaseException | None) -> TaskOutcome:
        """Fix the outcome (once): the one set, else from ``exc``, else COMMITTED."""
        if self.outcome is None:
            if exc is None:
                self.outcome = TaskOutcome.COMMITTED
            elif isinstance(exc, LeaseLost):
                self.outcome = TaskOutcome.LEASE_LOST
            elif isinstance(exc, asyncio.CancelledError):
                self.outcome = TaskOutcome.RELEASED
            else:
                self.outcome = TaskOutcome.ERROR
        return self.outcome


@dataclass(slots=True)
class ActivityAttempt:
    """One activity attempt as observers see it; the worker calls ``record`` with the
    attempt's result before leaving the ``Observer.activity_attempt`` block.

    ``inline``: run inside a workflow task (its span is the parent) rather than from the
    activity queue (the stored ``trace_context`` is the parent)."""

    activity_name: str
    workflow_name: str
    workflow_id: str
    tenant_id: str
    seq: int
    attempt: int
    inline: bool
    trace_context: TraceContext | None = None
    outcome: AttemptOutcome | None = None
    error: ErrorInfo | None = None

    def record(self, error: ErrorInfo | None, *, retrying: bool) -> AttemptOutcome:
        """Record the attempt's result: its error (None if it succeeded) and whether
        the step will be tried again."""
        self.error = error
        if error is None:
            self.outcome = AttemptOutcome.OK
        elif error.type in _TIMEOUT_ERRORS:
            self.outcome = AttemptOutcome.TIMEOUT
        elif retrying:
            self.outcome = AttemptOutcome.RETRY
        else:
            self.outcome = AttemptOutcome.FAILED
        return self.outcome

    def settle(self, exc: BaseException | None) -> AttemptOutcome:
        """Fix the outcome (once): the recorded one, else from ``exc``, else OK."""
        if self.outcome is None:
            if exc is None:
                self.outcome = AttemptOutcome.OK
            elif isinstance(exc, ActivityTimeout):
                self.outcome = AttemptOutcome.TIMEOUT
            elif isinstance(exc, Exception):
                self.outcome = AttemptOutcome.FAILED
            else:
                self.outcome = AttemptOutcome.ABANDONED
        return self.outcome


class Observer:
    """Receives what happens in Engines and Workers; every method does nothing here.

    ``sample_interval``: when not None, a worker calls ``sample(store, shard_keys)``
    that often (seconds), for observers that report store-wide gauges.
    ``wants_trace_context``: the observer uses ``ActivityAttempt.trace_context`` of
    queued attempts (a worker may have to read it from the store; tracers say True).
    """

    sample_interval: float | None = None
    wants_trace_context: bool = False

    # -- trace propagation --

    def inject(self) -> TraceContext | None:
        """The current trace context as a carrier to store, or None (not traced)."""
        return None

    @contextmanager
    def workflow_start(
        self, workflow_name: str, tenant_id: str, workflow_id: str
    ) -> Iterator[TraceContext | None]:
        """Around ``Engine.start`` writing a new workflow; yields the trace context to
        store in its WorkflowStarted (a tracer yields the context of its start span)."""
        yield self.inject()

    # -- units of work --

    def workflow_task(self, task: WorkflowTask) -> AbstractContextManager[None]:
        """Around one workflow task, from its claim to its commit (or release)."""
        return _Timed(task, self.workflow_task_began, self.workflow_task_ended)

    def activity_attempt(self, attempt: ActivityAttempt) -> AbstractContextManager[None]:
        """Around one activity attempt: the activity's code runs inside this block."""
        return _Timed(attempt, self.activity_attempt_began, self.activity_attempt_ended)

    def workflow_task_began(self, task: WorkflowTask) -> None:
        """A workflow task starts running here."""

    def workflow_task_ended(self, task: WorkflowTask, seconds: float) -> None:
        """A workflow task ended (``task.outcome`` says how) after ``seconds``."""

    def activity_attempt_began(self, attempt: ActivityAttempt) -> None:
        """An activity attempt starts running here."""

    def activity_attempt_ended(self, attempt: ActivityAttempt, seconds: float) -> None:
        """An activity attempt ended (``attempt.outcome`` says how) after ``seconds``."""

    # -- events --

    def workflow_started(self, workflow_name: str, tenant_id: str) -> None:
        """A workflow was started (its start written) by an Engine."""

    def workflow_finished(self, workflow_name: str, tenant_id: str, status: WorkflowStatus) -> None:
        """A workflow reached a terminal status (completed, failed, cancelled or
        terminated); called once, by whoever wrote it."""

    def workflow_parked(self, workflow_name: str, tenant_id: str, error: ErrorInfo) -> None:
        """A workflow was dead-lettered (parked) with ``error``."""

    def lease_lost(self, kind: TaskKind, workflow_name: str) -> None:
        """A claimant found its lease gone (another worker took the task)."""

    def store_error(self, operation: str) -> None:
        """A store call failed (``operation``: "poll", "commit_workflow_task", ...)."""

    async def sample(self, store: Store, shard_keys: Sequence[str] | None) -> None:
        """Read store-wide state (queue depth...); see ``sample_interval``."""


_Work = TypeVar("_Work", WorkflowTask, ActivityAttempt)


class _Timed(AbstractContextManager[None], Generic[_Work]):
    """The default block around a unit of work: calls the began hook, times the work,
    settles its outcome and calls the ended hook. (A class: cheaper than a generator,
    and it runs for every task of every worker.)"""

    __slots__ = ("_began", "_ended", "_started", "_work")

    def __init__(
        self,
        work: _Work,
        began: Callable[[_Work], None],
        ended: Callable[[_Work, float], None],
    ) -> None:
        self._work: _Work = work
        self._began: Callable[[_Work], None] = began
        self._ended: Callable[[_Work, float], None] = ended
        self._started = 0.0

    def __enter__(self) -> None:
        self._began(self._work)
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._work.settle(exc)
        self._ended(self._work, time.perf_counter() - self._started)


class CompositeObserver(Observer):
    """Several observers as one: each call goes to every one, in order."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
        for observer in self.observers:
            if not isinstance(observer, Observer):
                raise InvalidArgument(f"expected an Observer, got {observer!r}")
        intervals = [o.sample_interval for o in self.observers if o.sample_interval]
        self.sample_interval = min(intervals) if intervals else None
        self.wants_trace_context = any(o.wants_trace_context for o in self.observers)

    def inject(self) -> TraceContext | None:
        merged: TraceContext = {}
        for observer in reversed(self.observers):  # the first one's keys win
            merged.update(observer.inject() or {})
        return merged or None

    @contextmanager
    def workflow_start(
        self, workflow_name: str, tenant_id: str, workflow_id: str
    ) -> Iterator[TraceContext | None]:
        with ExitStack() as stack:
            merged: TraceContext = {}
            carriers = [
                stack.enter_context(o.workflow_start(workflow_name, tenant_id, workflow_id))
                for o in self.observers
            ]
            for carrier in reversed(carriers):
                merged.update(carrier or {})
            yield merged or None

    @contextmanager
    def workflow_task(self, task: WorkflowTask) -> Iterator[None]:
        with ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.workflow_task(task))
            yield

    @contextmanager
    def activity_attempt(self, attempt: ActivityAttempt) -> Iterator[None]:
        with ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.activity_attempt(attempt))
            yield

    def workflow_started(self, workflow_name: str, tenant_id: str) -> None:
        for observer in self.observers:
            observer.workflow_started(workflow_name, tenant_id)

    def workflow_finished(self, workflow_name: str, tenant_id: str, status: WorkflowStatus) -> None:
        for observer in self.observers:
            observer.workflow_finished(workflow_name, tenant_id, status)

    def workflow_parked(self, workflow_name: str, tenant_id: str, error: ErrorInfo) -> None:
        for observer in self.observers:
            observer.workflow_parked(workflow_name, tenant_id, error)

    def lease_lost(self, kind: TaskKind, workflow_name: str) -> None:
        for observer in self.observers:
            observer.lease_lost(kind, workflow_name)

    def store_error(self, operation: str) -> None:
        for observer in self.observers:
            observer.store_error(operation)

    async def sample(self, store: Store, shard_keys: Sequence[str] | None) -> None:
        for observer in self.observers:
            if observer.sample_interval is not None:
                await observer.sample(store, shard_keys)


# -- trace context helpers (for the Engine and the Worker) --


def trace_context_of(history: Sequence[Event]) -> TraceContext | None:
    """The trace context stored with a workflow, from its history (first event)."""
    if history and isinstance(history[0], WorkflowStarted):
        return history[0].trace_context
    return None


def with_trace_context(new: NewWorkflow, context: TraceContext | None) -> NewWorkflow:
    """``new`` with ``context`` stored in its WorkflowStarted (as it is when None).

    A context over MAX_TRACE_CONTEXT_BYTES loses its ``tracestate`` first (W3C lets
    vendors' state be dropped; ``traceparent`` keeps the trace whole). InvalidArgument
    if it is not a ``dict[str, str]`` or still too large."""
    if context is None:
        return new
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise InvalidArgument(f"a trace context must be a dict[str, str], got {context!r}")
    context = dict(context)
    if _size(context) > MAX_TRACE_CONTEXT_BYTES:
        context.pop("tracestate", None)
    if _size(context) > MAX_TRACE_CONTEXT_BYTES:
        raise InvalidArgument(
            f"trace context is {_size(context)} bytes, more than the "
            f"{MAX_TRACE_CONTEXT_BYTES} allowed: keys {sorted(context)}"
        )
    started = new.started
    if not isinstance(started, WorkflowStarted):
        raise InvalidArgument(f"a new workflow starts with WorkflowStarted, not {started!r}")
    stamped = msgspec.structs.replace(started, trace_context=context)
    return msgspec.structs.replace(new, started=stamped)


def _size(context: TraceContext) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in context.items())


class TraceContexts:
    """Trace contexts of recent workflows, by (tenant, workflow id), bounded (LRU).

    A worker remembers the context of each workflow task it runs, so a queued
    activity attempt of the same workflow finds it without a store read; on a miss
    ``lookup`` reads the workflow's first event."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise InvalidArgument("TraceContexts capacity must be at least 1")
        self.capacity = capacity
        self._known: OrderedDict[tuple[str, str], TraceContext | None] = OrderedDict()

    def remember(self, tenant_id: str, workflow_id: str, context: TraceContext | None) -> None:
        key = (tenant_id, workflow_id)
        self._known[key] = context
        self._known.move_to_end(key)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    async def lookup(self, store: Store, tenant_id: str, workflow_id: str) -> TraceContext | None:
        """The workflow's trace context: remembered, else read from its history."""
        key = (tenant_id, workflow_id)
        if key in self._known:
            self._known.move_to_end(key)
            return self._known[key]
        context = trace_context_of(await store.get_history(tenant_id, workflow_id))
        self.remember(tenant_id, workflow_id, context)
        return context

    def __len__(self) -> int:
        return len(self._known)


async def run_sampler(
    observer: Observer,
    store: Store,
    shard_keys: Sequence[str] | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Call ``observer.sample`` every ``observer.sample_interval`` seconds until
    ``stop`` is set (or the task is cancelled). A failed sample is logged and reported
    as a store error ("stats"); the next one comes at the next interval."""
    interval = observer.sample_interval
    if interval is None:
        return
    if stop is None:
        stop = asyncio.Event()
    while not stop.is_set():
        try:
            await observer.sample(store, shard_keys)
        except Exception as exc:
            observer.store_error("stats")
            log.warning("sampling the store for metrics failed: %r", exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
