"""The dashboard on PostgreSQL and Citus: the same pages and actions through
PostgresStore and CitusStore (tenant sharding)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

import pytest
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, make_pg_store

import flows_core as flows
from flows_ui import create_app

from .conftest import client_for, walk_pages
from .test_actions import act
from .workflows import ACTIVITIES, BROKEN, HOSTILE, WORKFLOWS, approval, fragile, greet, hostile


@pytest.fixture(
    params=[
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("citus", marks=pytest.mark.citus),
    ]
)
async def pg_engine(request: pytest.FixtureRequest) -> AsyncIterator[flows.Engine]:
    if request.param == "pg":
        store = await make_pg_store(request.getfixturevalue("pg_dsn"))
        drop = drop_pg_store
    else:
        store = await make_citus_store(request.getfixturevalue("citus_dsn"))
        drop = drop_citus_store
    worker = flows.Worker(
        store,
        workflows=WORKFLOWS,
        activities=ACTIVITIES,
        poll_interval=0.05,
        worker_id="pg-worker",
        sticky_cache_size=0,  # BROKEN stands for a deploy (see tests/ui/conftest.py)
    )
    task = asyncio.ensure_future(worker.run())
    try:
        yield flows.Engine(store, workflows=WORKFLOWS)
    finally:
        await worker.stop(grace_period=1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await drop(store)


async def until(
    engine: flows.Engine, workflow_id: str, predicate: Callable[[flows.WorkflowInfo], bool]
) -> None:
    async def poll() -> None:
        while True:
            if predicate(await engine.query(workflow_id)):
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 30)


async def test_pages_and_actions_on_postgresql(pg_engine: flows.Engine) -> None:
    engine = pg_engine
    for n in range(5):
        await (await engine.start(greet, f"n{n}", workflow_id=f"order-{n}")).result(timeout=30)
    payload = {"short": HOSTILE, "long": "<script>x</script>" * 6000}
    await (await engine.start(hostile, payload, workflow_id="<i>hostile</i>")).result(timeout=30)
    waiting = await engine.start(approval, 42, workflow_id="approval-pg")
    await until(engine, "approval-pg", lambda i: i.history_length >= 3)
    await engine.start(fragile, "crate", workflow_id="fragile-pg")
    await until(engine, "fragile-pg", lambda i: i.history_length >= 2)
    BROKEN["on"] = True
    await engine.signal("fragile-pg", "go", "soon")
    await until(engine, "fragile-pg", lambda i: i.status == flows.WorkflowStatus.PARKED)

    app = create_app(engine, page_size=2)
    async with client_for(app) as client:
        seen = await walk_pages(client, "/workflows?id=order-")
        assert sorted(seen) == [f"order-{n}" for n in range(5)]
        assert len(seen) == 5

        listing = await client.get("/workflows?status=completed")
        assert re.search(r'<span class="n">6</span> completed', listing.text)

        detail = await client.get("/workflow", params={"id": "<i>hostile</i>"})
        assert detail.status_code == 200
        assert "<script>" not in detail.text
        assert "<i>hostile</i>" not in detail.text
        assert "&lt;i&gt;hostile&lt;/i&gt;" in detail.text
        assert detail.text.count("&lt;script&gt;x&lt;/script&gt;") >= 6000

        dead = await client.get("/dead-letters")
        assert "fragile-pg" in dead.text
        assert "NonDeterminismError" in dead.text
        workers = await client.get("/workers")
        assert "pg-worker" in workers.text
        queues = await client.get("/queues")
        assert queues.status_code == 200

        sent = await act(
            client, "signal", {"id": "approval-pg", "name": "approve", "payload": '{"by": "pg"}'}
        )
        assert sent.status_code == 303
        assert await waiting.result(timeout=30) == "42 approved by pg"

        BROKEN["on"] = False
        retried = await act(client, "retry", {"id": "fragile-pg"})
        assert retried.status_code == 303
        await until(engine, "fragile-pg", lambda i: i.status == flows.WorkflowStatus.COMPLETED)
        page = await client.get("/workflow?id=fragile-pg")
        assert "crate went soon" in page.text

        stuck = await engine.start(approval, 1, workflow_id="approval-stuck")
        await until(engine, "approval-stuck", lambda i: i.history_length >= 3)
        ended = await act(client, "terminate", {"id": "approval-stuck", "reason": "stuck"})
        if callable(getattr(engine.store, "terminate_workflow", None)):
            assert ended.status_code == 303
            with pytest.raises(flows.WorkflowTerminated):
                await stuck.result(timeout=30)
            page = await client.get("/workflow?id=approval-stuck")
            assert "Workflow terminated" in page.text
        else:  # this store version has no terminate yet: said so, nothing changed
            assert ended.status_code == 400
            assert "does not implement terminate_workflow yet" in ended.text
            assert (await stuck.query()).status == flows.WorkflowStatus.RUNNING
