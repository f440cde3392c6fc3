"""The ``adapter`` / ``store`` / ``kit`` fixtures: every contract test runs once per adapter.

The adapters and how to add one: ``tests/contract/adapters.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flows_core import Store
from tests.contract.adapters import ADAPTERS, Adapter, AdapterFactory
from tests.contract.kit import Kit


@pytest.fixture(params=ADAPTERS)
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    factory: AdapterFactory = request.param
    async with factory(request) as made:
        yield made


@pytest.fixture
def store(adapter: Adapter) -> Store:
    return adapter.store


@pytest.fixture
def kit(adapter: Adapter) -> Kit:
    return Kit(adapter)
