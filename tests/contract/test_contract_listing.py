"""Store contract: listings (``Store.list_workflows``) with filters and keyset paging.

Every adapter lists newest first, ordered by (created_at, workflow_id) descending with
ids compared by code point, and pages exactly with a keyset cursor (``ListQuery.after``)
while workflows start meanwhile. Expected rows come from each workflow's own row
(``get_workflow``) filtered by ``ListQuery.matches``, not from another listing.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core.events import WorkflowTerminatedEvent
from flows_core.store import (
    ListQuery,
    WorkflowCounts,
    WorkflowRecord,
    WorkflowStatus,
    list_key,
)
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit


def keys(records: list[WorkflowRecord]) -> list[tuple[datetime, str]]:
    return [list_key(r) for r in records]


def expected(rows: list[WorkflowRecord], query: ListQuery) -> list[tuple[datetime, str]]:
    """What ``query`` must list out of ``rows`` (every row it could see)."""
    found = sorted((r for r in rows if query.matches(r)), key=list_key, reverse=True)
    return keys(found[query.offset : query.offset + query.limit])


async def start_some(kit: Kit, ids: list[str], *, tenant: str | None = None) -> None:
    """Start workflows ``ids``; on a virtual clock a few in a row share a created_at (the
    id breaks the tie), then the clock moves on."""
    clock = kit.adapter.virtual_clock
    for workflow_id in ids:
        await kit.start(workflow_id, tenant=tenant)
        if clock is not None and sum(map(ord, workflow_id)) % 4 == 0:
            clock.advance(0.001)


async def test_keyset_paging_returns_each_workflow_once_in_order_while_others_start(
    kit: Kit,
) -> None:
    """250 workflows of two tenants, listed across tenants 40 at a time: each comes
    exactly once, in listing order, though new workflows start between the pages."""
    store = kit.store
    tenants = [kit.tenant, kit.other_tenant]
    original = [(tenants[n % 2], f"p{n:03d}-{kit.ns}") for n in range(250)]
    for tenant, workflow_id in original:
        await start_some(kit, [workflow_id], tenant=tenant)
    rows = [await store.get_workflow(t, w) for t, w in original]
    listed: list[WorkflowRecord] = []
    after: tuple[datetime, str] | None = None
    pages = 0
    while True:
        page = await store.list_workflows(
            ListQuery(tenant_id=None, name=kit.wf, limit=40, after=after)
        )
        pages += 1
        listed.extend(page)
        # new workflows start between pages: newer than any cursor, so never listed here
        await start_some(kit, [f"z{pages}-{kit.ns}"], tenant=tenants[pages % 2])
        if len(page) < 40:
            break
        after = list_key(page[-1])
        assert pages < 20, "paging does not end"
    got = keys(listed)
    assert len(set(got)) == len(got), "no row twice"
    assert got == sorted(keys(rows), reverse=True), "each row once, in listing order"
    assert pages == 7
    assert [len(p) for p in (listed[:40], listed[240:])] == [40, 10]


async def test_a_cursor_continues_exactly_after_its_row(kit: Kit) -> None:
    await start_some(kit, [f"c{n}-{kit.ns}" for n in range(12)])
    every = await kit.store.list_workflows(ListQuery(tenant_id=kit.tenant, limit=100))
    assert len(every) == 12
    for cut in (0, 5, 11):
        rest = await kit.store.list_workflows(
            ListQuery(tenant_id=kit.tenant, after=list_key(every[cut]), limit=100)
        )
        assert keys(rest) == keys(every[cut + 1 :])
    # offset counts from the cursor
    skipped = await kit.store.list_workflows(
        ListQuery(tenant_id=kit.tenant, after=list_key(every[2]), offset=3, limit=4)
    )
    assert keys(skipped) == keys(every[6:10])


async def test_filters_combine(kit: Kit, adapter: Adapter) -> None:
    store = kit.store
    other_name = f"other-{kit.ns}"
    started: list[tuple[str, str]] = []
    for n in range(30):
        tenant = kit.tenant if n % 3 else kit.other_tenant
        workflow_id = f"{'ab'[n % 2]}{n:02d}-{kit.ns}"
        await kit.start(workflow_id, tenant=tenant, name=other_name if n % 5 == 0 else None)
        started.append((tenant, workflow_id))
        if adapter.virtual_clock is not None:
            adapter.virtual_clock.advance(0.01)
    for tenant, workflow_id in started[::4]:
        ended = WorkflowTerminatedEvent(reason="test", at=kit.now())
        await store.terminate_workflow(tenant, workflow_id, ended)
    rows = [await store.get_workflow(t, w) for t, w in started]
    times = sorted(r.created_at for r in rows)
    low, high = times[8], times[21]
    queries = [
        ListQuery(tenant_id=kit.tenant, id_prefix="a"),
        ListQuery(tenant_id=None, id_prefix="b1", name=kit.wf),
        ListQuery(tenant_id=kit.tenant, created_from=low),
        ListQuery(tenant_id=kit.tenant, created_to=high),
        ListQuery(tenant_id=None, created_from=low, created_to=high),
        ListQuery(tenant_id=kit.tenant, status=WorkflowStatus.TERMINATED, id_prefix="a"),
        ListQuery(
            tenant_id=kit.tenant,
            status=WorkflowStatus.RUNNING,
            name=kit.wf,
            id_prefix="b",
            created_from=low,
            created_to=high,
        ),
        ListQuery(tenant_id=kit.other_tenant, name=other_name, created_from=low),
        ListQuery(tenant_id=None, status=WorkflowStatus.TERMINATED, limit=3, offset=1),
        ListQuery(tenant_id=kit.tenant, created_from=high, created_to=low),
        ListQuery(tenant_id=kit.tenant, id_prefix=f"a00-{kit.ns}x"),
    ]
    for query in queries:
        want = expected(rows, query)
        got = keys(await store.list_workflows(query))
        assert got == want, query
    # a tenant's counts per status (the optional WorkflowCounts every adapter here has)
    assert isinstance(store, WorkflowCounts)
    for tenant in (kit.tenant, kit.other_tenant):
        statuses = [r.status.value for r in rows if r.tenant_id == tenant]
        assert await store.count_workflows(tenant) == Counter(statuses)
    assert await store.count_workflows(f"nobody-{kit.ns}") == {}
    # the reference itself is what the filters say
    a_ids = {w for t, w in started if t == kit.tenant and w.startswith("a")}
    assert {w for _, w in expected(rows, queries[0])} == a_ids
    in_range = expected(rows, queries[4])
    assert len(in_range) == 13  # created_from inclusive, created_to exclusive
    assert all(low <= at < high for at, _ in in_range)
    assert expected(rows, queries[-2]) == []
    # with a cursor, the filters still hold
    first = await store.list_workflows(ListQuery(tenant_id=kit.tenant, id_prefix="b", limit=4))
    rest = ListQuery(tenant_id=kit.tenant, id_prefix="b", after=list_key(first[-1]))
    assert keys(await store.list_workflows(rest)) == expected(rows, rest)
    assert len(first) + len(expected(rows, rest)) == len(
        [w for t, w in started if t == kit.tenant and w.startswith("b")]
    )


async def test_engine_list_pages_with_its_infos(adapter: Adapter) -> None:
    @flows.workflow(f"listed-{adapter.ns}")
    async def listed(ctx: flows.WorkflowContext, x: int) -> int:
        return x

    engine = flows.Engine(adapter.store, workflows=[listed])
    tenant = f"t-{adapter.ns}"
    ids = []
    for n in range(9):
        run = await engine.start(listed, n, tenant_id=tenant, workflow_id=f"e{n}-{adapter.ns}")
        ids.append(run.workflow_id)
        if adapter.virtual_clock is not None:
            adapter.virtual_clock.advance(0.001)
    seen: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = await engine.list(tenant_id=tenant, limit=4, after=after, id_prefix="e")
        seen += [info.workflow_id for info in page]
        if len(page) < 4:
            break
        after = (page[-1].created_at, page[-1].workflow_id)
    assert seen == ids[::-1]
    start = await engine.query(ids[3], tenant_id=tenant)
    end = await engine.query(ids[6], tenant_id=tenant)
    window = await engine.list(
        tenant_id=tenant, created_from=start.created_at, created_to=end.created_at
    )
    assert [i.workflow_id for i in window] == ids[3:6][::-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id_prefix": 7}, "id prefix must be a string"),
        ({"id_prefix": ""}, "id prefix must not be empty"),
        ({"limit": -1}, "limit must be an integer"),
        ({"limit": 2**31}, "limit must be an integer"),
        ({"offset": True}, "offset must be an integer"),
        ({"after": "2024-01-01"}, "after must be a (created_at, workflow_id) pair"),
        ({"after": (datetime(2024, 1, 1), "w")}, "has no timezone"),
        ({"after": (datetime(2024, 1, 1, tzinfo=UTC), 5)}, "workflow id must be a"),
        ({"after": ("2024-01-01", "w")}, "created_at must be a datetime"),
        ({"created_from": "yesterday"}, "created_from must be a datetime"),
        ({"created_to": datetime(2024, 1, 1)}, "created_to 2024-01-01T00:00:00 has no timezone"),
        (
            {
                "created_from": datetime(2024, 1, 2, tzinfo=UTC),
                "created_to": datetime(2024, 1, 1, tzinfo=UTC),
            },
            "is after created_to",
        ),
    ],
)
async def test_engine_list_refuses_bad_arguments(
    adapter: Adapter, kwargs: dict[str, Any], message: str
) -> None:
    engine = flows.Engine(adapter.store)
    with pytest.raises(flows.InvalidArgument) as caught:
        await engine.list(tenant_id=f"t-{adapter.ns}", **kwargs)
    assert message in str(caught.value)


async def test_engine_list_takes_a_cursor_as_a_list(adapter: Adapter) -> None:
    """A cursor that went through JSON (a dashboard's link) comes back as a list."""
    engine = flows.Engine(adapter.store)
    at = datetime.now(UTC) + timedelta(days=1)
    cursor: Any = [at, "w"]
    assert await engine.list(tenant_id=f"t-{adapter.ns}", after=cursor) == []
