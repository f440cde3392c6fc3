"""Deterministic replay: ``WorkflowInstance.apply(events, now) -> Activation``.

The workflow coroutine is driven by a tiny scheduler of our own, not by asyncio. Every
Flows awaitable is a ``Step`` future with a sequence number (``seq``) taken in the order
the code creates it. Applying a batch of history events works in two passes:

1. command events (ActivityScheduled, TimerStarted, SignalWaitStarted,
   SideEffectRecorded, StepCancelled, terminal events) are indexed by seq, so that when
   the code takes step ``seq`` it is matched against what was recorded instead of being
   new. A mismatch (other kind, name or input) is a ``NonDeterminismError``;
2. the other events (results, timer firings, signals, cancel requests) are applied in
   history order, and after each one the workflow runs until every task is blocked.

``ctx.patched(id)`` takes no seq: its PatchMarker events are indexed by patch id, and
the history's highest step (or its end) tells whether the run went past a check with the
code before the patch (see ``WorkflowInstance.patched``).

Steps the code takes that the history does not have are returned as new command events
in ``Activation.new_events``; the worker turns them into store writes and the history
grows by exactly those events. The same instance can be fed further events later (the
sticky cache): its own commands come back as echoes and are matched like any others.

While workflow code runs, the thread's running asyncio loop is a ``_NoLoop``: asyncio
timers, tasks and futures (``asyncio.sleep``, ``asyncio.timeout``, ``create_task``,
``gather``, ``wait_for``...) would not be replayed, so touching the loop parks the
workflow with an ``IllegalAwaitError`` that names the Flows equivalent. A bug in the
code (``WORKFLOW_CODE_ERRORS``) parks it too (``WorkflowCodeError``), history untouched,
so a code fix and ``engine.retry()`` resume it.

Pure: no I/O, no clock (``now`` is an argument), no global randomness.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import msgspec

from ._asyncio_guard import asyncio_advice, close_unstarted
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, decode_payload, encode_payload, same_payload
from ._definitions import Workflow
from ._errors import (
    ActivityFailed,
    Cancelled,
    ChildWorkflowCancelled,
    ChildWorkflowFailed,
    ErrorInfo,
    FlowsError,
    IllegalAwaitError,
    NonDeterminismError,
    PayloadError,
    WorkflowCodeError,
    WorkflowTimeout,
)
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
    ParentClosePolicy,
    ParentRef,
    PatchMarker,
    SideEffectKind,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailedEvent,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)

__all__ = [
    "WORKFLOW_CODE_ERRORS",
    "Activation",
    "Divergence",
    "RaceResult",
    "Step",
    "WorkflowInstance",
    "awaited_signals",
    "current_instance",
    "replay",
]

T = TypeVar("T")

_CommandEvent = (
    ActivityScheduled
    | TimerStarted
    | SignalWaitStarted
    | SideEffectRecorded
    | ChildStartRequested
    | ChildSignalRequested
    | ChildCancelRequested
)
_TerminalEvent = (
    WorkflowCompleted | WorkflowFailedEvent | WorkflowCancelledEvent | WorkflowContinuedAsNew
)
_COMMAND_TYPES = (
    ActivityScheduled,
    TimerStarted,
    SignalWaitStarted,
    SideEffectRecorded,
    ChildStartRequested,
    ChildSignalRequested,
    ChildCancelRequested,
)
_TERMINAL_TYPES = (
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowCancelledEvent,
    WorkflowContinuedAsNew,
)
PatchPath = Literal["old", "new", "new_unrecorded"]
"""How a run went through a ``ctx.patched`` check: ``"old"`` (the history has steps past
the check and no marker), ``"new"`` (the history has the marker), ``"new_unrecorded"``
(the run reached the check only now: it takes the new path and records the marker)."""

_current: contextvars.ContextVar[WorkflowInstance | None] = contextvars.ContextVar(
    "flows_workflow_instance", default=None
)


def current_instance() -> WorkflowInstance:
    """The instance whose code is running now; error outside workflow code."""
    instance = _current.get()
    if instance is None:
        raise RuntimeError(
            "this Flows call is only valid inside workflow code run by a Flows worker"
        )
    return instance


WORKFLOW_CODE_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    NameError,
    ImportError,
    SyntaxError,
    AssertionError,
    NotImplementedError,
    RecursionError,
)
"""Exceptions that Python raises for code that is wrong rather than for data that is
wrong. Escaping workflow code, they park the workflow (``WorkflowCodeError``, history
untouched) instead of failing it, unless the workflow lists them in
``failure_exceptions``. Any other Exception fails the workflow; a BaseException that is
not an Exception (``asyncio.CancelledError``...) parks it too."""


class _Abort(BaseException):
    """Unwinds workflow code after a determinism violation; not catchable as Exception."""


class _ContinueAsNew(_Abort):
    """Unwinds workflow code after ``ctx.continue_as_new()``: no code after it runs."""


@dataclass(frozen=True, slots=True)
class RaceResult(Generic[T]):
    """What ``flows.race`` returns: the argument position of the first step to finish
    (``winner``), and its result (``value``)."""

    winner: int
    value: T


class Step(Generic[T]):
    """A Flows awaitable: resolved by the replay driver, never by asyncio."""

    __slots__ = ("_done", "_exc", "_result", "_waiters", "description", "seq")

    def __init__(self, seq: int, description: str) -> None:
        self.seq = seq
        self.description = description
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._waiters: list[_Task | _Combinator | _ChildDone] = []

    @property
    def done(self) -> bool:
        return self._done

    def _resolve(
        self, result: Any = None, exc: BaseException | None = None
    ) -> list[_Task | _Combinator | _ChildDone]:
        self._done, self._result, self._exc = True, result, exc
        waiters, self._waiters = self._waiters, []
        return waiters

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            yield self
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return (
            f"<flows step #{self.seq} {self.description} ({state}); await it in workflow code, "
            "and use flows.gather() instead of asyncio.gather()>"
        )


class _Task:
    """A coroutine driven by the instance: the workflow body or a gather branch."""

    __slots__ = (
        "cancel_reason",
        "cancel_thrown",
        "coro",
        "future",
        "instance",
        "parent",
        "waiting_on",
    )

    def __init__(
        self,
        instance: WorkflowInstance,
        coro: Coroutine[Any, Any, Any],
        future: Step[Any],
        parent: _Task | None = None,
    ):
        self.instance, self.coro, self.future, self.parent = instance, coro, future, parent
        self.waiting_on: Step[Any] | None = None
        self.cancel_reason: str | None = None
        self.cancel_thrown = False
        instance._live[self] = None

    def descends_from(self, ancestor: _Task) -> bool:
        task: _Task | None = self
        while task is not None:
            if task is ancestor:
                return True
            task = task.parent
        return False

    def _ended(self) -> None:
        self.instance._live.pop(self, None)
        self.instance._branches.pop(self.future, None)

    def step(self) -> None:
        instance = self.instance
        instance._running = self
        try:
            if self.cancel_reason is not None and not self.cancel_thrown:
                self.cancel_thrown = True
                yielded = self.coro.throw(Cancelled(self.cancel_reason))
            else:
                yielded = self.coro.send(None)
        except StopIteration as stop:
            self._ended()
            instance._wake(self.future._resolve(stop.value))
            return
        except _Abort:
            self._ended()
            return
        except Exception as exc:
            self._ended()
            instance._wake(self.future._resolve(exc=exc))
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # asyncio.CancelledError, say: never the worker's own
            self._ended()
            instance._violation(instance._code_error(exc))
            return
        finally:
            instance._running = None
        if isinstance(yielded, Step):
            if yielded.done:
                instance._ready.append(self)
            else:
                self.waiting_on = yielded
                yielded._waiters.append(self)
            return
        what = type(yielded).__name__ if yielded is not None else "a bare yield (asyncio.sleep(0)?)"
        instance._violation(
            IllegalAwaitError(
                f"workflow {instance.definition.name!r} awaited {what}, which is not a Flows "
                "step. Workflow code must be deterministic: use ctx.sleep() instead of "
                "asyncio.sleep(), ctx.execute(activity, ...) for I/O, and flows.gather() "
                "instead of asyncio.gather()"
            )
        )
        with contextlib.suppress(Exception, _Abort):
            self.coro.close()


class _ChildDone:
    """Wakes a combinator when its step at ``index`` resolves; the instance marks the
    step done in it at once (``_wake``), so a gather over n steps costs O(n) to follow,
    not O(n) per resolution."""

    __slots__ = ("combinator", "index")

    def __init__(self, combinator: _Combinator, index: int) -> None:
        self.combinator, self.index = combinator, index

    def step(self) -> None:
        self.combinator.step()


class _Combinator:
    """``flows.gather`` (``first=False``) or ``flows.race`` (``first=True``) over steps.

    Woken whenever one of its steps resolves. Once it has its answer it cancels the
    steps still pending (as steps: StepCancelled recorded; branch coroutines get
    Cancelled at their await) and resolves ``future`` when every branch has ended, so
    cleanup in a cancelled branch runs before the awaiting code goes on. The race's
    ``timeout`` is its last step, a timer, and is reported as TimeoutError.
    """

    __slots__ = (
        "children",
        "done_count",
        "first",
        "first_failed",
        "future",
        "instance",
        "outcome",
        "return_exceptions",
        "timeout",
    )

    def __init__(
        self,
        instance: WorkflowInstance,
        children: list[Step[Any]],
        *,
        first: bool,
        return_exceptions: bool = False,
        timeout: timedelta | None = None,
    ) -> None:
        self.instance, self.children, self.first = instance, children, first
        self.return_exceptions, self.timeout = return_exceptions, timeout
        self.outcome: tuple[Any, BaseException | None] | None = None
        self.future: Step[Any] = Step(0, "flows.race" if first else "flows.gather")
        instance._combinators[self.future] = self
        self.done_count = 0
        self.first_failed: int | None = None
        """The lowest index of a step done with an Exception."""
        for index, child in enumerate(children):
            if child.done:
                self.mark(index)
            else:
                child._waiters.append(_ChildDone(self, index))
        instance._ready.append(self)

    def mark(self, index: int) -> None:
        """Step ``index`` is done (called as it resolves)."""
        self.done_count += 1
        if isinstance(self.children[index]._exc, Exception) and (
            self.first_failed is None or index < self.first_failed
        ):
            self.first_failed = index

    def step(self) -> None:
        if self.future.done:
            return
        if self.outcome is None:
            decided = self._race() if self.first else self._gather()
            if decided is None:
                return
            reason, result, exc = decided
            self.outcome = (result, exc)
            self.cancel(reason)
        if self.done_count == len(self.children):
            result, exc = self.outcome
            del self.instance._combinators[self.future]
            self.instance._wake(self.future._resolve(result, exc))

    def _race(self) -> tuple[str, Any, BaseException | None] | None:
        lost = "another step of the race finished first"
        for index, child in enumerate(self.children):
            if not child.done:
                continue
            if self.timeout is not None and index == len(self.children) - 1:
                timeout = TimeoutError(f"flows.race: no step finished within {self.timeout}")
                return "the race timed out", None, timeout
            if child._exc is not None:
                return lost, None, child._exc
            return lost, RaceResult(index, child._result), None
        return None

    def _gather(self) -> tuple[str, Any, BaseException | None] | None:
        if not self.return_exceptions and self.first_failed is not None:
            failed = self.children[self.first_failed]._exc
            return "another step of the gather failed", None, failed
        if self.done_count == len(self.children):
            results = tuple(
                child._exc if child._exc is not None else child._result for child in self.children
            )
            return "", results, None
        return None

    def cancel(self, reason: str) -> None:
        for child in self.children:
            self.instance._cancel_awaitable(child, reason)


class _NoLoop:
    """The running loop seen by workflow code: any use parks the workflow.

    It is also its own "current task", so ``asyncio.current_task()`` and
    ``asyncio.timeout()`` reach it too."""

    def get_name(self) -> str:
        """Harmless: ``logging`` (Python 3.12+) names the current task in every record."""
        return "flows-workflow-code"

    def __getattr__(self, name: str) -> Any:
        instance = _current.get()
        if instance is None:  # not from workflow code: behave like a missing attribute
            raise AttributeError(name)
        api, advice = asyncio_advice(sys._getframe(1))
        close_unstarted(sys._getframe(1))
        instance._violation(
            IllegalAwaitError(
                f"workflow {instance.definition.name!r} called {api}, which needs an asyncio "
                "event loop; workflow code has none, because asyncio timers, tasks and "
                f"futures are not recorded in the history and would not replay. {advice}"
            )
        )
        raise _Abort


_thread_state = threading.local()


def _no_loop() -> Any:
    """This thread's _NoLoop (asyncio keys the current task by loop: one per thread)."""
    loop = getattr(_thread_state, "no_loop", None)
    if loop is None:
        loop = _thread_state.no_loop = _NoLoop()
    return loop


@dataclass(frozen=True)
class Divergence:
    """Where replay left the history: step ``seq`` (None when the divergence is not at
    a step), the event the history ``recorded`` there and the one the code ``taken``
    now (either may be None: the code took no step, or the history has none)."""

    seq: int | None
    recorded: Event | None
    taken: Event | None


@dataclass
class Activation:
    """Result of applying events: new command events, and whether the workflow parks.

    ``park_error`` is set when the code cannot go on until it is fixed: replay diverged
    from the history (NonDeterminismError), the code used asyncio or awaited something
    that is not a step (IllegalAwaitError), or it raised a bug (WorkflowCodeError). The
    worker parks the workflow with it at once and commits nothing of this activation.
    """

    new_events: list[Event] = field(default_factory=list)
    park_error: FlowsError | None = None
    finished: bool = False
    divergence: Divergence | None = None
    """With a NonDeterminismError: the step where code and history part."""


@dataclass
class _SignalWait:
    step: Step[Any]
    name: str
    type_: Any
    has_timeout: bool


class WorkflowInstance:
    """One workflow's code, driven deterministically by its history."""

    def __init__(
        self,
        definition: Workflow[Any, Any],
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.definition = definition
        self.max_payload_bytes = max_payload_bytes
        """Limit for what the code encodes: activity inputs and the workflow's output."""
        self.workflow_id = ""
        self.tenant_id = ""
        self.seed = 0
        self.now: datetime | None = None
        self.applied = 0
        """Number of history events applied so far."""
        self.next_seq = 1
        self.cancel_requested = False
        self.finished = False
        self.execution_timeout: timedelta | None = None
        self._terminated = False
        self._live: dict[_Task, None] = {}
        """Tasks not finished, in the order they were created (replay must not depend
        on hashes)."""
        self._ready: deque[_Task | _Combinator | _ChildDone] = deque()
        self._main: Step[Any] | None = None
        self._expected: dict[int, _CommandEvent] = {}
        self._expected_cancels: set[int] = set()
        self._expected_terminal: _TerminalEvent | None = None
        self._issued: dict[int, _CommandEvent] = {}
        self._pending: dict[int, tuple[Step[Any], str]] = {}
        self._waits: dict[int, _SignalWait] = {}
        self._buffered: dict[str, deque[SignalReceived]] = {}
        self._activity_types: dict[int, Any] = {}
        self._input_types: dict[int, Any] = {}
        self._new: list[Event] = []
        self._violation_error: FlowsError | None = None
        self._running: _Task | None = None
        """The task whose code runs now: it owns the steps taken (see _cancel_task)."""
        self._owner: dict[int, _Task | None] = {}
        self._branches: dict[Step[Any], _Task] = {}
        self._combinators: dict[Step[Any], _Combinator] = {}
        self._divergence: Divergence | None = None
        self._patch_markers: dict[str, PatchMarker] = {}
        """The PatchMarker events of the history, by patch id."""
        self._recorded_horizon = -1
        """The highest step the history records (see ``patched``)."""
        self._recorded_end = False
        """The history records the end of the run."""
        self._patches: dict[str, bool] = {}
        self.patch_paths: dict[str, PatchPath] = {}
        """The patch ids this run checked, and how it went through each."""
        self.parent: ParentRef | None = None
        """This workflow's parent, if it is a child workflow (from WorkflowStarted)."""
        self.children: dict[int, ChildStartRequested] = {}
        """Every child this run started, by step seq."""
        self.open_children: dict[int, ChildStartRequested] = {}
        """Children started and neither ended nor given up (their step cancelled)."""
        self._child_types: dict[int, Any] = {}
        self.started: WorkflowStarted | None = None
        self.published: msgspec.Raw | None = None
        """The status the code published last (``ctx.set_status``); not a step: replay
        publishes the same value again."""
        self.continued: msgspec.Raw | None = None
        """The input of the next run, once the code called ``ctx.continue_as_new``."""
        self._arrival: dict[int, int] = {}
        """History position of each signal or cancel request applied (by ``id``)."""
        self._cancel_event: CancelRequested | None = None

    # -- driving --

    def apply(self, events: list[Event], now: datetime) -> Activation:
        """Apply ``events`` (the next part of the history) and run the code."""
        self.now = now
        self._new = []
        if self._violation_error is None:
            for event in events:
                self._index(event)
            for event in events:
                if self._violation_error is not None:
                    break
                self.applied += 1
                self._process(event)
                self._run()
            if self._violation_error is None:
                self._check_unmatched()
        return Activation(
            new_events=self._new,
            park_error=self._violation_error,
            finished=self.finished,
            divergence=self._divergence if self._violation_error is not None else None,
        )

    def _index(self, event: Event) -> None:
        if isinstance(event, _COMMAND_TYPES):
            self._recorded_horizon = max(self._recorded_horizon, event.seq)
            issued = self._issued.get(event.seq)
            if issued is not None:
                self._compare(event.seq, issued, event)
            else:
                self._expected[event.seq] = event
        elif isinstance(event, StepCancelled):
            self._recorded_horizon = max(self._recorded_horizon, event.seq)
            self._expected_cancels.add(event.seq)
        elif isinstance(event, PatchMarker):
            self._recorded_horizon = max(self._recorded_horizon, event.position - 1)
            self._patch_markers.setdefault(event.patch_id, event)
        elif isinstance(event, _TERMINAL_TYPES):
            self._recorded_end = True
            self._expected_terminal = event
        elif isinstance(event, WorkflowTerminatedEvent):
            self._recorded_end = True

    def _process(self, event: Event) -> None:
        match event:
            case WorkflowStarted():
                self._start(event)
            case TimerFired() if event.seq == DEADLINE_SEQ:
                self._deadline_passed()
            case ActivityCompleted():
                self._resolve_activity(event.seq, event)
            case ActivityFailedEvent():
                self._resolve_activity(event.seq, event)
            case ChildWorkflowEnded():
                self._resolve_child(event)
            case TimerFired():
                self._fire_timer(event.seq)
            case SignalReceived():
                self._arrival[id(event)] = self.applied
                self._deliver(event)
            case CancelRequested():
                if self._cancel_event is None:
                    self._cancel_event = event
                    self._arrival[id(event)] = self.applied
                self._cancel()
            case _:
                pass

    @contextlib.contextmanager
    def _running_code(self) -> Iterator[None]:
        """While workflow code runs: this is the current instance, and asyncio sees
        _NoLoop as the running loop and its current task. The worker's own loop is back
        before anything awaits."""
        token = _current.set(self)
        loop, no_loop = asyncio.events._get_running_loop(), _no_loop()
        asyncio.events._set_running_loop(no_loop)
        asyncio.tasks._enter_task(no_loop, no_loop)
        try:
            yield
        finally:
            asyncio.tasks._leave_task(no_loop, no_loop)
            asyncio.events._set_running_loop(loop)
            _current.reset(token)

    def _run(self) -> None:
        if self._ready:
            with self._running_code():
                while self._ready and self._violation_error is None and self.continued is None:
                    self._ready.popleft().step()
        if self.continued is not None and not self.finished and self._violation_error is None:
            self._end_run()
            return
        main = self._main
        if main is not None and main.done and not self.finished and self._violation_error is None:
            self._finish(main)

    def _wake(self, tasks: list[_Task | _Combinator | _ChildDone]) -> None:
        for task in tasks:
            if isinstance(task, _Task):
                task.waiting_on = None
            elif isinstance(task, _ChildDone):
                task.combinator.mark(task.index)
            self._ready.append(task)

    def _violation(self, error: FlowsError, divergence: Divergence | None = None) -> None:
        if self._violation_error is None:
            self._violation_error = error
            self._divergence = divergence

    def _check_unmatched(self) -> None:
        if self._expected:
            seq = min(self._expected)
            recorded = self._expected[seq]
            self._violation(
                NonDeterminismError(
                    f"workflow {self.definition.name!r} v{self.definition.version}: the history "
                    f"records step #{seq} ({_describe(recorded)}) but the code no longer takes it"
                ),
                Divergence(seq, recorded, None),
            )

    # -- events --

    def _start(self, event: WorkflowStarted) -> None:
        if self._main is not None:
            self._violation(
                NonDeterminismError("history has two WorkflowStarted events"),
                Divergence(None, event, None),
            )
            return
        self.workflow_id, self.tenant_id, self.seed = event.workflow_id, event.tenant_id, event.seed
        self.parent = event.parent
        self.started = event
        from ._context import WorkflowContext

        ctx = WorkflowContext(self)
        main: Step[Any] = Step(0, "workflow")
        self._main = main
        try:
            value = decode_payload(
                event.input, self.definition.input_type, what=f"input of {self.definition.name!r}"
            )
        except PayloadError as exc:
            self._wake(main._resolve(exc=exc))
            return
        if event.execution_timeout is not None:
            # The deadline is step #0, recorded before any step the code takes; the
            # store fires it like any timer, and its TimerFired ends the workflow.
            self.execution_timeout = event.execution_timeout
            assert self.now is not None
            fire_at = event.at + event.execution_timeout
            try:
                self._take(TimerStarted(seq=DEADLINE_SEQ, fire_at=fire_at, at=self.now))
            except _Abort:
                return
        coro = self.definition.fn(ctx, value)
        self._ready.append(_Task(self, coro, main))

    def _resolve_activity(self, seq: int, event: ActivityCompleted | ActivityFailedEvent) -> None:
        entry = self._unpend(seq)
        if entry is None:
            if seq not in self._issued:
                self._violation(
                    NonDeterminismError(
                        f"history has a result for step #{seq}, which the code did not take"
                    ),
                    Divergence(seq, event, None),
                )
            return
        step, name = entry
        if isinstance(event, ActivityCompleted):
            activity = self._activity_types.get(seq)
            try:
                result = decode_payload(event.output, activity, what=f"output of activity {name!r}")
            except PayloadError as exc:
                self._wake(step._resolve(exc=exc))
                return
            self._wake(step._resolve(result))
        else:
            error = event.error
            self._wake(
                step._resolve(exc=ActivityFailed(name, error.type, error.message, error.attempts))
            )

    def _resolve_child(self, event: ChildWorkflowEnded) -> None:
        seq = event.seq
        self.open_children.pop(seq, None)
        entry = self._unpend(seq)
        if entry is None:
            if not isinstance(self._issued.get(seq), ChildStartRequested):
                self._violation(
                    NonDeterminismError(
                        f"history has a child result for step #{seq}, which the code did "
                        "not take as a child workflow"
                    ),
                    Divergence(seq, event, None),
                )
            return
        step = entry[0]
        if event.status == "completed":
            try:
                result = decode_payload(
                    event.output,
                    self._child_types.get(seq, Any),
                    what=f"output of child workflow {event.workflow_id!r}",
                )
            except PayloadError as exc:
                self._wake(step._resolve(exc=exc))
                return
            self._wake(step._resolve(result))
            return
        cause = event.error or ErrorInfo(type="Unknown", message="")
        error_type = ChildWorkflowCancelled if event.status == "cancelled" else ChildWorkflowFailed
        self._wake(step._resolve(exc=error_type(event.workflow_id, event.status, cause)))

    def _fire_timer(self, seq: int) -> None:
        wait = self._waits.pop(seq, None)
        if wait is not None:
            self._unpend(seq)
            self._wake(wait.step._resolve(None))
            return
        entry = self._unpend(seq)
        if entry is not None:
            self._wake(entry[0]._resolve(None))

    def _deadline_passed(self) -> None:
        """The execution deadline fired: end the workflow FAILED with WorkflowTimeout.
        No more workflow code runs (its coroutines are closed, so ``finally`` blocks run
        but can take no step); pending steps are dropped with the workflow (a terminal
        commit deletes all its tasks)."""
        assert self.now is not None
        if DEADLINE_SEQ not in self._issued:
            self._violation(
                NonDeterminismError("history has an execution deadline the workflow never set"),
                Divergence(DEADLINE_SEQ, TimerFired(seq=DEADLINE_SEQ, at=self.now), None),
            )
            return
        if self.finished:
            return
        self.finished = True
        self._terminated = True
        self._ready.clear()
        self._pending.clear()
        self._waits.clear()
        with self._running_code():
            for task in list(self._live):
                with contextlib.suppress(Exception, _Abort):
                    task.coro.close()
        # what ``finally`` blocks tried (asyncio, steps) does not keep the deadline from ending it
        self._violation_error = None
        self._live.clear()
        assert self.now is not None
        error = ErrorInfo(
            type=WorkflowTimeout.__name__,
            message=f"workflow {self.definition.name!r} did not finish within its "
            f"execution_timeout of {self.execution_timeout}",
        )
        self._record_terminal(WorkflowFailedEvent(error=error, at=self.now))

    def _end_run(self) -> None:
        """``ctx.continue_as_new`` was called: end this run (WorkflowContinuedAsNew). No
        more of its code runs (its coroutines are closed, so ``finally`` blocks run but
        can take no step); its pending steps are dropped with the run."""
        assert self.now is not None
        assert self.continued is not None
        self.finished = True
        self._terminated = True
        self._ready.clear()
        self._pending.clear()
        self._waits.clear()
        with self._running_code():
            for task in list(self._live):
                with contextlib.suppress(Exception, _Abort):
                    task.coro.close()
        self._violation_error = None
        self._live.clear()
        self._record_terminal(WorkflowContinuedAsNew(input=self.continued, at=self.now))

    def continue_as_new(self, payload: msgspec.Raw) -> None:
        """End this run and start the next with ``payload`` (see ``_end_run``); raises
        to unwind the calling code."""
        if self._violation_error is not None or self._terminated:
            raise _Abort
        if self.continued is None:
            self.continued = payload
        raise _ContinueAsNew

    def set_status(self, payload: msgspec.Raw) -> None:
        """Publish ``payload`` as the workflow's status (not a step)."""
        if self._violation_error is not None or self._terminated:
            raise _Abort
        self.published = payload

    def unconsumed(self) -> list[Event]:
        """What this run received and the code did not consume, in history order: the
        signals no wait took, and the cancel request if there was one (what a run
        continued as new hands over to the next)."""
        left: list[Event] = [e for queue in self._buffered.values() for e in queue]
        if self._cancel_event is not None:
            left.append(self._cancel_event)
        left.sort(key=lambda e: self._arrival.get(id(e), 0))
        return left

    def _deliver(self, event: SignalReceived) -> None:
        for seq, wait in self._waits.items():
            if wait.name == event.name:
                del self._waits[seq]
                self._unpend(seq)
                if wait.has_timeout:
                    self._drop(seq, "signal arrived before the timeout")
                self._wake(self._decoded(wait, event))
                return
        self._buffered.setdefault(event.name, deque()).append(event)

    def _decoded(
        self, wait: _SignalWait, event: SignalReceived
    ) -> list[_Task | _Combinator | _ChildDone]:
        try:
            value = decode_payload(event.payload, wait.type_, what=f"signal {event.name!r}")
        except PayloadError as exc:
            return wait.step._resolve(exc=exc)
        return wait.step._resolve(value)

    def _cancel(self) -> None:
        if self.cancel_requested:
            return
        self.cancel_requested = True
        for seq in sorted(self._pending):
            self._cancel_step(seq, "workflow cancel requested")

    def _cancel_step(self, seq: int, reason: str) -> None:
        """Cancel pending step ``seq``: StepCancelled is recorded (the store drops its
        timer or task), and whoever awaits it gets Cancelled."""
        step, _ = self._pending[seq]
        self._unpend(seq)
        self._waits.pop(seq, None)
        self.open_children.pop(seq, None)
        self._drop(seq, reason)
        self._wake(step._resolve(exc=Cancelled(reason)))

    def _unpend(self, seq: int) -> tuple[Step[Any], str] | None:
        """Step ``seq`` is no longer pending (resolved or cancelled)."""
        self._owner.pop(seq, None)
        return self._pending.pop(seq, None)

    def _cancel_task(self, task: _Task, reason: str) -> None:
        """Cancel a gather/race branch and the branches it started: each gets Cancelled
        at its next await, and the steps they took that are still pending are cancelled."""
        victims = [t for t in self._live if t.descends_from(task)]
        for victim in victims:
            if victim.cancel_reason is None:
                victim.cancel_reason = reason
                if victim.waiting_on is not None:
                    with contextlib.suppress(ValueError):
                        victim.waiting_on._waiters.remove(victim)
                    victim.waiting_on = None
                    self._ready.append(victim)
        for seq in sorted(self._pending):
            if self._owner.get(seq) in victims:
                self._cancel_step(seq, reason)

    def _cancel_awaitable(self, step: Step[Any], reason: str) -> None:
        """Cancel what ``step`` stands for, if it is still pending."""
        if step.done:
            return
        entry = self._pending.get(step.seq)
        if entry is not None and entry[0] is step:
            self._cancel_step(step.seq, reason)
        elif step in self._branches:
            self._cancel_task(self._branches[step], reason)
        elif step in self._combinators:
            self._combinators[step].cancel(reason)

    def _drop(self, seq: int, reason: str) -> None:
        if seq in self._expected_cancels:
            self._expected_cancels.discard(seq)
            return
        assert self.now is not None
        self._new.append(StepCancelled(seq=seq, reason=reason, at=self.now))

    def _finish(self, main: Step[Any]) -> None:
        self.finished = True
        assert self.now is not None
        exc = main._exc
        event: _TerminalEvent
        if exc is None:
            try:
                output = encode_payload(
                    main._result,
                    what=f"output of workflow {self.definition.name!r}",
                    expected_type=self.definition.output_type,
                    max_bytes=self.max_payload_bytes,
                )
            except PayloadError as perr:
                event = WorkflowFailedEvent(error=ErrorInfo.from_exception(perr), at=self.now)
            else:
                if self.cancel_requested:
                    event = WorkflowCancelledEvent(output=output, at=self.now)
                else:
                    event = WorkflowCompleted(output=output, at=self.now)
        elif isinstance(exc, Cancelled) and self.cancel_requested:
            event = WorkflowCancelledEvent(error=ErrorInfo.from_exception(exc), at=self.now)
        elif self._is_code_error(exc):
            self.finished = False
            self._violation(self._code_error(exc))
            return
        else:
            event = WorkflowFailedEvent(error=ErrorInfo.from_exception(exc), at=self.now)
        self._record_terminal(event)

    def _is_code_error(self, exc: BaseException) -> bool:
        """A bug in the code parks the workflow, unless the history already recorded
        the failure (it is replayed as it happened) or the workflow lists the
        exception in ``failure_exceptions``."""
        return (
            isinstance(exc, WORKFLOW_CODE_ERRORS)
            and not isinstance(exc, tuple(self.definition.failure_exceptions))
            and not isinstance(self._expected_terminal, WorkflowFailedEvent)
        )

    def _code_error(self, exc: BaseException) -> WorkflowCodeError:
        definition = self.definition
        where, tb = "", exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            code = tb.tb_frame.f_code
            where = f" at {code.co_filename}:{tb.tb_lineno} in {code.co_name}"
        error = WorkflowCodeError(
            f"workflow {definition.name!r} v{definition.version} raised "
            f"{type(exc).__name__}: {_safe_str(exc)}{where}. This is taken for a bug in the "
            "workflow code: the workflow is parked with its history intact; fix the code, "
            f"deploy it and call engine.retry({self.workflow_id!r}) to resume it. To fail the "
            "workflow on this exception instead, list it in "
            "@flows.workflow(..., failure_exceptions=(...))."
        )
        error.__cause__ = exc
        return error

    def _record_terminal(self, event: _TerminalEvent) -> None:
        recorded = self._expected_terminal
        if recorded is not None:
            if type(recorded) is not type(event):
                self._violation(
                    NonDeterminismError(
                        f"history says the workflow ended with {type(recorded).__name__}, "
                        f"the code now ends with {type(event).__name__}"
                    ),
                    Divergence(None, recorded, event),
                )
            return
        self._new.append(event)

    # -- commands (called from WorkflowContext inside workflow code) --

    def _take(self, event: _CommandEvent) -> bool:
        """Record that the code takes step ``event.seq``; True if it is new."""
        if self._violation_error is not None or self._terminated:
            raise _Abort
        seq = event.seq
        recorded = self._expected.pop(seq, None)
        self._issued[seq] = recorded if recorded is not None else event
        if recorded is not None:
            self._compare(seq, event, recorded)
            if self._violation_error is not None:
                raise _Abort
            return False
        self._new.append(event)
        return True

    def _compare(self, seq: int, taken: _CommandEvent, recorded: _CommandEvent) -> None:
        same = type(taken) is type(recorded)
        if same and isinstance(taken, ActivityScheduled):
            assert isinstance(recorded, ActivityScheduled)
            same = taken.name == recorded.name and same_payload(
                taken.input, recorded.input, self._input_types.get(seq, Any)
            )
        elif same and isinstance(taken, SignalWaitStarted):
            assert isinstance(recorded, SignalWaitStarted)
            same = taken.name == recorded.name and (
                (taken.timeout_at is None) == (recorded.timeout_at is None)
            )
        elif same and isinstance(taken, SideEffectRecorded):
            assert isinstance(recorded, SideEffectRecorded)
            same = taken.kind == recorded.kind
        elif same and isinstance(taken, ChildStartRequested):
            assert isinstance(recorded, ChildStartRequested)
            same = (
                taken.name == recorded.name
                and taken.workflow_id == recorded.workflow_id
                and same_payload(taken.input, recorded.input, self._input_types.get(seq, Any))
            )
        elif same and isinstance(taken, ChildSignalRequested):
            assert isinstance(recorded, ChildSignalRequested)
            same = taken.name == recorded.name and taken.workflow_id == recorded.workflow_id
        elif same and isinstance(taken, ChildCancelRequested):
            assert isinstance(recorded, ChildCancelRequested)
            same = taken.workflow_id == recorded.workflow_id
        if not same:
            self._violation(
                NonDeterminismError(
                    f"workflow {self.definition.name!r} v{self.definition.version}: step #{seq} "
                    f"is {_describe(taken)} now, but the history recorded {_describe(recorded)}"
                ),
                Divergence(seq, recorded, taken),
            )

    def patched(self, patch_id: str, *, deprecated: bool = False) -> bool:
        """Whether this run takes the new path of patch ``patch_id`` (see
        ``WorkflowContext.patched``). Decided on the run's first check of the id and the
        same for every later check: True if the history has the id's marker; False if
        the history records a step at or past this point (or the run's end) without
        it, so the run went there with the code before the patch; otherwise True, and
        the marker is recorded here. ``deprecated``: the code has no old path any more;
        a marker at another position is not a divergence."""
        if self._violation_error is not None or self._terminated:
            raise _Abort
        decided = self._patches.get(patch_id)
        if decided is not None:
            return decided
        assert self.now is not None
        position = self.next_seq
        path: PatchPath
        recorded = self._patch_markers.get(patch_id)
        if recorded is not None:
            if recorded.position != position and not deprecated:
                taken = PatchMarker(patch_id=patch_id, position=position, at=self.now)
                self._violation(
                    NonDeterminismError(
                        f"workflow {self.definition.name!r} v{self.definition.version}: patch "
                        f"{patch_id!r} is checked first before step #{position} now, but the "
                        f"history recorded it before step #{recorded.position}"
                    ),
                    Divergence(position, recorded, taken),
                )
                raise _Abort
            took, path = True, "new"
        elif self._recorded_end or self._recorded_horizon >= position:
            took, path = False, "old"
        else:
            took, path = True, "new_unrecorded"
            self._new.append(PatchMarker(patch_id=patch_id, position=position, at=self.now))
        self._patches[patch_id] = took
        self.patch_paths[patch_id] = path
        return took

    def _next_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def schedule_activity(
        self, name: str, payload: msgspec.Raw, output_type: Any, input_type: Any = Any
    ) -> Step[Any]:
        assert self.now is not None
        seq = self._next_seq()
        self._input_types[seq] = input_type
        self._take(ActivityScheduled(seq=seq, name=name, input=payload, at=self.now))
        self._owner[seq] = self._running
        step: Step[Any] = Step(seq, f"activity {name!r}")
        self._activity_types[seq] = output_type
        self._pending[seq] = (step, name)
        return step

    def start_timer(self, fire_at: datetime) -> Step[None]:
        assert self.now is not None
        seq = self._next_seq()
        self._take(TimerStarted(seq=seq, fire_at=fire_at, at=self.now))
        self._owner[seq] = self._running
        step: Step[None] = Step(seq, f"timer until {fire_at.isoformat()}")
        self._pending[seq] = (step, "timer")
        return step

    def wait_signal(self, name: str, type_: Any, timeout_at: datetime | None) -> Step[Any]:
        assert self.now is not None
        seq = self._next_seq()
        self._take(SignalWaitStarted(seq=seq, name=name, timeout_at=timeout_at, at=self.now))
        self._owner[seq] = self._running
        step: Step[Any] = Step(seq, f"signal {name!r}")
        wait = _SignalWait(step, name, type_, timeout_at is not None)
        buffered = self._buffered.get(name)
        if buffered:
            if timeout_at is not None:
                # Answered at once: drop the timeout, or its timer fires for nothing later.
                self._drop(seq, "signal was already buffered")
            self._wake(self._decoded(wait, buffered.popleft()))
            return step
        self._waits[seq] = wait
        self._pending[seq] = (step, f"signal {name}")
        return step

    def side_effect(self, kind: SideEffectKind, make: Callable[[int, datetime], str]) -> str:
        assert self.now is not None
        seq = self._next_seq()
        event = SideEffectRecorded(seq=seq, kind=kind, value=make(seq, self.now), at=self.now)
        self._take(event)
        recorded = self._issued[seq]
        assert isinstance(recorded, SideEffectRecorded)
        return recorded.value

    def start_child(
        self,
        name: str,
        version: int,
        workflow_id: str | None,
        payload: msgspec.Raw,
        policy: ParentClosePolicy,
        output_type: Any,
        input_type: Any = Any,
    ) -> tuple[str, Step[Any]]:
        """Take a child-workflow step: its id (``workflow_id``, or derived from this
        workflow's id and the step) and the step its end resolves."""
        assert self.now is not None
        seq = self._next_seq()
        child_id = workflow_id if workflow_id is not None else f"{self.workflow_id}/child-{seq}"
        self._input_types[seq] = input_type
        event = ChildStartRequested(
            seq=seq,
            name=name,
            version=version,
            workflow_id=child_id,
            input=payload,
            parent_close_policy=policy,
            at=self.now,
        )
        self._take(event)
        recorded = self._issued[seq]
        assert isinstance(recorded, ChildStartRequested)
        self._owner[seq] = self._running
        step: Step[Any] = Step(seq, f"child workflow {name!r} {recorded.workflow_id!r}")
        self._child_types[seq] = output_type
        self._pending[seq] = (step, f"child {name}")
        self.children[seq] = recorded
        self.open_children[seq] = recorded
        return recorded.workflow_id, step

    def signal_child(self, workflow_id: str, name: str, payload: msgspec.Raw) -> None:
        """Take a step that signals child ``workflow_id`` (done at once: sent on commit)."""
        assert self.now is not None
        seq = self._next_seq()
        self._take(
            ChildSignalRequested(
                seq=seq, workflow_id=workflow_id, name=name, payload=payload, at=self.now
            )
        )

    def cancel_child(self, workflow_id: str, reason: str) -> None:
        """Take a step that asks child ``workflow_id`` to cancel (sent on commit)."""
        assert self.now is not None
        seq = self._next_seq()
        self._take(
            ChildCancelRequested(seq=seq, workflow_id=workflow_id, reason=reason, at=self.now)
        )

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Step[T]:
        step: Step[T] = Step(0, "gather branch")
        task = _Task(self, coro, step, parent=self._running)
        self._branches[step] = task
        self._ready.append(task)
        return step

    def gather(self, steps: list[Step[Any]], return_exceptions: bool) -> Step[tuple[Any, ...]]:
        """All of ``steps``; the first failure at once (the others are cancelled),
        or every result and exception with ``return_exceptions``."""
        return _Combinator(self, steps, first=False, return_exceptions=return_exceptions).future

    def race(self, steps: list[Step[Any]], timeout: timedelta | None) -> Step[RaceResult[Any]]:
        """The first of ``steps`` to finish; the others are cancelled."""
        if timeout is not None:
            assert self.now is not None
            steps = [*steps, self.start_timer(self.now + timeout)]
        return _Combinator(self, steps, first=True, timeout=timeout).future

    def rng(self, seq: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.workflow_id}:{seq}")

    def uuid7_at(self, seq: int, now: datetime) -> UUID:
        millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
        bits = self.rng(seq).getrandbits(74)
        rand_a, rand_b = bits >> 62, bits & ((1 << 62) - 1)
        value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
        return UUID(int=value)

    # -- introspection --

    def is_pending(self, seq: int) -> bool:
        """True while step ``seq`` has been taken and not resolved or dropped."""
        return seq in self._pending

    def pending_steps(self) -> list[int]:
        return sorted(self._pending)

    def awaited_signals(self) -> dict[str, Any]:
        """The signals awaited now, by name, with the type each one's payload will be
        decoded as (that of the earliest pending wait for the name)."""
        awaited: dict[str, Any] = {}
        for wait in self._waits.values():
            awaited.setdefault(wait.name, wait.type_)
        return awaited


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


def _json_text(raw: msgspec.Raw, limit: int = 200) -> str:
    text = bytes(raw).decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(event: _CommandEvent) -> str:
    match event:
        case ActivityScheduled():
            return f"activity {event.name!r} with input {_json_text(event.input)}"
        case TimerStarted():
            return "a timer"
        case SignalWaitStarted():
            return f"a wait for signal {event.name!r}"
        case SideEffectRecorded():
            return f"{event.kind}()"
        case ChildStartRequested():
            return (
                f"child workflow {event.name!r} {event.workflow_id!r} with input "
                f"{_json_text(event.input)}"
            )
        case ChildSignalRequested():
            return f"signal {event.name!r} to child {event.workflow_id!r}"
        case ChildCancelRequested():
            return f"cancel of child {event.workflow_id!r}"
    return type(event).__name__


def replay(definition: Workflow[Any, Any], history: list[Event], now: datetime) -> Activation:
    """Run ``definition`` against ``history``; return the new commands. Pure."""
    return WorkflowInstance(definition).apply(history, now)


def awaited_signals(
    definition: Workflow[Any, Any], history: list[Event], now: datetime
) -> dict[str, Any]:
    """The signals a workflow waits for after ``history``, by name, with the type each
    payload will be decoded as: what a signal sent now must match. Pure (replays the
    history); raises the error that would park the workflow if the replay cannot go on."""
    instance = WorkflowInstance(definition)
    activation = instance.apply(history, now)
    if activation.park_error is not None:
        raise activation.park_error
    return instance.awaited_signals()
