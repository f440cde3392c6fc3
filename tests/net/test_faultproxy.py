"""The fault proxy itself, against a PostgreSQL server: each fault does what it says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .faultproxy import FaultProxy

pytestmark = pytest.mark.pg


def upstream(dsn: str) -> dict[str, object]:
    """FaultProxy's upstream arguments for ``dsn`` (a Unix socket or host:port)."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "localhost")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return {"unix_path": f"{host}/.s.PGSQL.{port}"}
    return {"host": host, "port": port}


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(**upstream(pg_dsn), seed=7) as p:  # type: ignore[arg-type]
        yield p


async def connect(pg_dsn: str, proxy: FaultProxy) -> psycopg.AsyncConnection[tuple[object, ...]]:
    dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def test_forwards_queries_in_order_under_latency_and_jitter(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    proxy.set_latency(0.002, 0.01)
    async with await connect(pg_dsn, proxy) as conn, conn.pipeline():
        cursors = [
            await conn.execute("SELECT %s::int, repeat('x', %s)", (i, i * 50)) for i in range(40)
        ]
        rows = [await cur.fetchone() for cur in cursors]
    assert rows == [(i, "x" * (i * 50)) for i in range(40)]


async def test_reset_breaks_the_client_connection(pg_dsn: str, proxy: FaultProxy) -> None:
    conn = await connect(pg_dsn, proxy)
    assert proxy.reset(1.0) == 1
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("SELECT 1")
    assert conn.broken or conn.closed
    await conn.close()
    async with await connect(pg_dsn, proxy) as again:  # new connections still work
        assert await (await again.execute("SELECT 2")).fetchone() == (2,)


async def test_half_open_hangs_then_resets(pg_dsn: str, proxy: FaultProxy) -> None:
    conn = await connect(pg_dsn, proxy)
    assert proxy.half_open(1.0, seconds=1.0) == 1
    query = asyncio.ensure_future(conn.execute("SELECT 1"))
    done, _ = await asyncio.wait({query}, timeout=0.3)
    assert not done, "a half-open connection answered"
    with pytest.raises(psycopg.OperationalError):
        await query  # the proxy resets it after 1 s
    await conn.close()


async def test_black_hole_delays_but_loses_nothing(pg_dsn: str, proxy: FaultProxy) -> None:
    async with await connect(pg_dsn, proxy) as conn:
        hole = asyncio.ensure_future(proxy.black_hole(1.0))
        await asyncio.sleep(0)
        query = asyncio.ensure_future(conn.execute("SELECT 42"))
        done, _ = await asyncio.wait({query}, timeout=0.3)
        assert not done, "a query went through the black hole"
        await hole
        cur = await query
        assert await cur.fetchone() == (42,)
        # a connection attempt during a hole waits it out, then succeeds
        hole = asyncio.ensure_future(proxy.black_hole(0.5))
        await asyncio.sleep(0)
        async with await connect(pg_dsn, proxy) as late:
            assert await (await late.execute("SELECT 1")).fetchone() == (1,)
        await hole


def test_needs_one_upstream() -> None:
    with pytest.raises(ValueError, match="unix_path or host and port"):
        FaultProxy()
    with pytest.raises(ValueError, match="unix_path or host and port"):
        FaultProxy(unix_path="/x", host="h", port=1)
