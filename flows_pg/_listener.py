"""One LISTEN connection per store: wakes ``wait_for_work`` and ``wait_for_workflow``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
from psycopg import sql

__all__ = ["Listener", "channel_names"]

log = logging.getLogger("flows_pg.listener")

_payload_decoder = msgspec.json.Decoder(tuple[str, str])


def channel_names(schema: str) -> tuple[str, str]:
    """(work channel, workflow channel) of a schema; each fits PostgreSQL's 63 bytes."""
    names = []
    for suffix in ("work", "wf"):
        name = f"{schema}_{suffix}"
        if len(name) > 63:
            digest = hashlib.sha256(schema.encode()).hexdigest()[:8]
            name = f"{schema[:40]}_{digest}_{suffix}"
        names.append(name)
    return names[0], names[1]


class Listener:
    """A background task holding one autocommit connection that LISTENs to both channels.

    Started lazily by the first wait, reconnects with backoff when the connection drops,
    and wakes every waiter after (re)connecting since notifications may have been missed.

    Listening is not free: PostgreSQL (up to 18) signals every listening backend of the
    database for every transaction that notifies, and the backend reads the queue in a
    transaction of its own. So once nobody in this process has waited for ``idle_after``
    seconds (a busy worker does not wait), the listener stops listening (UNLISTEN, the
    connection stays), and listens again on the next wait, whose caller is then told to
    look again (``start`` returns True): notifications sent meanwhile were not received.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        work_channel: str,
        workflow_channel: str,
        *,
        idle_after: float = 0.5,
    ) -> None:
        self._connect = connect
        self._work_channel = work_channel
        self._wf_channel = workflow_channel
        self.idle_after = idle_after
        self._work_waiters: set[asyncio.Future[None]] = set()
        self._wf_waiters: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._wanted: asyncio.Event | None = None
        self._closed = False
        self.pauses = 0
        """How many times listening stopped for want of waiters (for tests, stats)."""
        self.keep_on = False
        """Listen even while nobody waits (no pause): a store that trusts notifications to
        know where work is (CitusStore) sets it."""
        self.listens = 0
        """How many times LISTEN was (re)issued: while it stays the same and ``listening``
        is true, no notification was missed since."""
        self._work_hints: dict[str, None] = {}
        self._work_missed = False
        """A work notification came while nobody waited (the worker was claiming or
        reading its timers): the next wait returns at once instead of sleeping on it."""

    @property
    def listening(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    async def start(self, wait: float) -> bool:
        """Start the background task if needed; wait up to ``wait`` s for LISTEN to be on.

        True when it was not on: notifications may have been missed, so the caller
        should look again (claim, read the workflow) before waiting. Returns without
        suspending when it is on, so a waiter registered right after cannot miss a
        pause (see ``_run``)."""
        if self._closed:
            return False
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._wanted = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flows_pg-listener"
            )
        assert self._ready is not None
        assert self._wanted is not None
        if self._ready.is_set():
            return False
        self._wanted.set()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        return True

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake_all()

    # -- waiting --

    async def wait_work(self, timeout: float) -> None:
        if timeout <= 0:
            return
        if self._work_missed:
            self._work_missed = False
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._work_waiters.add(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            self._work_waiters.discard(fut)

    async def wait_workflow(self, tenant_id: str, workflow_id: str, timeout: float) -> None:
        if timeout <= 0:
            return
        key = (tenant_id, workflow_id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wf_waiters.setdefault(key, set()).add(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._wf_waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._wf_waiters[key]

    def take_work_hints(self) -> list[str]:
        """The payloads of the work notifications received since the last call (a store
        may name where the new work is, e.g. its shard key), oldest first."""
        hints, self._work_hints = list(self._work_hints), {}
        return hints

    def wake_work(self) -> None:
        """Wake this process's ``wait_work`` callers (as a work notification would)."""
        self._work_arrived()

    def _work_arrived(self) -> None:
        if self._work_waiters:
            self._set(self._work_waiters)
        else:
            self._work_missed = True

    # -- internals --

    @staticmethod
    def _set(futures: set[asyncio.Future[None]] | None) -> None:
        for fut in futures or ():
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        self._set(self._work_waiters)
        for waiters in list(self._wf_waiters.values()):
            self._set(waiters)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == self._work_channel:
            if payload and len(self._work_hints) < 4096:
                self._work_hints[payload] = None
            self._work_arrived()
        elif channel == self._wf_channel:
            try:
                key = _payload_decoder.decode(payload)
            except msgspec.DecodeError:
                return
            self._set(self._wf_waiters.get(key))

    def _has_waiters(self) -> bool:
        return self.keep_on or bool(self._work_waiters) or any(self._wf_waiters.values())

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # one simple query, one transaction
        await conn.execute(
            sql.SQL("LISTEN {}; LISTEN {}").format(
                sql.Identifier(self._work_channel), sql.Identifier(self._wf_channel)
            )
        )
        assert self._ready is not None
        self.listens += 1
        self._ready.set()
        self._wake_all()  # anything sent while we were not listening

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Dispatch notifications; pause listening while nobody waits (class doc)."""
        assert self._ready is not None
        assert self._wanted is not None
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            if self._has_waiters():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.idle_after:
                # No await between clearing ready and the waiter check: a waiter either
                # registered before (then we stay) or finds ready cleared and asks for
                # listening again through _wanted.
                self._ready.clear()
                self._wanted.clear()
                if self._has_waiters():
                    self._ready.set()
                    continue
                await conn.execute("UNLISTEN *")
                self.pauses += 1
                async for note in conn.notifies(timeout=0):  # already delivered ones
                    self._dispatch(note.channel, note.payload)
                await self._wanted.wait()
                await self._listen(conn)
                idle_since = None
                continue
            timeout = 0.25 if idle_since is None else max(0.01, idle_since + self.idle_after - now)
            async for note in conn.notifies(timeout=timeout):
                self._dispatch(note.channel, note.payload)

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                assert conn is not None
                await self._listen(conn)
                backoff = 0.05
                await self._serve(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._ready is not None:
                    self._ready.clear()
                if not self._closed:
                    log.warning("flows_pg listener: %r; reconnecting in %.2fs", exc, backoff)
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
