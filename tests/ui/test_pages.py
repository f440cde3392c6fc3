"""Every page renders real workflows run by a real Worker (in-memory store)."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from starlette.applications import Starlette
from starlette.routing import Mount

import flows_core as flows
from flows_memory import TestEnvironment
from flows_ui import create_app

from .conftest import client_for, listed_ids, walk_pages
from .workflows import BROKEN, FLAKY_FAILURES, Approval, approval, chatty, fragile, greet, steps


async def test_list_counts_and_workflow_page(env: TestEnvironment) -> None:
    done = await env.engine.start(greet, "ada", workflow_id="greet-1")
    assert await env.result(done) == "hello ADA!"
    await env.advance(timedelta(seconds=1))
    waiting = await env.engine.start(approval, 125, workflow_id="approval-1")
    await env.wait_until(waiting, lambda i: i.history_length >= 3)
    async with client_for(create_app(env.engine)) as client:
        listing = await client.get("/workflows")
        assert listing.status_code == 200
        assert listed_ids(listing.text) == ["approval-1", "greet-1"]  # newest first
        assert re.search(r'<span class="n">1</span> completed', listing.text)
        assert re.search(r'<span class="n">1</span> running', listing.text)
        assert re.search(r'<span class="n">2</span> all', listing.text)

        page = await client.get("/workflow", params={"tenant": "default", "id": "greet-1"})
        assert page.status_code == 200
        text = page.text
        assert "hello ADA!" in text  # output
        assert "&#34;ada&#34;" in text  # input, JSON, escaped
        assert "Activity scheduled" in text
        assert "Activity completed" in text
        steps_table = text[text.index('id="steps"') :]
        assert "shout" in steps_table
        assert ">completed<" in steps_table

        page = await client.get("/workflow", params={"id": "approval-1"})  # default tenant
        assert page.status_code == 200
        assert "Waiting for signal" in page.text
        pending = page.text[page.text.index('id="pending"') :]
        assert "signal wait" in pending
        assert "approve" in pending
        assert "refresh" not in page.text.split("</head>")[0]  # no auto-refresh unless asked
        page = await client.get("/workflow", params={"id": "approval-1", "refresh": "0"})
        assert '<meta http-equiv="refresh" content="1">' in page.text  # never a reload loop
        page = await client.get("/workflow", params={"id": "greet-1", "refresh": "2"})
        assert "http-equiv" not in page.text  # a finished workflow does not refresh

        missing = await client.get("/workflow", params={"id": "nope"})
        assert missing.status_code == 404


async def test_activity_attempts_and_durations_in_steps(env: TestEnvironment) -> None:
    FLAKY_FAILURES["left"] = 2
    run = await env.engine.start(steps, "x", workflow_id="steps-1")
    assert await env.result(run) == "done x"
    async with client_for(create_app(env.engine)) as client:
        page = await client.get("/workflow", params={"id": "steps-1"})
    table = page.text[
        page.text.index('id="steps"') : page.text.index("</table>", page.text.index('id="steps"'))
    ]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    activity = next(r for r in rows if "flaky-step" in r)
    assert re.search(r'<td class="num">3</td>', activity), activity  # 2 failures + success
    assert ">completed<" in activity
    timer = next(r for r in rows if "kind-timer" in r)
    assert ">fired<" in timer
    assert "side effect" in table


async def test_dead_letters_workers_and_queues(env: TestEnvironment) -> None:
    run = await env.engine.start(fragile, "parcel", workflow_id="fragile-1")
    await env.wait_until(run, lambda i: i.history_length >= 2)
    BROKEN["on"] = True
    await env.engine.signal("fragile-1", "go", "now")
    await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
    async with client_for(create_app(env.engine)) as client:
        dead = await client.get("/dead-letters")
        assert dead.status_code == 200
        assert listed_ids(dead.text) == ["fragile-1"]
        assert "NonDeterminismError" in dead.text
        assert "/actions/retry?" in dead.text

        page = await client.get("/workflow", params={"id": "fragile-1"})
        assert 'id="waiting-reason"' in page.text
        assert "dead-lettered" in page.text

        workers = await client.get("/workers")
        assert workers.status_code == 200
        assert "test-worker-0" in workers.text
        assert "fragile v1" in workers.text
        assert "shout" in workers.text
        assert ">live<" in workers.text

        queues = await client.get("/queues")
        assert queues.status_code == 200
        assert "dead letters" in queues.text
        assert re.search(r'<a href="[^"]*dead-letters">1</a>', queues.text)


async def test_queues_chart_shows_depth_per_shard() -> None:
    # No worker runs here: started workflows wait in their queues.
    env = TestEnvironment(workflows=[greet])
    for n in range(5):
        await env.engine.start(greet, f"n{n}", workflow_id=f"q-{n}")
    stats = await env.store.stats()
    async with client_for(create_app(env.engine)) as client:
        page = await client.get("/queues")
    assert page.status_code == 200
    assert '<div class="tile-n" id="depth-total">5</div>' in page.text
    assert "<svg" in page.text
    for shard, depth in stats.queue_depth.items():
        assert f"<title>{html.escape(shard)}: {depth}</title>" in page.text
    assert page.text.count('class="chart-bar"') == len(stats.queue_depth)


async def test_filters_and_keyset_paging(env: TestEnvironment) -> None:
    for n in range(7):
        await env.engine.start(greet, f"g{n}", workflow_id=f"order-{n}")
        await env.advance(timedelta(minutes=1))
    for n in range(3):
        await env.engine.start(greet, f"o{n}", workflow_id=f"refund-{n}", tenant_id="acme")
        await env.advance(timedelta(minutes=1))
    await env.engine.start(approval, 1, workflow_id="order-approval")
    await env.wait_idle()
    app = create_app(env.engine, page_size=3)
    async with client_for(app) as client:
        seen = await walk_pages(client, "/workflows?name=greet", page_size=3)
        expected = [f"refund-{n}" for n in (2, 1, 0)] + [f"order-{n}" for n in range(6, -1, -1)]
        assert seen == expected  # every greet workflow once, newest first, no duplicates

        prefix = await client.get("/workflows", params={"id": "order-", "name": "greet"})
        assert listed_ids(prefix.text) == ["order-6", "order-5", "order-4"]
        tenant = await client.get("/workflows", params={"tenant": "acme"})
        assert listed_ids(tenant.text) == ["refund-2", "refund-1", "refund-0"]
        running = await client.get("/workflows", params={"status": "running"})
        assert listed_ids(running.text) == ["order-approval"]

        # Time range: from order-2's start (inclusive) to order-5's (exclusive).
        start_2 = (await env.engine.query("order-2")).created_at
        start_5 = (await env.engine.query("order-5")).created_at
        t_from = start_2.strftime("%Y-%m-%dT%H:%M:%S.%f")
        t_to = start_5.isoformat()
        window = await client.get("/workflows", params={"from": t_from, "to": t_to})
        assert listed_ids(window.text) == ["order-4", "order-3", "order-2"]

        bad = await client.get("/workflows", params={"status": "sleeping"})
        assert bad.status_code == 400
        assert "is not one of" in bad.text
        bad_time = await client.get("/workflows", params={"from": "yesterday"})
        assert bad_time.status_code == 400
        assert "is not a date and time" in bad_time.text


async def test_paging_does_not_repeat_rows_when_new_workflows_arrive(env: TestEnvironment) -> None:
    for n in range(4):
        await env.engine.start(greet, f"g{n}", workflow_id=f"w-{n}")
        await env.advance(timedelta(seconds=1))
    async with client_for(create_app(env.engine, page_size=2)) as client:
        first = await client.get("/workflows")
        assert listed_ids(first.text) == ["w-3", "w-2"]
        next_url = html.unescape(re.search(r'href="([^"]+)" rel="next"', first.text).group(1))  # type: ignore[union-attr]
        for n in range(2):  # newer workflows shift the offsets under the cursor
            await env.advance(timedelta(seconds=1))
            await env.engine.start(greet, "late", workflow_id=f"late-{n}")
        second = await client.get(next_url)
        assert listed_ids(second.text) == ["w-1", "w-0"]


async def test_mounted_under_a_prefix(env: TestEnvironment) -> None:
    await env.result(await env.engine.start(greet, "bo", workflow_id="greet-m"))
    outer = Starlette(routes=[Mount("/ops/flows", app=create_app(env.engine))])
    async with client_for(outer) as client:
        page = await client.get("/ops/flows/workflows")
        assert page.status_code == 200
        assert 'href="/ops/flows/workflow?tenant=default&amp;id=greet-m"' in page.text
        assert 'href="/ops/flows/static/flows.css"' in page.text
        assert "Path=/ops/flows/;" in page.headers["set-cookie"]
        css = await client.get("/ops/flows/static/flows.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        detail = await client.get("/ops/flows/workflow?tenant=default&id=greet-m")
        assert detail.status_code == 200
        assert "hello BO!" in detail.text


async def test_signal_types_shown_on_the_confirm_page(env: TestEnvironment) -> None:
    run = await env.engine.start(approval, 5, workflow_id="ap-types")
    await env.wait_until(run, lambda i: i.history_length >= 3)
    app = create_app(
        env.engine, definitions=[approval], signal_types={"approval": {"approve": Approval}}
    )
    async with client_for(app) as client:
        page = await client.get("/actions/signal", params={"id": "ap-types"})
    assert page.status_code == 200
    assert "<code>approve</code> → <code>Approval</code>" in page.text


async def test_a_long_history_is_cut_until_asked(env: TestEnvironment) -> None:
    run = await env.engine.start(chatty, 1200, workflow_id="chatty-1")
    assert await env.result(run) == 1200
    async with client_for(create_app(env.engine)) as client:
        page = await client.get("/workflow", params={"id": "chatty-1"})
        assert page.text.count('class="ev ev-') == 1000
        assert "202 more events." in page.text  # 1 start + 1200 side effects + 1 end
        assert 'href="/workflow?tenant=default&amp;id=chatty-1&amp;all=1"' in page.text
        whole = await client.get("/workflow", params={"id": "chatty-1", "all": "1"})
        assert whole.text.count('class="ev ev-') == 1202
        assert "more events" not in whole.text
