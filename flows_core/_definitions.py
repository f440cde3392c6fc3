"""Typed workflow and activity definitions, and the retry policy."""

from __future__ import annotations

import asyncio
import inspect
import random
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from ._codec import check_name
from ._errors import InvalidArgument, TerminalError
from ._limits import ACTIVITY_PRIORITIES, ActivityLimits, check_max_running, check_priority

if TYPE_CHECKING:
    from ._context import WorkflowContext

__all__ = ["Activity", "RetryPolicy", "Workflow", "activity", "workflow"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing activity is retried.

    Delay before attempt n+1 is ``initial_interval * backoff**(n-1)``, capped at
    ``max_interval``, spread by +/- ``jitter`` (a fraction). ``max_attempts`` counts the
    first attempt. Exceptions of a ``non_retryable`` type, and ``flows.TerminalError``,
    fail the activity at once.
    """

    initial_interval: timedelta = timedelta(seconds=1)
    backoff: float = 2.0
    max_interval: timedelta = timedelta(hours=1)
    max_attempts: int = 10
    jitter: float = 0.1
    non_retryable: Sequence[type[BaseException]] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument("RetryPolicy.max_attempts must be at least 1")
        if self.backoff < 1.0:
            raise InvalidArgument("RetryPolicy.backoff must be at least 1.0")
        if not 0.0 <= self.jitter <= 1.0:
            raise InvalidArgument("RetryPolicy.jitter must be between 0 and 1")
        if self.initial_interval < timedelta(0) or self.max_interval < self.initial_interval:
            raise InvalidArgument("RetryPolicy intervals must satisfy 0 <= initial <= max")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a failure of attempt number ``attempt`` (1-based) is retried."""
        if attempt >= self.max_attempts or isinstance(exc, TerminalError):
            return False
        return not any(isinstance(exc, t) for t in self.non_retryable)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Delay after the failure of attempt number ``attempt`` (1-based)."""
        base = self.initial_interval.total_seconds() * self.backoff ** (attempt - 1)
        base = min(base, self.max_interval.total_seconds())
        if self.jitter:
            base *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return timedelta(seconds=max(base, 0.0))


def _hints(fn: Callable[..., Any], what: str, *, transactional: bool = False) -> tuple[Any, Any]:
    """(input type, output type) from the function's annotations; Any where missing."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise InvalidArgument(f"{what}: cannot resolve type annotations: {exc}") from exc
    params = list(inspect.signature(fn).parameters.values())
    offset = 1 if what.startswith("workflow") or transactional else 0
    if len(params) != offset + 1:
        if transactional:
            _refuse_transactional(fn, what, f"takes {len(params)} parameter(s)")
        expected = "(ctx, input)" if offset else "(input)"
        raise InvalidArgument(f"{what}: function must take exactly {expected}")
    if transactional:
        _check_connection_hint(fn, what, hints.get(params[0].name))
    input_type = hints.get(params[offset].name, Any)
    output_type = hints.get("return", Any)
    if output_type is type(None):
        output_type = None
    return input_type, output_type


def _refuse_transactional(fn: Callable[..., Any], what: str, problem: str) -> None:
    conn = "psycopg.AsyncConnection" if inspect.iscoroutinefunction(fn) else "psycopg.Connection"
    kind = "async def" if inspect.iscoroutinefunction(fn) else "def"
    raise InvalidArgument(
        f"{what} is transactional=True but its function {problem}: a transactional "
        f"activity is `{kind} {fn.__name__}(conn, input)`, where conn is a {conn} in an "
        "open transaction (the memory store gives a flows_memory.MemoryTransaction)"
    )


def _check_connection_hint(fn: Callable[..., Any], what: str, hint: Any) -> None:
    """Refuse a connection annotation of the other kind (a sync ``psycopg.Connection`` on
    an ``async def``, an ``AsyncConnection`` on a ``def``); flows_core does not import
    psycopg, so the annotation is compared by name."""
    name = getattr(typing.get_origin(hint) or hint, "__name__", "")
    is_async = inspect.iscoroutinefunction(fn)
    if is_async and name == "Connection":
        _refuse_transactional(fn, what, "is async but annotates a sync Connection")
    if not is_async and name == "AsyncConnection":
        _refuse_transactional(fn, what, "is sync but annotates an AsyncConnection")


class Activity(Generic[I, O]):
    """A named unit of side-effecting work, run by workers with retries."""

    __slots__ = (
        "fn",
        "heartbeat_timeout",
        "input_type",
        "is_async",
        "limits",
        "name",
        "output_type",
        "priority",
        "retry",
        "schedule_to_close",
        "timeout",
        "transactional",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[[I], Awaitable[O]] | Callable[[I], O] | Callable[..., Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        schedule_to_close: timedelta | None = None,
        transactional: bool = False,
        max_concurrent: int | None = None,
        concurrency_key: Callable[[I], Any] | None = None,
        rate_limit: str | None = None,
        rate_key: Callable[[I], Any] | None = None,
        priority: int = 0,
    ) -> None:
        self.name = check_name(name, "activity name")
        self.fn = fn
        self.priority = check_priority(priority, f"activity {name!r}")
        if priority:
            ACTIVITY_PRIORITIES[self.name] = priority
        """Queued tasks of this activity go this many seconds ahead in the claim order."""
        self.limits = ActivityLimits.of(name, max_concurrent, concurrency_key, rate_limit, rate_key)
        """Flow control (flows_core._limits): None when the activity has none."""
        self.retry = retry or RetryPolicy()
        for value, what in (
            (timeout, "timeout"),
            (heartbeat_timeout, "heartbeat_timeout"),
            (schedule_to_close, "schedule_to_close"),
        ):
            _check_duration(value, f"activity {name!r} {what}")
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.schedule_to_close = schedule_to_close
        """Deadline of the whole step, from when the workflow first scheduled it, across
        every attempt and retry delay (ScheduleToCloseTimeout)."""
        self.is_async = inspect.iscoroutinefunction(fn)
        if not isinstance(transactional, bool):
            raise InvalidArgument(f"activity {name!r} transactional must be True or False")
        self.transactional = transactional
        """``fn(conn, input)`` runs in a database transaction that also records its
        result (see the README, "Transactional activities")."""
        self.input_type, self.output_type = _hints(
            fn, f"activity {name!r}", transactional=transactional
        )

    async def run(self, value: I) -> O:
        """Run the function once (sync ones in a thread)."""
        if self.is_async:
            return await self.fn(value)  # type: ignore[no-any-return,misc]
        return await asyncio.to_thread(self.fn, value)  # type: ignore[no-any-return]

    if not TYPE_CHECKING:  # type checkers keep reporting a direct call as an error

        def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
            raise TypeError(
                f"activity {self.name!r} was called directly; in workflow code run it as a "
                f"durable step with `await ctx.execute({self.fn.__name__}, input)`, and to "
                f"call the plain function use `{self.fn.__name__}.fn(input)`"
            )

    def __repr__(self) -> str:
        return f"<Activity {self.name}>"


class Workflow(Generic[I, O]):
    """A named, versioned durable function ``async def f(ctx, input) -> output``."""

    __slots__ = (
        "failure_exceptions",
        "fn",
        "input_type",
        "max_running",
        "name",
        "output_type",
        "version",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[[WorkflowContext, I], Awaitable[O]],
        *,
        version: int = 1,
        failure_exceptions: Sequence[type[BaseException]] = (),
        max_running: int | None = None,
    ) -> None:
        self.name = check_name(name, "workflow name")
        self.max_running = check_max_running(name, max_running)
        """At most this many workflows of this name run at once (None: no limit)."""
        if "-shard-" in name:
            raise InvalidArgument(f"workflow name {name!r} must not contain '-shard-'")
        _check_version(version)
        if not inspect.iscoroutinefunction(fn):
            raise InvalidArgument(f"workflow {name!r} must be an async def function")
        self.fn = fn
        self.version = version
        self.failure_exceptions = _check_exception_types(failure_exceptions, name)
        """Exceptions that fail the workflow although they would park it as bugs in
        the code (flows.WORKFLOW_CODE_ERRORS)."""
        self.input_type, self.output_type = _hints(fn, f"workflow {name!r}")

    def __repr__(self) -> str:
        return f"<Workflow {self.name} v{self.version}>"


@overload
def activity(
    name: str,
    *,
    retry: RetryPolicy | None = ...,
    timeout: timedelta | None = ...,
    heartbeat_timeout: timedelta | None = ...,
    schedule_to_close: timedelta | None = ...,
    transactional: bool = ...,
    max_concurrent: int | None = ...,
    concurrency_key: Callable[[Any], Any] | None = ...,
    rate_limit: str | None = ...,
    rate_key: Callable[[Any], Any] | None = ...,
    priority: int = ...,
) -> _ActivityDecorator: ...
@overload
def activity(name: str, **kwargs: Any) -> _ActivityDecorator: ...
def activity(
    name: str,
    *,
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
    schedule_to_close: timedelta | None = None,
    transactional: bool = False,
    max_concurrent: int | None = None,
    concurrency_key: Callable[[Any], Any] | None = None,
    rate_limit: str | None = None,
    rate_key: Callable[[Any], Any] | None = None,
    priority: int = 0,
    **kwargs: Any,
) -> _ActivityDecorator:
    """Declare an activity: ``@flows.activity("charge", retry=RetryPolicy(...))``.

    ``timeout`` bounds each attempt (ActivityTimeout, retried), ``heartbeat_timeout``
    the time between ``flows.heartbeat()`` calls (HeartbeatTimeout, retried), and
    ``schedule_to_close`` the whole step from when it was first scheduled, retries
    included (ScheduleToCloseTimeout, not retried).

    ``transactional=True``: the function is ``f(conn, input)`` and runs inside a database
    transaction of the store's database that also records its result, so its SQL
    effects happen exactly once (``async def`` gets a psycopg ``AsyncConnection``, a
    ``def`` a ``Connection``, run in a thread; the memory store gives a
    ``flows_memory.MemoryTransaction`` stand-in). ``timeout`` then bounds the whole
    transaction: the query is cancelled and everything rolled back.

    Flow control, enforced in the store across every worker: ``max_concurrent`` attempts
    at once (per value of ``concurrency_key(input)`` when given; 1 if only the key is),
    ``rate_limit`` ("100/s", "5/m", "1000/h") starts (per ``rate_key(input)`` when
    given). A step runs inline only when it gets its slot (rate-limited: always
    queued). ``priority`` (0 to 1000): its queued tasks are claimed before tasks that
    have waited less than that many seconds (inline attempts run at once anyway).
    """
    if kwargs:
        raise InvalidArgument(f"activity(): unknown option(s) {sorted(kwargs)}")
    check_name(name, "activity name")
    limits = ActivityLimits.of(name, max_concurrent, concurrency_key, rate_limit, rate_key)
    check_priority(priority, f"activity {name!r}")
    return _ActivityDecorator(
        name, retry, timeout, heartbeat_timeout, schedule_to_close, limits, priority, transactional
    )


class _ActivityDecorator:
    __slots__ = (
        "heartbeat_timeout",
        "limits",
        "name",
        "priority",
        "retry",
        "schedule_to_close",
        "timeout",
        "transactional",
    )

    def __init__(
        self,
        name: str,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        heartbeat_timeout: timedelta | None,
        schedule_to_close: timedelta | None = None,
        limits: ActivityLimits | None = None,
        priority: int = 0,
        transactional: bool = False,
    ) -> None:
        self.name, self.retry, self.timeout = name, retry, timeout
        self.priority = priority
        self.heartbeat_timeout = heartbeat_timeout
        self.schedule_to_close = schedule_to_close
        self.transactional = transactional
        self.limits = limits

    @overload
    def __call__(self, fn: Callable[[I], Awaitable[O]]) -> Activity[I, O]: ...
    @overload
    def __call__(self, fn: Callable[[Any, I], Awaitable[O]]) -> Activity[I, O]: ...
    @overload
    def __call__(self, fn: Callable[[I], O]) -> Activity[I, O]: ...
    @overload
    def __call__(self, fn: Callable[[Any, I], O]) -> Activity[I, O]: ...
    def __call__(self, fn: Callable[..., Any]) -> Activity[Any, Any]:
        made: Activity[Any, Any] = Activity(
            self.name,
            fn,
            retry=self.retry,
            timeout=self.timeout,
            heartbeat_timeout=self.heartbeat_timeout,
            schedule_to_close=self.schedule_to_close,
            transactional=self.transactional,
            priority=self.priority,
        )
        made.limits = self.limits
        return made


def _check_duration(value: object, what: str) -> None:
    if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
        raise InvalidArgument(f"{what} must be a positive timedelta or None, got {value!r}")


def _check_version(version: object) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidArgument(f"workflow version must be an integer >= 1, got {version!r}")


def _check_exception_types(types: object, workflow_name: str) -> tuple[type[BaseException], ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, Sequence) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        raise InvalidArgument(
            f"workflow {workflow_name!r}: failure_exceptions must be a sequence of exception "
            f"classes, got {types!r}"
        )
    return tuple(types)


def workflow(
    name: str,
    *,
    version: int = 1,
    failure_exceptions: Sequence[type[BaseException]] = (),
    max_running: int | None = None,
) -> Callable[[Callable[[WorkflowContext, I], Awaitable[O]]], Workflow[I, O]]:
    """Declare a workflow: ``@flows.workflow("order-workflow", version=1)``.

    An exception escaping the workflow code fails the workflow, except the bugs in
    ``flows.WORKFLOW_CODE_ERRORS`` (TypeError, AttributeError, NameError...), which park
    it so that a code fix and ``engine.retry()`` resume it. Exception types listed in
    ``failure_exceptions`` fail the workflow even when they are in that set.

    ``max_running``: at most this many workflows of this name run at once, across every
    worker; the others wait for a slot before their code starts (enforced in the store).
    """
    check_name(name, "workflow name")
    _check_version(version)
    _check_exception_types(failure_exceptions, name)
    check_max_running(name, max_running)

    def decorate(fn: Callable[[WorkflowContext, I], Awaitable[O]]) -> Workflow[I, O]:
        return Workflow(
            name,
            fn,
            version=version,
            failure_exceptions=failure_exceptions,
            max_running=max_running,
        )

    return decorate
