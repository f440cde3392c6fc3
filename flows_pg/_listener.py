"""One LISTEN connection per store: wakes ``wait_for_work`` and ``wait_for_workflow``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
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
    """

    def __init__(
        self, connect: Callable[[], Any], work_channel: str, workflow_channel: str
    ) -> None:
        self._connect = connect
        self._work_channel = work_channel
        self._wf_channel = workflow_channel
        self._work_waiters: set[asyncio.Future[None]] = set()
        self._wf_waiters: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    async def start(self, wait: float) -> None:
        """Start the background task if needed; wait up to ``wait`` s for LISTEN to be on."""
        if self._closed:
            return
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flows_pg-listener"
            )
        assert self._ready is not None
        if not self._ready.is_set() and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)

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
            self._set(self._work_waiters)
        elif channel == self._wf_channel:
            try:
                key = _payload_decoder.decode(payload)
            except msgspec.DecodeError:
                return
            self._set(self._wf_waiters.get(key))

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                assert conn is not None
                for channel in (self._work_channel, self._wf_channel):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                assert self._ready is not None
                self._ready.set()
                backoff = 0.05
                self._wake_all()  # anything sent while we were not listening
                async for note in conn.notifies():
                    self._dispatch(note.channel, note.payload)
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
