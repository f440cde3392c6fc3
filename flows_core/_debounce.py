"""Debounced starts: ``Engine.start(..., debounce=window, debounce_key=key)``.

Of the starts of one workflow with one key (per tenant) within a window, only the last
runs, with its input. The window is FIXED from its first start (not restarted by each
start): a steady stream of starts closer together than the window still runs one
workflow per window, so the delay is bounded by the window (a trailing-edge debounce
would never fire under such a stream), and the workflow's id is known from the first
start on and the same for every caller of the window.

The store keeps one open row per key (``flows_core.store.DebounceStore``) whose input
each start replaces. Workers claim rows whose window has closed (``Debouncer``), start
the workflow under the id the row names (derived from the key and the window's opening
time), then delete the row. A firer that dies between the start and the delete leaves
the row to the next claim, whose start finds the workflow already there: no duplicate.
The row lives under the shard key the debounce key maps to; the workflow under its own:
two transactions, never one across shards.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ._clock import Clock
from ._errors import InvalidArgument, WorkflowAlreadyExists
from ._sharding import Sharder, key_for
from .events import WorkflowStarted
from .store import DebounceStore, NewWorkflow, PendingStart, PendingStartClaim, Store

__all__ = ["Debouncer", "debounce_store", "debounced_workflow_id"]

log = logging.getLogger("flows.debounce")

MAX_WINDOW = timedelta(days=30)


def debounced_workflow_id(debounce_key: str, opened_at: datetime) -> str:
    """The id of the workflow a window of ``debounce_key`` opened at ``opened_at`` starts."""
    return f"{debounce_key}@{opened_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


def debounce_store(store: Store) -> DebounceStore:
    """``store`` as a DebounceStore, or InvalidArgument if it has no debounced starts."""
    if not isinstance(store, DebounceStore):
        raise InvalidArgument(f"{type(store).__name__} does not support debounced starts")
    return store


def check_window(window: object) -> timedelta:
    if not isinstance(window, timedelta) or not timedelta(0) < window <= MAX_WINDOW:
        raise InvalidArgument(
            f"debounce must be a timedelta above zero and at most {MAX_WINDOW}, got {window!r}"
        )
    return window


class Debouncer:
    """Claims debounced starts whose window closed and starts their workflows (run by
    every Worker whose store has them)."""

    def __init__(
        self,
        store: DebounceStore,
        clock: Clock,
        sharder: Sharder,
        *,
        lease: timedelta,
        started: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sharder = sharder
        self.lease = lease
        self.started = started

    async def run_due(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        """Claim up to ``limit`` closed windows and fire them; returns how many."""
        claims = await self.store.claim_pending_starts(shard_keys, limit=limit, lease=self.lease)
        for claim in claims:
            try:
                await self.fire(claim)
            except Exception:
                # the lease runs out and another claim fires the same window again
                log.exception("debounce: firing %r failed", claim.lease.workflow_id)
        return len(claims)

    async def fire(self, claim: PendingStartClaim) -> bool:
        """Start the claimed window's workflow (once: its id is the window's), then
        delete the row. False if the lease was lost before the delete."""
        new = self.new_workflow(claim.pending)
        store: Any = self.store
        try:
            await store.start_workflow(new)
            if self.started is not None:
                self.started(new.name, new.tenant_id)
        except WorkflowAlreadyExists:
            pass  # fired before (a firer died before deleting the row)
        return await self.store.finish_pending_start(claim.lease)

    def new_workflow(self, pending: PendingStart) -> NewWorkflow:
        started = WorkflowStarted(
            name=pending.workflow_name,
            version=pending.workflow_version,
            workflow_id=pending.workflow_id,
            tenant_id=pending.tenant_id,
            input=pending.input,
            seed=secrets.randbits(63),
            at=self.clock.now(),
        )
        return NewWorkflow(
            tenant_id=pending.tenant_id,
            workflow_id=pending.workflow_id,
            name=pending.workflow_name,
            version=pending.workflow_version,
            shard_key=key_for(
                self.sharder, pending.workflow_name, pending.workflow_id, pending.tenant_id
            ),
            input=pending.input,
            started=started,
        )
