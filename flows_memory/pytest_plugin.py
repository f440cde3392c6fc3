"""A pytest plugin, registered by the ``flows`` distribution: ``async def`` tests run
without configuration, so a test of a workflow is just::

    async def test_order_ships():
        async with TestEnvironment(workflows=[order], activities=[charge]) as env:
            ...

Each such test runs in a fresh event loop (``asyncio.run``). Tests that another async
plugin runs are left to it: pytest-asyncio's (it hands pytest a synchronous wrapper),
and those marked for anyio or trio. Async fixtures still need such a plugin.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

__all__ = ["pytest_pyfunc_call"]

_OTHER_RUNNERS = ("asyncio", "anyio", "trio")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test function that no other plugin runs."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    if any(pyfuncitem.get_closest_marker(name) for name in _OTHER_RUNNERS):
        return None
    if "anyio_backend" in pyfuncitem.fixturenames:
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(function(**arguments))
    return True
