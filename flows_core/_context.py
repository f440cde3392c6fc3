"""What workflow code sees: ``WorkflowContext`` and ``flows.gather``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload
from uuid import UUID

from ._codec import check_name, encode_payload
from ._definitions import Activity
from ._errors import InvalidArgument
from ._replay import Step, WorkflowInstance, current_instance

__all__ = ["WorkflowContext", "gather"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")


class WorkflowContext:
    """The workflow's handle on durable steps. Every method is deterministic on replay."""

    __slots__ = ("_instance",)

    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance

    @property
    def workflow_id(self) -> str:
        return self._instance.workflow_id

    @property
    def tenant_id(self) -> str:
        return self._instance.tenant_id

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel request has been applied to this workflow."""
        return self._instance.cancel_requested

    def execute(self, activity: Activity[I, O], input: I) -> Step[O]:
        """Schedule ``activity`` with ``input``; await the result (ActivityFailed on failure)."""
        if not isinstance(activity, Activity):
            raise InvalidArgument(
                f"ctx.execute() takes an Activity made with @flows.activity, got {activity!r}"
            )
        payload = encode_payload(
            input,
            what=f"input of activity {activity.name!r}",
            expected_type=activity.input_type,
            max_bytes=self._instance.max_payload_bytes,
        )
        return self._instance.schedule_activity(activity.name, payload, activity.output_type)

    def sleep(self, duration: timedelta | float) -> Step[None]:
        """A durable timer: resumes after ``duration`` (a timedelta or seconds)."""
        if not isinstance(duration, timedelta):
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                raise InvalidArgument("ctx.sleep() takes a timedelta or a number of seconds")
            duration = timedelta(seconds=duration)
        if duration < timedelta(0):
            raise InvalidArgument(f"ctx.sleep() duration must not be negative, got {duration}")
        now = self._instance.now
        assert now is not None
        return self._instance.start_timer(now + duration)

    def sleep_until(self, when: datetime) -> Step[None]:
        """A durable timer until ``when`` (timezone-aware)."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise InvalidArgument("ctx.sleep_until() takes a timezone-aware datetime")
        return self._instance.start_timer(when.astimezone(UTC))

    @overload
    def wait_for_signal(self, name: str, type_: type[T], timeout: None = None) -> Step[T]: ...
    @overload
    def wait_for_signal(
        self, name: str, type_: type[T], timeout: timedelta | float
    ) -> Step[T | None]: ...
    def wait_for_signal(
        self, name: str, type_: type[T], timeout: timedelta | float | None = None
    ) -> Step[T] | Step[T | None]:
        """Wait for the next signal called ``name``, decoded as ``type_``.

        Signals are delivered FIFO per name, each to exactly one wait; one sent before
        the wait is buffered. With ``timeout``, returns None if the timeout wins. A
        payload that does not decode as ``type_`` raises PayloadError here.
        """
        check_name(name, "signal name")
        timeout_at = None
        if timeout is not None:
            if not isinstance(timeout, timedelta):
                timeout = timedelta(seconds=timeout)
            if timeout < timedelta(0):
                raise InvalidArgument("wait_for_signal() timeout must not be negative")
            now = self._instance.now
            assert now is not None
            timeout_at = now + timeout
        return self._instance.wait_signal(name, type_, timeout_at)

    def now(self) -> datetime:
        """The current time, recorded on first run and replayed identically."""
        value = self._instance.side_effect("now", lambda _seq, now: now.isoformat())
        return datetime.fromisoformat(value)

    def random(self) -> float:
        """A float in [0, 1), recorded and replayed identically."""
        instance = self._instance
        value = instance.side_effect("random", lambda seq, _now: repr(instance.rng(seq).random()))
        return float(value)

    def uuid7(self) -> UUID:
        """A UUIDv7, recorded and replayed identically."""
        instance = self._instance
        value = instance.side_effect("uuid7", lambda seq, now: str(instance.uuid7_at(seq, now)))
        return UUID(value)


def _as_step(aw: Awaitable[Any], instance: WorkflowInstance) -> Step[Any]:
    if isinstance(aw, Step):
        return aw
    if inspect.iscoroutine(aw):
        return instance.spawn(aw)
    raise InvalidArgument(
        f"flows.gather() takes Flows steps or coroutines of workflow code, got {aw!r}"
    )


async def _gather_all(steps: list[Step[Any]], return_exceptions: bool) -> list[Any]:
    results: list[Any] = []
    first_error: BaseException | None = None
    for step in steps:
        try:
            results.append(await step)
        except Exception as exc:
            if not return_exceptions:
                first_error = first_error or exc
            results.append(exc)
    if first_error is not None:
        raise first_error
    return results


@overload
def gather(a1: Awaitable[T1], /, *, return_exceptions: bool = False) -> Step[tuple[T1]]: ...
@overload
def gather(
    a1: Awaitable[T1], a2: Awaitable[T2], /, *, return_exceptions: bool = False
) -> Step[tuple[T1, T2]]: ...
@overload
def gather(
    a1: Awaitable[T1], a2: Awaitable[T2], a3: Awaitable[T3], /, *, return_exceptions: bool = False
) -> Step[tuple[T1, T2, T3]]: ...
@overload
def gather(
    a1: Awaitable[T1],
    a2: Awaitable[T2],
    a3: Awaitable[T3],
    a4: Awaitable[T4],
    /,
    *,
    return_exceptions: bool = False,
) -> Step[tuple[T1, T2, T3, T4]]: ...
@overload
def gather(
    a1: Awaitable[T1],
    a2: Awaitable[T2],
    a3: Awaitable[T3],
    a4: Awaitable[T4],
    a5: Awaitable[T5],
    /,
    *,
    return_exceptions: bool = False,
) -> Step[tuple[T1, T2, T3, T4, T5]]: ...
@overload
def gather(*aws: Awaitable[T], return_exceptions: bool = False) -> Step[tuple[T, ...]]: ...
def gather(*aws: Awaitable[Any], return_exceptions: bool = False) -> Step[tuple[Any, ...]]:
    """Run steps (or coroutines of workflow code) in parallel; await all their results.

    Results come back in argument order. Without ``return_exceptions`` the first
    failure (in argument order, after all have finished) is raised.
    """
    instance = current_instance()
    steps = [_as_step(aw, instance) for aw in aws]
    coro: Coroutine[Any, Any, Any] = _tuple(_gather_all(steps, return_exceptions))
    return instance.spawn(coro)


async def _tuple(coro: Coroutine[Any, Any, list[Any]]) -> tuple[Any, ...]:
    return tuple(await coro)
