"""Debounced starts in memory (``flows_core.store.DebounceStore``), a MemoryStore mixin."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import uuid6

from flows_core import Clock, InvalidArgument
from flows_core.store import (
    PendingStart,
    PendingStartClaim,
    PendingStartLease,
    stored_payload,
    stored_text,
)

__all__ = ["MemoryDebounce"]

_Row = tuple[str, str, str, str]
"""(tenant, workflow name, debounce key, workflow id)."""


@dataclass
class _Pending:
    record: PendingStart
    closed: bool = False
    lease_token: str | None = None
    lease_expires_at: datetime | None = None

    def claimable(self, now: datetime) -> bool:
        fires = self.record.fires_at
        return (
            fires is not None
            and fires <= now
            and (self.lease_expires_at is None or self.lease_expires_at <= now)
        )


class MemoryDebounce:
    """The debounced-start rows of a MemoryStore."""

    _clock: Clock
    _fault: Callable[[str, Literal["before", "after"]], None]
    _pending_starts: dict[_Row, _Pending]
    _newest_window: dict[tuple[str, str, str], _Row]

    def _open_window(self, tenant_id: str, name: str, key: str) -> _Pending | None:
        """The key's open window: the newest row of the key, if not closed (a key opens
        a new window only after closing its last one)."""
        newest = self._newest_window.get((tenant_id, name, key))
        found = None if newest is None else self._pending_starts.get(newest)
        return None if found is None or found.closed else found

    async def debounce_start(
        self, pending: PendingStart, *, window: timedelta, tx: Any = None
    ) -> PendingStart:
        if tx is not None:
            raise InvalidArgument("MemoryStore has no transactions: pass no tx")
        for text, what in (
            (pending.tenant_id, "tenant id"),
            (pending.debounce_key, "debounce key"),
            (pending.workflow_id, "workflow id"),
        ):
            stored_text(text, what)
        stored_payload(pending.input, "workflow input")
        now = self._clock.now()
        self._fault("debounce_start", "before")
        found = self._open_window(pending.tenant_id, pending.workflow_name, pending.debounce_key)
        if found is not None and found.record.fires_at is not None and found.record.fires_at > now:
            found.record = msgspec.structs.replace(
                found.record,
                input=pending.input,
                workflow_version=pending.workflow_version,
                starts=found.record.starts + 1,
            )
        else:
            if found is not None:
                found.closed = True  # its time has come: it fires as it is
            found = _Pending(msgspec.structs.replace(pending, fires_at=now + window, starts=1))
            key = (pending.tenant_id, pending.workflow_name, pending.debounce_key)
            self._pending_starts[(*key, pending.workflow_id)] = found
            self._newest_window[key] = (*key, pending.workflow_id)
        self._fault("debounce_start", "after")
        return found.record

    async def claim_pending_starts(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[PendingStartClaim]:
        now = self._clock.now()
        keys = None if shard_keys is None else set(shard_keys)
        due = [
            p
            for p in self._pending_starts.values()
            if (keys is None or p.record.shard_key in keys) and p.claimable(now)
        ]
        if not due or limit <= 0:
            return []
        due.sort(key=lambda p: p.record.fires_at or now)
        self._fault("claim_pending_starts", "before")
        token = str(uuid6.uuid7())
        claims = []
        for p in due[:limit]:
            p.closed, p.lease_token, p.lease_expires_at = True, token, now + lease
            r = p.record
            claims.append(
                PendingStartClaim(
                    lease=PendingStartLease(
                        tenant_id=r.tenant_id,
                        workflow_name=r.workflow_name,
                        debounce_key=r.debounce_key,
                        shard_key=r.shard_key,
                        workflow_id=r.workflow_id,
                        token=token,
                        expires_at=now + lease,
                    ),
                    pending=r,
                )
            )
        self._fault("claim_pending_starts", "after")
        return claims

    async def finish_pending_start(self, lease: PendingStartLease) -> bool:
        row = (lease.tenant_id, lease.workflow_name, lease.debounce_key, lease.workflow_id)
        found = self._pending_starts.get(row)
        if found is None or found.lease_token != lease.token:
            return False
        self._fault("finish_pending_start", "before")
        del self._pending_starts[row]
        if self._newest_window.get(row[:3]) == row:
            del self._newest_window[row[:3]]
        self._fault("finish_pending_start", "after")
        return True

    async def next_pending_start_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        keys = None if shard_keys is None else set(shard_keys)
        best: datetime | None = None
        for p in self._pending_starts.values():
            when = p.record.fires_at
            if when is None or (keys is not None and p.record.shard_key not in keys):
                continue
            if p.lease_expires_at is not None and p.lease_expires_at > when:
                when = p.lease_expires_at
            if best is None or when < best:
                best = when
        return best

    async def get_pending_start(
        self, tenant_id: str, workflow_name: str, debounce_key: str, shard_key: str
    ) -> PendingStart | None:
        found = self._open_window(tenant_id, workflow_name, debounce_key)
        if found is None:
            closed = [
                p
                for (tid, name, key, _), p in self._pending_starts.items()
                if (tid, name, key) == (tenant_id, workflow_name, debounce_key)
            ]
            found = min(closed, key=lambda p: p.record.fires_at or self._clock.now(), default=None)
        return None if found is None else found.record

    def _pending_start_due(self, now: datetime) -> bool:
        return any(p.claimable(now) for p in self._pending_starts.values())
