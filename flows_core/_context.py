"""What workflow code sees: ``WorkflowContext``, ``flows.gather`` and ``flows.race``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, NoReturn, TypeVar, get_args, overload
from uuid import UUID

from ._codec import check_id, check_name, encode_payload
from ._definitions import Activity, Workflow
from ._errors import InvalidArgument
from ._replay import RaceResult, Step, WorkflowInstance, current_instance
from .events import ParentClosePolicy

__all__ = ["MAX_STATUS_BYTES", "ChildHandle", "WorkflowContext", "gather", "race"]

_POLICIES: tuple[str, ...] = get_args(ParentClosePolicy)

MAX_STATUS_BYTES: Final = 16 * 1024
"""The largest status ``ctx.set_status`` publishes (its JSON, in bytes)."""

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")


class ChildHandle(Generic[O]):
    """A child workflow started by ``ctx.start_child``: await it (or ``result()``) for
    its output, ``signal`` it, ``cancel`` it. Awaiting raises ``ChildWorkflowFailed``
    (``ChildWorkflowCancelled``) with the child's error as ``cause`` if it did not
    complete."""

    __slots__ = ("_instance", "_step", "workflow_id")

    def __init__(self, instance: WorkflowInstance, workflow_id: str, step: Step[O]) -> None:
        self._instance = instance
        self.workflow_id = workflow_id
        self._step = step

    def result(self) -> Step[O]:
        """The child's output (a step: await it, or pass it to flows.gather/race)."""
        return self._step

    def __await__(self) -> Generator[Any, None, O]:
        return self._step.__await__()

    def signal(self, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to the child; delivered once, after this workflow task
        commits (a step of this workflow)."""
        check_name(name, "signal name")
        raw = encode_payload(
            payload,
            what=f"payload of signal {name!r}",
            max_bytes=self._instance.max_payload_bytes,
        )
        self._instance.signal_child(self.workflow_id, name, raw)

    def cancel(self, reason: str = "") -> None:
        """Ask the child to cancel (a step of this workflow, sent after it commits);
        awaiting the child then raises ``ChildWorkflowCancelled`` once it has ended."""
        self._instance.cancel_child(self.workflow_id, str(reason)[:1000])

    def __repr__(self) -> str:
        return f"<ChildHandle {self.workflow_id!r}>"


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
    def run_number(self) -> int:
        """Which run of the workflow id this is: 1, plus one per ``continue_as_new``."""
        started = self._instance.started
        return 1 if started is None else started.run_number

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
        return self._instance.schedule_activity(
            activity.name, payload, activity.output_type, activity.input_type
        )

    def start_child(
        self,
        workflow: Workflow[I, O],
        input: I,
        *,
        workflow_id: str | None = None,
        parent_close_policy: ParentClosePolicy = "terminate",
    ) -> ChildHandle[O]:
        """Start ``workflow`` as a child of this one; returns its handle at once.

        The child's id is ``workflow_id``, or ``"<this id>/child-<step>"``: the same on
        every replay, so the child is started exactly once. It runs in this workflow's
        tenant. ``parent_close_policy``: what happens to the child, if still running,
        when this workflow ends or gives up waiting for it (its step is cancelled, e.g.
        by a cancel of this workflow): ``"terminate"`` (the default), ``"cancel"`` (a
        cancel request) or ``"abandon"`` (it runs on)."""
        if not isinstance(workflow, Workflow):
            raise InvalidArgument(
                f"ctx.start_child() takes a Workflow made with @flows.workflow, got {workflow!r}"
            )
        if parent_close_policy not in _POLICIES:
            raise InvalidArgument(
                f"parent_close_policy must be one of {', '.join(_POLICIES)}; "
                f"got {parent_close_policy!r}"
            )
        child_id = None if workflow_id is None else check_id(workflow_id, "child workflow id")
        instance = self._instance
        payload = encode_payload(
            input,
            what=f"input of child workflow {workflow.name!r}",
            expected_type=workflow.input_type,
            max_bytes=instance.max_payload_bytes,
        )
        started_id, step = instance.start_child(
            workflow.name,
            workflow.version,
            child_id,
            payload,
            parent_close_policy,
            workflow.output_type,
            workflow.input_type,
        )
        return ChildHandle(instance, started_id, step)

    def execute_child(
        self,
        workflow: Workflow[I, O],
        input: I,
        *,
        workflow_id: str | None = None,
        parent_close_policy: ParentClosePolicy = "terminate",
    ) -> Step[O]:
        """Start ``workflow`` as a child (see ``start_child``) and await its output:
        ``ChildWorkflowFailed`` (``ChildWorkflowCancelled``) if it does not complete."""
        handle = self.start_child(
            workflow, input, workflow_id=workflow_id, parent_close_policy=parent_close_policy
        )
        return handle.result()

    def sleep(self, duration: timedelta | float) -> Step[None]:
        """A durable timer: resumes after ``duration`` (a timedelta or seconds)."""
        duration = _duration(duration, "ctx.sleep() duration")
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

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of a code change, for changing the code of
        running workflows without a new version::

            if ctx.patched("fraud-check"):
                await ctx.execute(check_fraud, order)
            await ctx.execute(ship, order)

        A run that had already gone past this point with the code before the patch
        (its history records later steps, or its end, and no marker) gets False and
        replays its old path; every other run gets True, and the first check records a
        ``PatchMarker`` in its history, so it replays the new path from then on. Decided
        once per run and patch id: later checks of the id return the same answer. The
        marker takes no step number. To retire a patch, see ``deprecate_patch``.
        """
        check_name(patch_id, "patch id")
        return self._instance.patched(patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Retire patch ``patch_id``: the code keeps only the new path, in place of the
        ``if ctx.patched(patch_id):``. Do it once no run that took the old path is still
        running (``check_histories`` reports it per patch id): such a run would no
        longer replay. Runs that took the new path, or had not reached the check, replay
        as before, and new runs still record the marker, so rolling back to the patched
        code stays safe. When no rollback to the patched code can happen any more, the
        call itself can go: a marker the code does not check is ignored on replay."""
        check_name(patch_id, "patch id")
        self._instance.patched(patch_id, deprecated=True)

    def set_status(self, value: object) -> None:
        """Publish ``value`` (a small msgspec-encodable object, at most 16 KiB as JSON) as
        the workflow's status: ``engine.query()`` returns it without running any workflow
        code (``info.status_value(MyType)``), e.g. for a UI that shows progress. Stored
        with the workflow's next commit; the latest value wins. Not a step: the code may
        set it anywhere, and replay publishes the same value again. PayloadError
        (PayloadTooLarge past the limit) if it cannot be encoded."""
        payload = encode_payload(value, what="workflow status", max_bytes=MAX_STATUS_BYTES)
        self._instance.set_status(payload)

    def continue_as_new(self, input: Any) -> NoReturn:
        """End this run and start the workflow afresh with ``input`` (of the workflow's
        input type): same workflow id, a new run (``run_number`` + 1) with an empty
        history, so an entity that lives long keeps its history, and its replay, small.
        No code after the call runs. Signals this run received and did not consume go
        to the new run; ``engine.query``, ``signal``, ``cancel`` and ``result`` address
        the latest run; earlier runs stay readable (``engine.runs``,
        ``engine.history(..., run_number=)``)."""
        definition = self._instance.definition
        payload = encode_payload(
            input,
            what=f"input of workflow {definition.name!r} (continue_as_new)",
            expected_type=definition.input_type,
            max_bytes=self._instance.max_payload_bytes,
        )
        self._instance.continue_as_new(payload)
        raise AssertionError("unreachable: continue_as_new raises")  # pragma: no cover

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


def _as_step(aw: Awaitable[Any], instance: WorkflowInstance, what: str) -> Step[Any]:
    if isinstance(aw, Step):
        return aw
    if inspect.iscoroutine(aw):
        return instance.spawn(aw)
    raise InvalidArgument(f"{what} takes Flows steps or coroutines of workflow code, got {aw!r}")


def _duration(value: timedelta | float, what: str) -> timedelta:
    if not isinstance(value, timedelta):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{what} takes a timedelta or a number of seconds")
        value = timedelta(seconds=value)
    if value < timedelta(0):
        raise InvalidArgument(f"{what} must not be negative, got {value}")
    return value


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
    """Run steps (or coroutines of workflow code) concurrently; await all their results.

    Results come back in argument order. The first failure is raised as soon as it
    happens, and the steps still pending are cancelled (StepCancelled is recorded;
    branch coroutines get ``Cancelled`` at their await). With ``return_exceptions``
    every step runs to its end and failures come back in place of results.
    """
    instance = current_instance()
    steps = [_as_step(aw, instance, "flows.gather()") for aw in aws]
    return instance.gather(steps, return_exceptions)


def race(*aws: Awaitable[T], timeout: timedelta | float | None = None) -> Step[RaceResult[T]]:
    """Wait for the first of several steps (or coroutines of workflow code) to finish.

    Returns ``RaceResult(winner, value)``: the argument position of the winner and its
    result; if the winner failed, its exception is raised. The other steps are
    cancelled (StepCancelled recorded, their timers and tasks dropped; coroutines get
    ``Cancelled`` at their await). With ``timeout`` (a timedelta or seconds, a durable
    timer), TimeoutError is raised if nothing finished in time::

        won = await flows.race(ctx.execute(charge, order), ctx.wait_for_signal("abort", str))
        if won.winner == 1: ...
        receipt = (await flows.race(ctx.execute(charge, order), timeout=30)).value
    """
    instance = current_instance()
    if not aws:
        raise InvalidArgument("flows.race() needs at least one step")
    limit = None if timeout is None else _duration(timeout, "flows.race() timeout")
    steps = [_as_step(aw, instance, "flows.race()") for aw in aws]
    return instance.race(steps, limit)
