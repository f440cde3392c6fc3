"""Adapters under contract: each yields a store and a way to let time pass on its clock.

Adding an adapter is one entry in ``ADAPTERS`` (see the Citus line). A factory is an
async context manager taking the pytest request and yielding an ``Adapter``; it calls
``pytest.skip`` when its backend is not available here.

Time: MemoryStore runs on a ``VirtualClock`` and real stores on the wall clock, so tests
never move a clock themselves; they call ``await adapter.pass_time(seconds)``, which
advances the virtual clock (memory) or really sleeps (keep it short: leases of 0.2-0.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial

import pytest

from flows_core import Store
from flows_memory import MemoryStore, VirtualClock


@dataclass
class Adapter:
    """A store under test plus the means to let time pass on its clock."""

    name: str
    store: Store
    virtual_clock: VirtualClock | None = None
    ns: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    """A per-test namespace for names, shard keys and tenants (stores may be shared)."""

    async def pass_time(self, seconds: float) -> None:
        """Let ``seconds`` pass on the store's clock (virtual: jump; real: sleep)."""
        if self.virtual_clock is not None:
            self.virtual_clock.advance(seconds)
            notify = getattr(self.store, "notify_work", None)
            if notify is not None:
                notify()
            await asyncio.sleep(0.001)
        else:
            await asyncio.sleep(seconds)


AdapterFactory = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Adapter]]


@contextlib.asynccontextmanager
async def memory_adapter(request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    clock = VirtualClock()
    yield Adapter("memory", MemoryStore(clock=clock), virtual_clock=clock)


@contextlib.asynccontextmanager
async def sql_adapter(
    package: str,
    dsn_fixture: str,
    helpers: str,
    make: str,
    drop: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Adapter]:
    """A database adapter: ``package`` importable, a server DSN from the session fixture
    ``dsn_fixture`` (it skips when no server can be had), and a store on a fresh schema
    from ``helpers.make(dsn)``, closed and dropped by ``helpers.drop(store)``."""
    try:
        importlib.import_module(package)
        module = importlib.import_module(helpers)
    except ImportError as exc:
        pytest.skip(f"{package} not available ({exc})")
    make_store = getattr(module, make)
    drop_store = getattr(module, drop)
    try:
        dsn = request.getfixturevalue(dsn_fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"{package}: no {dsn_fixture} fixture visible from tests/contract")
    store = await make_store(dsn)
    try:
        yield Adapter(package, store)
    finally:
        await drop_store(store)


ADAPTERS = [
    pytest.param(memory_adapter, id="memory"),
    pytest.param(
        partial(sql_adapter, "flows_pg", "pg_dsn", "conftest_pg", "make_pg_store", "drop_pg_store"),
        id="pg",
        marks=pytest.mark.pg,
    ),
    pytest.param(
        partial(
            sql_adapter,
            "flows_citus",
            "citus_dsn",
            "conftest_citus",
            "make_citus_store",
            "drop_citus_store",
        ),
        id="citus",
        marks=pytest.mark.citus,
    ),
]
