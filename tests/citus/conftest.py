"""``store``: a migrated CitusStore on a fresh schema (tenant sharding, 8 shard keys),
dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest_citus import drop_citus_store, make_citus_store


@pytest.fixture
async def store(citus_dsn: str) -> AsyncIterator[Any]:
    s = await make_citus_store(citus_dsn)
    try:
        yield s
    finally:
        await drop_citus_store(s)
