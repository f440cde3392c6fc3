"""What activity code sees: ``flows.heartbeat()`` and ``flows.activity_info()``."""

from __future__ import annotations

import contextvars
import threading
import time

import msgspec

from ._errors import Cancelled

__all__ = ["ActivityInfo", "activity_info", "heartbeat"]


class ActivityInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The running activity: which workflow and step it belongs to, which attempt."""

    workflow_id: str
    tenant_id: str
    workflow_name: str
    activity_name: str
    seq: int
    attempt: int
    shard_key: str = ""
    """The workflow's shard key: a transactional activity on Citus writes its rows under
    it, to tables colocated with the Flows tables, to stay a one-shard transaction."""


class _ActivityState:
    """Shared between the activity (maybe in a thread) and the worker's lease keeper."""

    __slots__ = ("cancelled", "info", "last_beat", "lock")

    def __init__(self, info: ActivityInfo) -> None:
        self.info = info
        self.last_beat = time.monotonic()
        self.cancelled = False
        self.lock = threading.Lock()

    def beat(self) -> None:
        with self.lock:
            self.last_beat = time.monotonic()
            cancelled = self.cancelled
        if cancelled:
            raise Cancelled(f"workflow {self.info.workflow_id!r} was cancelled")


_state: contextvars.ContextVar[_ActivityState | None] = contextvars.ContextVar(
    "flows_activity", default=None
)


def _current() -> _ActivityState:
    state = _state.get()
    if state is None:
        raise RuntimeError("flows.heartbeat() and activity_info() work only inside an activity")
    return state


def heartbeat() -> None:
    """Tell the worker this activity is alive, which extends its lease.

    Call it regularly from long activities (sync or async). Raises ``flows.Cancelled``
    once the workflow has been cancelled, so the activity can stop early.
    """
    _current().beat()


def activity_info() -> ActivityInfo:
    """Information about the activity attempt that is running."""
    return _current().info
