"""Errors raised by Flows.

::

    FlowsError
    ├── InvalidArgument            bad name, id, tenant or option (also a ValueError)
    ├── PayloadError               input/output/signal payload does not encode or decode
    │   └── PayloadTooLarge
    ├── WorkflowNotFound           unknown id, or another tenant's workflow
    ├── WorkflowAlreadyExists      explicit workflow_id already used
    ├── WorkflowNotRegistered      unknown workflow name or version
    ├── WorkflowNotRunning         signal to a workflow that has finished
    ├── WorkflowNotDeadLettered    retry() of a workflow that is not dead-lettered (parked)
    ├── WorkflowFailed             wait_for_result on a failed workflow (has .cause)
    │   └── WorkflowTimeout        ... that ran past its execution_timeout
    ├── WorkflowCancelled          wait_for_result on a cancelled workflow
    ├── WorkflowTerminated         wait_for_result on a terminated workflow (has .reason)
    ├── NonDeterminismError        replay diverged from the recorded history
    │   └── IllegalAwaitError      workflow awaited something that is not a Flows step
    ├── WorkflowCodeError          a bug (TypeError...) escaped workflow code: it parks
    ├── ActivityFailed             raised inside a workflow when an activity fails for good
    ├── ChildWorkflowFailed        raised inside a parent when its child failed (has .cause)
    │   └── ChildWorkflowCancelled ... was cancelled
    ├── ActivityTimeout            an activity attempt ran past its timeout (retryable)
    │   ├── HeartbeatTimeout       ... or sent no heartbeat within its heartbeat_timeout
    │   └── ScheduleToCloseTimeout the step ran past its schedule_to_close (not retried)
    ├── Cancelled                  raised inside a workflow at the await a cancel interrupts
    ├── TerminalError              raise from an activity to stop retrying at once
    ├── LeaseLost                  a fenced write from a claimant whose lease is gone
    ├── TransactionConflict        a transactional activity's transaction hit a serialization
    │                              failure or deadlock (retried without counting an attempt)
    ├── StoreError                 the store failed (the driver's exception is __cause__)
    │   └── StoreUnavailable       ... because it cannot be reached (connection refused, lost)
    └── TenantRequired             a call without tenant on an engine that requires one
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = [
    "ActivityFailed",
    "ActivityTimeout",
    "Cancelled",
    "ChildWorkflowCancelled",
    "ChildWorkflowFailed",
    "ErrorInfo",
    "ScheduleNotFound",
    "FlowsError",
    "HeartbeatTimeout",
    "IllegalAwaitError",
    "InvalidArgument",
    "LeaseLost",
    "NonDeterminismError",
    "PayloadError",
    "PayloadTooLarge",
    "ScheduleToCloseTimeout",
    "StoreError",
    "StoreUnavailable",
    "TenantRequired",
    "TerminalError",
    "TransactionConflict",
    "WorkflowAlreadyExists",
    "WorkflowCancelled",
    "WorkflowCodeError",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowNotRegistered",
    "WorkflowNotDeadLettered",
    "WorkflowNotRunning",
    "WorkflowTerminated",
    "WorkflowTimeout",
    "error_class",
]


MAX_ERROR_MESSAGE = 8 * 1024
"""Characters of ``ErrorInfo.message`` kept; longer messages are cut with a note."""
MAX_ERROR_DETAILS = 32 * 1024
"""Characters of ``ErrorInfo.details`` (a traceback) kept; the end is kept when cut."""
MAX_ERROR_TYPE = 200
"""Characters of ``ErrorInfo.type`` kept."""


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded error: exception type name, message, and optional details.

    ``from_exception`` always makes one every store can keep, whatever was raised: text
    that is not valid Unicode (lone surrogates) has the offending characters replaced
    with U+FFFD, NUL characters (which PostgreSQL text refuses) with U+FFFD too, and the
    type, message and details are cut to MAX_ERROR_TYPE, MAX_ERROR_MESSAGE (8 KiB) and
    MAX_ERROR_DETAILS (32 KiB) characters. An exception whose ``str()`` raises is
    described by ``repr()``, and one whose ``repr()`` raises too by its type name, with
    a note saying so.
    """

    type: str
    message: str
    attempts: int = 0
    details: str | None = None
    """A traceback, when the recorder kept one (workflow-task failures do)."""

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, attempts: int = 0, traceback: bool = False
    ) -> ErrorInfo:
        """The storable record of ``exc`` (any BaseException); with ``traceback`` its
        formatted traceback goes to ``details``."""
        if isinstance(exc, ActivityFailed):
            return cls(
                type=storable_text(exc.error_type, MAX_ERROR_TYPE),
                message=storable_text(exc.message, MAX_ERROR_MESSAGE),
                attempts=exc.attempts,
            )
        details = None
        if traceback:
            details = storable_text(_format_traceback(exc), MAX_ERROR_DETAILS, keep_end=True)
        return cls(
            type=storable_text(type(exc).__name__, MAX_ERROR_TYPE),
            message=storable_text(_describe_exception(exc), MAX_ERROR_MESSAGE),
            attempts=attempts,
            details=details,
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


_SURROGATE = re.compile("[\ud800-\udfff]")
"""Code points UTF-8 cannot encode (lone surrogates, as ``os.fsdecode`` makes)."""


def storable_text(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` as every store keeps it: valid UTF-8 (lone surrogates become U+FFFD),
    no NUL character (U+FFFD too), at most ``limit`` characters (cut with a note; the
    end is kept instead of the start with ``keep_end``)."""
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    text = text.replace("\x00", "\ufffd")
    if len(text) <= limit:
        return text
    keep = max(limit - 80, 0)  # room for the note
    note = f" [... cut: {len(text) - keep} of {len(text)} characters left out]"
    if keep_end:
        return note.strip() + " " + text[len(text) - keep :]
    return text[:keep] + note


def _describe_exception(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as first:  # any failure of the exception's own __str__
        try:
            return f"{exc!r} (str() of the exception raised {type(first).__name__})"
        except Exception as second:
            return (
                f"<{type(exc).__name__}: str() and repr() of the exception raised "
                f"{type(first).__name__} and {type(second).__name__}>"
            )


def _format_traceback(exc: BaseException) -> str:
    import traceback

    try:
        return "".join(traceback.format_exception(exc))
    except Exception as failure:  # a hostile __str__ in the chain
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return f"{frames}(formatting the exception raised {type(failure).__name__})"


class FlowsError(Exception):
    """Base class of every error Flows raises.

    Every Flows error pickles (multiprocessing, Celery, RQ): it comes back as the same
    type with the same ``args``, attributes and message, whatever its constructor takes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args), self.__dict__ or None)


def _restore(cls: type[FlowsError], args: tuple[Any, ...]) -> FlowsError:
    """Unpickle a Flows error without calling its ``__init__`` (whose parameters are not
    its ``args``); the attributes follow as the pickled state."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class InvalidArgument(FlowsError, ValueError):
    """A name, id, tenant or option is invalid; the message says which and why."""


class PayloadError(FlowsError):
    """A payload does not encode to JSON, or does not decode into the expected type."""


class PayloadTooLarge(PayloadError):
    """An encoded payload exceeds the configured maximum size."""


class WorkflowNotFound(FlowsError):
    """No workflow with this id exists for this tenant."""

    def __init__(self, workflow_id: str, tenant_id: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id!r} not found")
        self.workflow_id = workflow_id
        self.tenant_id = tenant_id


class WorkflowAlreadyExists(FlowsError):
    """A workflow with this explicit id already exists for this tenant."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} already exists")
        self.workflow_id = workflow_id


class ScheduleNotFound(FlowsError):
    """No schedule with this id exists for this tenant."""

    def __init__(self, schedule_id: str, tenant_id: str | None = None) -> None:
        super().__init__(f"schedule {schedule_id!r} not found")
        self.schedule_id = schedule_id
        self.tenant_id = tenant_id


class WorkflowNotRegistered(FlowsError):
    """The workflow name (or name and version) is not registered here."""


class WorkflowNotRunning(FlowsError):
    """The workflow has finished and takes no more signals."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is {status}; it takes no signals")
        self.workflow_id = workflow_id
        self.status = status


class WorkflowNotDeadLettered(FlowsError):
    """``Engine.retry`` was called on a workflow that is not dead-lettered (parked)."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is {status}, not dead-lettered; nothing to retry"
        )
        self.workflow_id = workflow_id
        self.status = status


class WorkflowFailed(FlowsError):
    """The workflow ended in failure; ``cause`` holds the recorded error."""

    def __init__(self, workflow_id: str, cause: ErrorInfo) -> None:
        super().__init__(f"workflow {workflow_id!r} failed: {cause}")
        self.workflow_id = workflow_id
        self.cause = cause


class WorkflowTimeout(WorkflowFailed):
    """The workflow ran past the ``execution_timeout`` it was started with: it was ended
    FAILED with error type ``WorkflowTimeout`` (its pending steps dropped, no code run
    after the deadline)."""


class WorkflowCancelled(FlowsError):
    """The workflow ended cancelled."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} was cancelled")
        self.workflow_id = workflow_id


class WorkflowTerminated(FlowsError):
    """The workflow was ended by ``Engine.terminate`` (no code of it ran after that)."""

    def __init__(self, workflow_id: str, reason: str = "") -> None:
        super().__init__(
            f"workflow {workflow_id!r} was terminated" + (f": {reason}" if reason else "")
        )
        self.workflow_id = workflow_id
        self.reason = reason


class NonDeterminismError(FlowsError):
    """Replaying the workflow code produced a step that differs from the history."""


class IllegalAwaitError(NonDeterminismError):
    """The workflow awaited something that is not a Flows step (asyncio.sleep, raw I/O...)."""


class ActivityFailed(FlowsError):
    """An activity failed for good (retries exhausted or terminal error).

    Raised inside the workflow at the ``await ctx.execute(...)``; keeps the original
    exception's type name, message and the number of attempts made.
    """

    def __init__(self, activity: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(
            f"activity {activity!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.activity = activity
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class ChildWorkflowFailed(FlowsError):
    """A child workflow did not complete: raised in the parent where it awaits the
    child. ``cause`` is the child's recorded error (type ``WorkflowTerminated`` when it
    was terminated, ``ChildWorkflowAlreadyExists`` when its id was taken by a workflow
    that is not this parent's child); ``status`` how it ended."""

    def __init__(self, workflow_id: str, status: str, cause: ErrorInfo) -> None:
        super().__init__(f"child workflow {workflow_id!r} {status}: {cause}")
        self.workflow_id = workflow_id
        self.status = status
        self.cause = cause


class ChildWorkflowCancelled(ChildWorkflowFailed):
    """The child workflow ended cancelled (``cause``: its cancellation)."""


class ActivityTimeout(FlowsError):
    """An activity attempt ran past its ``timeout``; retried like any other failure."""


class HeartbeatTimeout(ActivityTimeout):
    """An activity attempt did not call ``flows.heartbeat()`` within its
    ``heartbeat_timeout``; retried like any other failure. (If the worker running it
    dies, the lease expires instead and the attempt runs again elsewhere.)"""


class ScheduleToCloseTimeout(ActivityTimeout):
    """The activity step was not done within its ``schedule_to_close`` (counted from
    when the workflow first scheduled it, across all attempts and retry delays): no
    further attempt is made, the workflow sees ``ActivityFailed`` with this error type.
    An async attempt still running at the deadline is cancelled."""


class Cancelled(FlowsError):
    """The workflow was asked to cancel; raised at the await that was pending."""


class TerminalError(FlowsError):
    """Raise from an activity to fail it at once, without further retries."""


class LeaseLost(FlowsError):
    """The task's lease expired or was taken by another worker; the write was refused."""


class TransactionConflict(FlowsError):
    """A transactional activity's transaction was aborted by the database for a reason
    that is not its code's fault: a serialization failure or a deadlock (SQLSTATE 40001,
    40P01; the memory stand-in's write conflict). The worker rolls back and runs the
    function again at once, up to ``TRANSACTION_CONFLICT_RETRIES`` times, without
    counting an attempt; past that bound the conflict is a failed attempt. Code may raise
    it itself to ask for the same treatment."""


class StoreError(FlowsError):
    """The store failed to carry out an operation; the driver's exception is chained as
    ``__cause__``. Whether the operation took effect is unknown unless the store says so."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection refused, lost or timed out): retry later."""


class TenantRequired(FlowsError):
    """This engine requires an explicit tenant and none was given."""


class WorkflowCodeError(FlowsError):
    """A bug in workflow code (one of flows.WORKFLOW_CODE_ERRORS) parked the workflow;
    the message names it and where. Fix the code, then ``engine.retry()`` resumes the run.
    The original exception is ``__cause__``."""


def error_class(info: ErrorInfo) -> type[FlowsError] | None:
    """The Flows error class a recorded error is of (its ``type`` names one of Flows' own
    errors), or None for any other exception type. Recognise recorded errors with this,
    by class (``error_class(info) is WorkflowTimeout``), not by comparing names."""
    return _FLOWS_ERRORS.get(info.type)


# Keep this last in the module: it collects every error class defined above.
_FLOWS_ERRORS: dict[str, type[FlowsError]] = {
    cls.__name__: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, FlowsError)
}
"""Flows' own errors (every one defined in this module) by class name."""
