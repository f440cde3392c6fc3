"""Paging and filtering of the workflows list, on today's ListQuery (offset) and on a
ListQuery with keyset paging and the other filters (the fields the lead adds)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

from flows_core.store import ListQuery, WorkflowRecord, WorkflowStatus
from flows_memory import TestEnvironment
from flows_ui import _listing
from flows_ui._listing import Cursor, Filters, fetch_page

from .workflows import greet


async def started(env: TestEnvironment, count: int) -> list[str]:
    """``count`` greet workflows one second apart; their ids, newest first."""
    ids = []
    for n in range(count):
        wf_id = f"{'even' if n % 2 == 0 else 'odd'}-{n:02}"
        await env.engine.start(greet, str(n), workflow_id=wf_id)
        await env.advance(timedelta(seconds=1))
        ids.append(wf_id)
    await env.wait_idle()
    return ids[::-1]


async def all_pages(store: Any, filters: Filters, limit: int, **kwargs: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await fetch_page(store, filters, cursor, limit, **kwargs)
        pages.append([r.workflow_id for r in page.rows])
        if page.next_cursor is None:
            return pages
        cursor = Cursor.decode(page.next_cursor.encode())


async def test_offset_paging_with_filters_applied_here(env: TestEnvironment) -> None:
    newest_first = await started(env, 9)
    pages = await all_pages(env.store, Filters(), 4)
    assert pages == [newest_first[:4], newest_first[4:8], newest_first[8:]]
    odd = await all_pages(env.store, Filters(id_prefix="odd-"), 3)
    assert odd == [["odd-07", "odd-05", "odd-03"], ["odd-01"]]
    records = {r.workflow_id: r for r in await env.store.list_workflows(ListQuery(tenant_id=None))}
    window = Filters(
        created_from=records["even-02"].created_at, created_to=records["odd-05"].created_at
    )
    assert await all_pages(env.store, window, 10) == [["even-04", "odd-03", "even-02"]]


class OffsetQuery(msgspec.Struct, frozen=True, kw_only=True):
    """ListQuery as it was before keyset paging and the other filters."""

    tenant_id: str | None
    status: WorkflowStatus | None = None
    name: str | None = None
    limit: int = 100
    offset: int = 0


class OffsetStore:
    """A MemoryStore whose listing takes only OffsetQuery (a store without the new
    fields: ``_listing`` filters and pages by offset itself)."""

    def __init__(self, env: TestEnvironment) -> None:
        self.inner = env.store

    async def list_workflows(self, query: OffsetQuery) -> list[WorkflowRecord]:
        fields = {f: getattr(query, f) for f in OffsetQuery.__struct_fields__}
        return await self.inner.list_workflows(ListQuery(**fields))


async def test_a_long_scan_stops_and_resumes(
    env: TestEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    await started(env, 9)
    monkeypatch.setattr(_listing, "ListQuery", OffsetQuery)
    store: Any = OffsetStore(env)
    oldest = Filters(id_prefix="even-00")
    first = await fetch_page(store, oldest, None, 2, max_scan=3)
    assert first.scan_cut
    assert first.rows == []
    assert first.scanned == 3
    assert first.next_cursor is not None
    found: list[str] = []
    cursor: Cursor | None = first.next_cursor
    reads = 1
    while cursor is not None:
        page = await fetch_page(store, oldest, cursor, 2, max_scan=3)
        assert page.scanned <= 3
        found += [r.workflow_id for r in page.rows]
        cursor, reads = page.next_cursor, reads + 1
    assert found == ["even-00"]
    assert reads in (3, 4)  # 9 rows, 3 per read (a full last read cannot know it was last)
    # the store's own ListQuery takes the id prefix: one read finds it
    monkeypatch.undo()
    pushed = await fetch_page(env.store, oldest, None, 2, max_scan=3)
    assert [r.workflow_id for r in pushed.rows] == ["even-00"]
    assert (pushed.scanned, pushed.scan_cut, pushed.next_cursor) == (1, False, None)


class KeysetQuery(msgspec.Struct, frozen=True, kw_only=True):
    """ListQuery as extended for keyset paging (what ``_listing`` looks for)."""

    tenant_id: str | None
    status: WorkflowStatus | None = None
    name: str | None = None
    limit: int = 100
    offset: int = 0
    after: tuple[datetime, str] | None = None
    id_prefix: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


class KeysetStore:
    """A MemoryStore whose listing takes KeysetQuery (the contract the adapters get)."""

    def __init__(self, env: TestEnvironment) -> None:
        self.inner = env.store
        self.queries: list[KeysetQuery] = []

    async def list_workflows(self, query: KeysetQuery) -> list[WorkflowRecord]:
        self.queries.append(query)
        rows = await self.inner.list_workflows(
            ListQuery(
                tenant_id=query.tenant_id, status=query.status, name=query.name, limit=2**31 - 1
            )
        )

        def keep(r: WorkflowRecord) -> bool:
            return (
                (query.after is None or (r.created_at, r.workflow_id) < query.after)
                and (not query.id_prefix or r.workflow_id.startswith(query.id_prefix))
                and (query.created_from is None or r.created_at >= query.created_from)
                and (query.created_to is None or r.created_at < query.created_to)
            )

        return [r for r in rows if keep(r)][query.offset : query.offset + query.limit]


async def test_keyset_paging_when_list_query_has_it(
    env: TestEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest_first = await started(env, 9)
    monkeypatch.setattr(_listing, "ListQuery", KeysetQuery)
    store = KeysetStore(env)
    pages = await all_pages(store, Filters(), 4)
    assert pages == [newest_first[:4], newest_first[4:8], newest_first[8:]]
    assert all(q.offset == 0 and q.limit == 5 for q in store.queries)  # keyset, pushed down
    assert store.queries[0].after is None
    assert store.queries[1].after == (
        (await env.engine.query(newest_first[3])).created_at,
        newest_first[3],
    )
    store.queries.clear()
    odd = await all_pages(store, Filters(id_prefix="odd-"), 3)
    assert odd == [["odd-07", "odd-05", "odd-03"], ["odd-01"]]
    assert {q.id_prefix for q in store.queries} == {"odd-"}
    assert len(store.queries) == 2  # one statement per page: nothing filtered here
