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

Steps the code takes that the history does not have are returned as new command events
in ``Activation.new_events``; the worker turns them into store writes and the history
grows by exactly those events. The same instance can be fed further events later (the
sticky cache): its own commands come back as echoes and are matched like any others.

Pure: no I/O, no clock (``now`` is an argument), no global randomness.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec

from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, decode_payload, encode_payload
from ._definitions import Workflow
from ._errors import (
    ActivityFailed,
    Cancelled,
    ErrorInfo,
    IllegalAwaitError,
    NonDeterminismError,
    PayloadError,
    WorkflowTimeout,
)
from .events import (
    DEADLINE_SEQ,
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    SideEffectKind,
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
)

__all__ = ["Activation", "Step", "WorkflowInstance", "current_instance", "replay"]

T = TypeVar("T")

_CommandEvent = ActivityScheduled | TimerStarted | SignalWaitStarted | SideEffectRecorded
_TerminalEvent = WorkflowCompleted | WorkflowFailedEvent | WorkflowCancelledEvent
_COMMAND_TYPES = (ActivityScheduled, TimerStarted, SignalWaitStarted, SideEffectRecorded)
_TERMINAL_TYPES = (WorkflowCompleted, WorkflowFailedEvent, WorkflowCancelledEvent)

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


class _Abort(BaseException):
    """Unwinds workflow code after a determinism violation; not catchable as Exception."""


class Step(Generic[T]):
    """A Flows awaitable: resolved by the replay driver, never by asyncio."""

    __slots__ = ("_done", "_exc", "_result", "_waiters", "description", "seq")

    def __init__(self, seq: int, description: str) -> None:
        self.seq = seq
        self.description = description
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._waiters: list[_Task] = []

    @property
    def done(self) -> bool:
        return self._done

    def _resolve(self, result: Any = None, exc: BaseException | None = None) -> list[_Task]:
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

    __slots__ = ("coro", "future", "instance")

    def __init__(
        self, instance: WorkflowInstance, coro: Coroutine[Any, Any, Any], future: Step[Any]
    ):
        self.instance, self.coro, self.future = instance, coro, future
        instance._live.add(self)

    def step(self) -> None:
        instance = self.instance
        try:
            yielded = self.coro.send(None)
        except StopIteration as stop:
            instance._live.discard(self)
            instance._wake(self.future._resolve(stop.value))
            return
        except _Abort:
            instance._live.discard(self)
            return
        except Exception as exc:
            instance._live.discard(self)
            instance._wake(self.future._resolve(exc=exc))
            return
        if isinstance(yielded, Step):
            if yielded.done:
                instance._ready.append(self)
            else:
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
        self.coro.close()


@dataclass
class Activation:
    """Result of applying events: new command events, and whether replay diverged."""

    new_events: list[Event] = field(default_factory=list)
    nondeterminism: NonDeterminismError | None = None
    finished: bool = False


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
        self._live: set[_Task] = set()
        self._ready: deque[_Task] = deque()
        self._main: Step[Any] | None = None
        self._expected: dict[int, _CommandEvent] = {}
        self._expected_cancels: set[int] = set()
        self._expected_terminal: _TerminalEvent | None = None
        self._issued: dict[int, _CommandEvent] = {}
        self._pending: dict[int, tuple[Step[Any], str]] = {}
        self._waits: dict[int, _SignalWait] = {}
        self._buffered: dict[str, deque[SignalReceived]] = {}
        self._activity_types: dict[int, Any] = {}
        self._new: list[Event] = []
        self._violation_error: NonDeterminismError | None = None

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
            nondeterminism=self._violation_error,
            finished=self.finished,
        )

    def _index(self, event: Event) -> None:
        if isinstance(event, _COMMAND_TYPES):
            issued = self._issued.get(event.seq)
            if issued is not None:
                self._compare(event.seq, issued, event)
            else:
                self._expected[event.seq] = event
        elif isinstance(event, StepCancelled):
            self._expected_cancels.add(event.seq)
        elif isinstance(event, _TERMINAL_TYPES):
            self._expected_terminal = event

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
            case TimerFired():
                self._fire_timer(event.seq)
            case SignalReceived():
                self._deliver(event)
            case CancelRequested():
                self._cancel()
            case _:
                pass

    def _run(self) -> None:
        token = _current.set(self)
        try:
            while self._ready and self._violation_error is None:
                self._ready.popleft().step()
        finally:
            _current.reset(token)
        main = self._main
        if main is not None and main.done and not self.finished and self._violation_error is None:
            self._finish(main)

    def _wake(self, tasks: list[_Task]) -> None:
        self._ready.extend(tasks)

    def _violation(self, error: NonDeterminismError) -> None:
        if self._violation_error is None:
            self._violation_error = error

    def _check_unmatched(self) -> None:
        if self._expected:
            seq = min(self._expected)
            recorded = self._expected[seq]
            self._violation(
                NonDeterminismError(
                    f"workflow {self.definition.name!r} v{self.definition.version}: the history "
                    f"records step #{seq} ({_describe(recorded)}) but the code no longer takes it"
                )
            )

    # -- events --

    def _start(self, event: WorkflowStarted) -> None:
        if self._main is not None:
            self._violation(NonDeterminismError("history has two WorkflowStarted events"))
            return
        self.workflow_id, self.tenant_id, self.seed = event.workflow_id, event.tenant_id, event.seed
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
        entry = self._pending.pop(seq, None)
        if entry is None:
            if seq not in self._issued:
                self._violation(
                    NonDeterminismError(
                        f"history has a result for step #{seq}, which the code did not take"
                    )
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

    def _fire_timer(self, seq: int) -> None:
        wait = self._waits.pop(seq, None)
        if wait is not None:
            self._pending.pop(seq, None)
            self._wake(wait.step._resolve(None))
            return
        entry = self._pending.pop(seq, None)
        if entry is not None:
            self._wake(entry[0]._resolve(None))

    def _deadline_passed(self) -> None:
        """The execution deadline fired: end the workflow FAILED with WorkflowTimeout.
        No more workflow code runs (its coroutines are closed, so ``finally`` blocks run
        but can take no step); pending steps are dropped with the workflow (a terminal
        commit deletes all its tasks)."""
        if DEADLINE_SEQ not in self._issued:
            self._violation(
                NonDeterminismError("history has an execution deadline the workflow never set")
            )
            return
        if self.finished:
            return
        self.finished = True
        self._terminated = True
        self._ready.clear()
        self._pending.clear()
        self._waits.clear()
        token = _current.set(self)
        try:
            for task in list(self._live):
                with contextlib.suppress(Exception, _Abort):
                    task.coro.close()
        finally:
            _current.reset(token)
        self._live.clear()
        assert self.now is not None
        error = ErrorInfo(
            type=WorkflowTimeout.__name__,
            message=f"workflow {self.definition.name!r} did not finish within its "
            f"execution_timeout of {self.execution_timeout}",
        )
        self._record_terminal(WorkflowFailedEvent(error=error, at=self.now))

    def _deliver(self, event: SignalReceived) -> None:
        for seq, wait in self._waits.items():
            if wait.name == event.name:
                del self._waits[seq]
                self._pending.pop(seq, None)
                if wait.has_timeout:
                    self._drop(seq, "signal arrived before the timeout")
                self._wake(self._decoded(wait, event))
                return
        self._buffered.setdefault(event.name, deque()).append(event)

    def _decoded(self, wait: _SignalWait, event: SignalReceived) -> list[_Task]:
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
            step, _ = self._pending.pop(seq)
            self._waits.pop(seq, None)
            self._drop(seq, "workflow cancel requested")
            self._wake(step._resolve(exc=Cancelled("workflow cancel requested")))

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
        else:
            event = WorkflowFailedEvent(error=ErrorInfo.from_exception(exc), at=self.now)
        self._record_terminal(event)

    def _record_terminal(self, event: _TerminalEvent) -> None:
        recorded = self._expected_terminal
        if recorded is not None:
            if type(recorded) is not type(event):
                self._violation(
                    NonDeterminismError(
                        f"history says the workflow ended with {type(recorded).__name__}, "
                        f"the code now ends with {type(event).__name__}"
                    )
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
            same = taken.name == recorded.name and _same_json(taken.input, recorded.input)
        elif same and isinstance(taken, SignalWaitStarted):
            assert isinstance(recorded, SignalWaitStarted)
            same = taken.name == recorded.name and (
                (taken.timeout_at is None) == (recorded.timeout_at is None)
            )
        elif same and isinstance(taken, SideEffectRecorded):
            assert isinstance(recorded, SideEffectRecorded)
            same = taken.kind == recorded.kind
        if not same:
            self._violation(
                NonDeterminismError(
                    f"workflow {self.definition.name!r} v{self.definition.version}: step #{seq} "
                    f"is {_describe(taken)} now, but the history recorded {_describe(recorded)}"
                )
            )

    def _next_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def schedule_activity(self, name: str, payload: msgspec.Raw, output_type: Any) -> Step[Any]:
        assert self.now is not None
        seq = self._next_seq()
        self._take(ActivityScheduled(seq=seq, name=name, input=payload, at=self.now))
        step: Step[Any] = Step(seq, f"activity {name!r}")
        self._activity_types[seq] = output_type
        self._pending[seq] = (step, name)
        return step

    def start_timer(self, fire_at: datetime) -> Step[None]:
        assert self.now is not None
        seq = self._next_seq()
        self._take(TimerStarted(seq=seq, fire_at=fire_at, at=self.now))
        step: Step[None] = Step(seq, f"timer until {fire_at.isoformat()}")
        self._pending[seq] = (step, "timer")
        return step

    def wait_signal(self, name: str, type_: Any, timeout_at: datetime | None) -> Step[Any]:
        assert self.now is not None
        seq = self._next_seq()
        self._take(SignalWaitStarted(seq=seq, name=name, timeout_at=timeout_at, at=self.now))
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

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Step[T]:
        step: Step[T] = Step(0, "gather branch")
        self._ready.append(_Task(self, coro, step))
        return step

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

    def signal_wait_type(self, name: str) -> Any | None:
        """The type that the next signal ``name`` will be decoded as: that of the
        earliest pending wait for it; None when no wait for it is pending."""
        for wait in self._waits.values():
            if wait.name == name:
                return wait.type_
        return None


def _same_json(a: msgspec.Raw, b: msgspec.Raw) -> bool:
    """Equal JSON values: a store may normalise the stored text (jsonb spacing, key order)."""
    if bytes(a) == bytes(b):
        return True
    try:
        canon_a = msgspec.json.encode(msgspec.json.decode(a), order="sorted")
        canon_b = msgspec.json.encode(msgspec.json.decode(b), order="sorted")
    except msgspec.DecodeError:
        return False
    return canon_a == canon_b


def _describe(event: _CommandEvent) -> str:
    match event:
        case ActivityScheduled():
            return f"activity {event.name!r} with input {bytes(event.input)[:80]!r}"
        case TimerStarted():
            return "a timer"
        case SignalWaitStarted():
            return f"a wait for signal {event.name!r}"
        case SideEffectRecorded():
            return f"{event.kind}()"
    return type(event).__name__


def replay(definition: Workflow[Any, Any], history: list[Event], now: datetime) -> Activation:
    """Run ``definition`` against ``history``; return the new commands. Pure."""
    return WorkflowInstance(definition).apply(history, now)
