"""Fixtures of the dashboard tests: an in-memory store run by a real Worker."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from flows_memory import TestEnvironment

from .workflows import ACTIVITIES, BROKEN, FLAKY_FAILURES, WORKFLOWS

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
LISTED_ID = re.compile(r'class="mono" href="[^"]*">([^<]+)</a>')
NEXT_PAGE = re.compile(r'href="([^"]+)" rel="next"')


@pytest.fixture(autouse=True)
def reset_flags() -> Iterator[None]:
    BROKEN["on"] = False
    FLAKY_FAILURES["left"] = 0
    yield
    BROKEN["on"] = False
    FLAKY_FAILURES["left"] = 0


@pytest.fixture
async def env() -> AsyncIterator[TestEnvironment]:
    # ``BROKEN`` (tests/ui/workflows.py) stands for a deploy of broken code: a deploy
    # restarts the workers, so their sticky caches start empty; without one, a cached
    # instance would go on with the code it began with.
    async with TestEnvironment(
        workflows=WORKFLOWS, activities=ACTIVITIES, sticky_cache_size=0
    ) as environment:
        yield environment


def client_for(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client calling ``app`` in this event loop, as from 127.0.0.1."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080", **kwargs)


async def csrf_token(client: httpx.AsyncClient, url: str) -> str:
    """The CSRF token of the form on page ``url`` (loading it sets the session)."""
    page = await client.get(url)
    assert page.status_code == 200, page.text[:500]
    found = CSRF.search(page.text)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def listed_ids(page: str) -> list[str]:
    """The workflow ids a listing page shows, in order."""
    return LISTED_ID.findall(page)


async def walk_pages(
    client: httpx.AsyncClient, url: str, page_size: int | None = None
) -> list[str]:
    """The ids of every page of the listing at ``url``, following the next links; each
    page answers 200 and shows at most ``page_size`` rows (when given)."""
    seen: list[str] = []
    while url:
        page = await client.get(url)
        assert page.status_code == 200
        ids = listed_ids(page.text)
        if page_size is not None:
            assert len(ids) <= page_size
        seen += ids
        found = NEXT_PAGE.search(page.text)
        url = html.unescape(found.group(1)) if found else ""
    return seen
