"""A virtual clock: time moves only when told to."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from flows_core import InvalidArgument

__all__ = ["VirtualClock"]


class VirtualClock:
    """A clock for tests. ``advance()`` moves time and wakes sleepers whose time came."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2030, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise InvalidArgument("VirtualClock start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []
        self.listeners: list[object] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta`` (a timedelta or seconds)."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise InvalidArgument("a clock cannot go backwards")
        self.set(self._now + delta)

    def set(self, when: datetime) -> None:
        """Move time forward to ``when`` (never backwards)."""
        if when <= self._now:
            return
        self._now = when
        still = []
        for due, fut in self._sleepers:
            if due <= when:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((due, fut))
        self._sleepers = still

    async def sleep(self, seconds: float) -> None:
        """Sleep until the virtual time has moved ``seconds`` forward."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + timedelta(seconds=seconds), fut))
        await fut
