"""A small TCP fault proxy on loopback, for chaos tests between clients and PostgreSQL.

No well-kept pure-Python one is on PyPI (toxiproxy needs its Go server), so this is a
compact asyncio one. It listens on ``127.0.0.1`` and forwards every accepted connection
to an upstream TCP address or Unix socket (the embedded PostgreSQL listens on a Unix
socket only). Faults, all bounded in time by the caller:

* ``latency`` / ``jitter``: every chunk, each way, is delayed by ``latency`` plus a
  uniform ``[0, jitter]``; order within a direction is kept (as TCP would);
* ``reset(fraction)``: abort connections with a TCP RST (``SO_LINGER`` 0);
* ``half_open(fraction, seconds)``: stop forwarding on some connections without
  closing them (the peer's kernel still accepts what is sent: the client waits for a
  reply that never comes); after ``seconds`` they are reset, as a client's TCP stack
  finally gives up on a dead peer; ``seconds=None`` leaves them hanging until closed;
* ``black_hole(seconds)``: nothing is forwarded either way, on existing or new
  connections, for ``seconds``; then everything held back is delivered (a partition
  shorter than TCP's retransmission limits: late, not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class Link:
    """One proxied client connection (both directions)."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.flowing.set()


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with a RST instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``async with FaultProxy(unix_path=...) as proxy:`` then connect to ``proxy.port``."""

    def __init__(
        self,
        *,
        unix_path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        if (unix_path is None) == (host is None or port is None):
            raise ValueError("FaultProxy needs either unix_path or host and port upstream")
        self.unix_path, self.up_host, self.up_port = unix_path, host, port
        self.rng = random.Random(seed)
        self.latency = 0.0
        self.jitter = 0.0
        self.links: set[Link] = set()
        self.accepted = 0
        self.resets = 0
        self._open = asyncio.Event()  # cleared during a black hole
        self._open.set()
        self._server: asyncio.Server | None = None

    # -- lifecycle --

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None, "FaultProxy.start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            self._drop(link, rst=False)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults --

    def set_latency(self, latency: float, jitter: float = 0.0) -> None:
        self.latency, self.jitter = latency, jitter

    def reset(self, fraction: float = 1.0) -> int:
        """RST a random ``fraction`` of the open connections; how many."""
        chosen = self._pick(fraction)
        for link in chosen:
            self._drop(link, rst=True)
        self.resets += len(chosen)
        return len(chosen)

    def half_open(self, fraction: float, seconds: float | None) -> int:
        """Stop forwarding on a ``fraction`` of the connections; RST them after ``seconds``."""
        chosen = self._pick(fraction)
        for link in chosen:
            link.flowing.clear()
        if seconds is not None and chosen:
            asyncio.get_running_loop().call_later(seconds, self._reset_links, chosen)
        return len(chosen)

    async def black_hole(self, seconds: float) -> None:
        """Forward nothing, anywhere, for ``seconds``; then deliver what was held back."""
        self._open.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._open.set()

    def _reset_links(self, links: list[Link]) -> None:
        for link in links:
            if not link.closed:
                self._drop(link, rst=True)
                self.resets += 1

    def _pick(self, fraction: float) -> list[Link]:
        live = sorted((lnk for lnk in self.links if not lnk.closed), key=id)
        if fraction >= 1.0:
            return live
        return [lnk for lnk in live if self.rng.random() < fraction]

    # -- forwarding --

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(writer)
        self.links.add(link)
        self.accepted += 1
        try:
            await self._open.wait()  # a connection attempt in a black hole waits it out
            if self.unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError:
            self._drop(link, rst=True)
            return
        link.upstream = up_writer
        if link.closed:  # reset while connecting
            _abort(up_writer)
            return
        link.tasks = [
            asyncio.ensure_future(self._pipe(link, reader, up_writer)),
            asyncio.ensure_future(self._pipe(link, up_reader, writer)),
        ]

    async def _pipe(self, link: Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read from ``src``; deliver each chunk to ``dst`` when due (in order)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._deliver(link, queue, dst))
        last_due = 0.0
        try:
            while not link.closed:
                data = await src.read(CHUNK)
                delay = self.latency + (self.rng.uniform(0, self.jitter) if self.jitter else 0)
                last_due = max(last_due, time.monotonic() + delay)
                await queue.put((last_due, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            self._drop(link, rst=False)

    async def _deliver(
        self, link: Link, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            await self._open.wait()
            await link.flowing.wait()
            if link.closed:
                return
            if not data:  # the source closed: pass the FIN on
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    def _drop(self, link: Link, *, rst: bool) -> None:
        if link.closed:
            return
        link.closed = True
        link.flowing.set()  # wake waiting deliverers so they see closed
        self.links.discard(link)
        for writer in (link.client, link.upstream):
            if writer is None:
                continue
            if rst:
                _abort(writer)
            else:
                writer.close()
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
