"""Flow control in memory (``flows_core.store.FlowLimits``): the reference the SQL
stores follow, statement for statement."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from flows_core.store import (
    RATE_GRACE,
    TERMINAL_STATUSES,
    Lease,
    LimitUsage,
    SlotGrant,
    SlotHolder,
    stored_text,
)

if TYPE_CHECKING:
    from flows_core import Clock

    from ._store import _Task, _Workflow

__all__ = ["HOLDER_CHECK", "MemoryLimits"]

HOLDER_CHECK: Final = timedelta(seconds=60)
"""How long a workflow holder found alive keeps its slot before it is checked again."""

_Key = tuple[str, str]


@dataclass
class _Slot:
    holder: SlotHolder | None = None
    expires_at: datetime | None = None


@dataclass
class _Limit:
    slots: dict[int, _Slot] = field(default_factory=dict)
    waiters: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    """task id -> (tenant id, reserved token time (rate limits) or None), oldest first."""
    tat: datetime | None = None
    """Rate limits: when the next token is free (the theoretical arrival time)."""
    every: timedelta | None = None


def _same(a: SlotHolder, b: SlotHolder) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "workflow":
        return (a.tenant_id, a.workflow_id) == (b.tenant_id, b.workflow_id)
    return (a.task_id, a.token, a.part) == (b.task_id, b.token, b.part)


class MemoryLimits:
    """The FlowLimits half of MemoryStore."""

    if TYPE_CHECKING:  # what MemoryStore has
        _limits: dict[_Key, _Limit]
        _waiting: dict[str, tuple[str, datetime]]
        _tasks: dict[str, _Task]
        _workflows: dict[tuple[str, str], _Workflow]
        _clock: Clock
        operations: int

        def _touch(self, task: _Task) -> None: ...
        def notify_work(self) -> None: ...
        def _find(self, tenant_id: str, workflow_id: str) -> _Workflow | None: ...

    def _limit(self, bucket: str, limit_key: str) -> _Limit:
        stored_text(bucket, "limit bucket")
        stored_text(limit_key, "limit key")
        return self._limits.setdefault((bucket, limit_key), _Limit())

    def _alive_until(self, holder: SlotHolder, now: datetime) -> datetime | None:
        """Until when ``holder`` is alive (None: it is not)."""
        if holder.kind == "workflow":
            wf = self._workflows.get((holder.tenant_id, holder.workflow_id))
            if wf is None or wf.status in TERMINAL_STATUSES:
                return None
            return now + HOLDER_CHECK
        task = self._tasks.get(holder.task_id)
        if task is None or task.token != holder.token:
            return None
        if task.lease_expires is None or task.lease_expires <= now:
            return None
        return task.lease_expires

    async def acquire_slot(
        self, bucket: str, limit_key: str, capacity: int, holder: SlotHolder, *, wait: bool = True
    ) -> SlotGrant:
        limit = self._limit(bucket, limit_key)
        now = self._clock.now()
        self.operations += 1
        for slot in limit.slots.values():
            if slot.holder is not None and _same(slot.holder, holder):
                limit.waiters.pop(holder.task_id, None)
                return SlotGrant(acquired=True)
        for number in range(capacity):
            slot = limit.slots.setdefault(number, _Slot())
            if slot.holder is not None and slot.expires_at is not None and slot.expires_at <= now:
                alive = self._alive_until(slot.holder, now)
                if alive is None:
                    slot.holder = slot.expires_at = None
                else:
                    slot.expires_at = alive
            if slot.holder is None:
                slot.holder, slot.expires_at = holder, holder.expires_at
                limit.waiters.pop(holder.task_id, None)
                return SlotGrant(acquired=True)
        if wait:
            limit.waiters.setdefault(holder.task_id, (holder.tenant_id, None))
        expiries = [
            s.expires_at
            for n, s in limit.slots.items()
            if n < capacity and s.expires_at is not None
        ]
        return SlotGrant(acquired=False, retry_at=min(expiries, default=None))

    async def release_slot(self, bucket: str, limit_key: str, holder: SlotHolder) -> None:
        limit = self._limit(bucket, limit_key)
        freed = False
        for slot in limit.slots.values():
            if slot.holder is not None and _same(slot.holder, holder):
                slot.holder = slot.expires_at = None
                freed = True
        if not freed:
            return
        self.operations += 1
        now = self._clock.now()
        for task_id, (_tenant, reserved) in list(limit.waiters.items()):
            if reserved is not None:
                continue
            del limit.waiters[task_id]
            task = self._tasks.get(task_id)
            if task is not None and self._deferred(task, now):
                self._waiting.pop(task_id, None)
                task.visible_at = now
                self._touch(task)
                self.notify_work()
                return

    def _deferred(self, task: _Task, now: datetime) -> bool:
        """The task waits where ``defer_task`` left it (not claimed nor changed since)."""
        waiting = self._waiting.get(task.task_id)
        return (
            waiting is not None
            and task.token is None
            and task.visible_at == waiting[1]
            and task.visible_at > now
        )

    async def take_rate_token(
        self,
        bucket: str,
        limit_key: str,
        interval: timedelta,
        task_id: str,
        horizon: timedelta,
    ) -> datetime | None:
        limit = self._limit(bucket, limit_key)
        now = self._clock.now()
        self.operations += 1
        limit.every = interval
        reserved = limit.waiters.get(task_id)
        if reserved is not None and reserved[1] is not None:
            if reserved[1] > now:
                return reserved[1]
            del limit.waiters[task_id]
            if now < reserved[1] + max(interval, RATE_GRACE):
                return None
            # came too late for its token (it would crowd the next ones): a new one
        start = now if limit.tat is None else max(limit.tat, now)
        if start <= now:
            limit.tat = now + interval
            return None
        if start - now > horizon:
            return start - horizon  # when its token would be within reach
        limit.tat = start + interval
        limit.waiters[task_id] = ("", start)
        return start

    async def defer_task(self, lease: Lease, visible_at: datetime, reason: str) -> None:
        task = self._tasks.get(lease.task_id)
        if task is None or task.token != lease.token:
            return
        task.token = task.owner = task.lease_expires = None
        if task.kind == "workflow":
            task.attempt = max(task.attempt - 1, 1)  # as release: uncounted
        task.visible_at = visible_at
        self._waiting[task.task_id] = (reason, visible_at)
        self.operations += 1
        self._touch(task)
        self.notify_work()

    async def waiting_reason(self, tenant_id: str, workflow_id: str) -> str | None:
        wf = self._find(tenant_id, workflow_id)
        if wf is None:
            return None
        now = self._clock.now()
        tasks: list[Any] = [wf.workflow_task, *wf.step_tasks.values()]
        for task in tasks:
            if task is not None and self._deferred(task, now):
                return self._waiting[task.task_id][0]
        return None

    async def limit_usage(self, buckets: list[str] | Any) -> list[LimitUsage]:
        wanted = set(buckets)
        found = []
        for (bucket, limit_key), limit in sorted(self._limits.items()):
            if bucket not in wanted:
                continue
            found.append(
                LimitUsage(
                    bucket=bucket,
                    limit_key=limit_key,
                    held=sum(1 for s in limit.slots.values() if s.holder is not None),
                    slots=len(limit.slots),
                    waiting=len(limit.waiters),
                    next_token_at=limit.tat,
                    every=limit.every,
                )
            )
        return found
