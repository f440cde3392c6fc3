"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright,
against uvicorn on 127.0.0.1, with a real Worker on an in-memory store.

Skips (with the reason) when /usr/bin/chromium or Playwright is missing, unless
FLOWS_UI_REQUIRE_BROWSER=1 (CI), which makes that an error. Screenshots go to
tests/ui/artifacts/ (or $FLOWS_UI_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flows_core as flows
from flows_memory import MemoryStore
from flows_ui import build_server, create_app

from .workflows import (
    ACTIVITIES,
    BROKEN,
    FLAKY_FAILURES,
    HOSTILE,
    SIGNAL_TYPES,
    WORKFLOWS,
    approval,
    failing,
    fragile,
    greet,
    hostile,
    steps,
)

CHROMIUM = Path(os.environ.get("FLOWS_UI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("FLOWS_UI_ARTIFACTS", Path(__file__).parent / "artifacts"))
WAIT_MS = 20_000

REQUIRED = os.environ.get("FLOWS_UI_REQUIRE_BROWSER") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"FLOWS_UI_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _missing(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
try:
    import playwright.async_api as playwright_api
except ImportError:
    _missing("browser tests need Playwright for Python (pip install playwright)")
expect = playwright_api.expect


@flows.workflow("nightly-report")
async def nightly_report(ctx: flows.WorkflowContext, day: int) -> int:
    """Registered with the Engine only: no worker runs it, so its starts queue up."""
    return day


@dataclass
class Live:
    url: str
    engine: flows.Engine
    page: Any

    async def open(self, path: str) -> None:
        await self.page.goto(self.url + path)

    async def shot(self, name: str) -> Path:
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def live(request: pytest.FixtureRequest) -> AsyncIterator[Live]:
    """uvicorn serving the dashboard on a free loopback port, a Worker, and a browser."""
    store = MemoryStore()
    engine = flows.Engine(store, workflows=[*WORKFLOWS, nightly_report])
    worker = flows.Worker(
        store,
        workflows=WORKFLOWS,
        activities=ACTIVITIES,
        poll_interval=0.05,
        worker_id="worker-1",
        workflow_task_backoff=timedelta(milliseconds=10),
        sticky_cache_size=0,  # BROKEN stands for a deploy (see tests/ui/conftest.py)
    )
    worker_task = asyncio.ensure_future(worker.run())
    options = getattr(request, "param", {})  # create_app options, by indirect parametrize
    app = create_app(engine, definitions=WORKFLOWS, signal_types=SIGNAL_TYPES, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(
        app, host="127.0.0.1", port=port, log_level="warning", uvicorn_options={"lifespan": "off"}
    )
    server_task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
        if server_task.done():
            server_task.result()
    user_data = tempfile.mkdtemp(prefix="flows-ui-chromium-")
    try:
        async with playwright_api.async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                user_data,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1360, "height": 700},
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                yield Live(f"http://127.0.0.1:{port}", engine, page)
            finally:
                await context.close()
    finally:
        server.should_exit = True
        await server_task
        await worker.stop(grace_period=1.0)
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        shutil.rmtree(user_data, ignore_errors=True)


async def until(engine: flows.Engine, workflow_id: str, predicate: Any) -> flows.WorkflowInfo:
    async def poll() -> flows.WorkflowInfo:
        while True:
            info = await engine.query(workflow_id)
            if predicate(info):
                return info
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), 20)


async def park(engine: flows.Engine, workflow_id: str) -> None:
    """Start ``fragile`` and make it a dead letter (non-deterministic code)."""
    await engine.start(fragile, "parcel", workflow_id=workflow_id)
    await until(engine, workflow_id, lambda i: i.history_length >= 2)
    BROKEN["on"] = True
    await engine.signal(workflow_id, "go", "now")
    await until(engine, workflow_id, lambda i: i.status == flows.WorkflowStatus.PARKED)
    BROKEN["on"] = False


async def test_list_filter_and_open_a_workflow(live: Live) -> None:
    engine = live.engine
    for n, name in enumerate(["ada", "grace", "edsger"]):
        await (await engine.start(greet, name, workflow_id=f"greet-{n}")).result(timeout=20)
    await (await engine.start(steps, "invoice", workflow_id="steps-1")).result(timeout=20)
    with contextlib.suppress(flows.WorkflowFailed):
        await (await engine.start(failing, "card declined", workflow_id="charge-7")).result(
            timeout=20
        )
    await park(engine, "fragile-3")
    for n in range(2):
        await engine.start(approval, 100 * (n + 1), workflow_id=f"approval-{n}")
    cancelled = await engine.start(approval, 5, workflow_id="approval-old")
    await until(engine, "approval-old", lambda i: i.history_length >= 3)
    await engine.cancel(cancelled.workflow_id, reason="duplicate")
    await until(engine, "approval-old", lambda i: i.finished)
    await until(engine, "approval-1", lambda i: i.history_length >= 3)

    await live.open("/workflows")
    rows = live.page.locator("#workflows tbody tr")
    await expect(rows).to_have_count(9)
    await live.shot("list")

    await live.page.fill("input[name=name]", "approval")
    await live.page.select_option("select[name=status]", "running")
    await live.page.click("button:has-text('Apply')")
    await expect(rows).to_have_count(2)
    await expect(live.page.locator("#workflows")).not_to_contain_text("greet")
    await live.shot("list-filtered")

    await live.page.click("a:has-text('approval-1')")
    await expect(live.page.locator("#workflow-id")).to_have_text("approval-1")
    await expect(live.page.locator(".page-head .status")).to_have_text("running")
    await expect(live.page.locator("#pending")).to_contain_text("approve")
    await live.shot("workflow-waiting")

    await live.open("/workflow?id=steps-1")
    await expect(live.page.locator("#steps")).to_contain_text("flaky-step")
    await live.open("/workers")
    await expect(live.page.locator("#workers")).to_contain_text("worker-1")
    await live.shot("workers")
    await live.open("/queues")
    await live.shot("queues")


async def test_send_a_signal_and_watch_it_resume(live: Live) -> None:
    await live.engine.start(approval, 250, workflow_id="approval-7")
    await until(live.engine, "approval-7", lambda i: i.history_length >= 3)
    await live.open("/workflow?id=approval-7")
    await live.page.click("a:has-text('Send signal')")
    await live.page.fill("input[name=name]", "approve")
    await live.page.fill("textarea[name=payload]", '{"by": "wrong type", "note": 5}')
    await live.page.check("input[name=confirm]")
    await live.page.click("#confirm-button")
    await expect(live.page.locator("#action-error")).to_contain_text("does not match Approval")
    await live.shot("signal-refused")
    await live.page.fill("textarea[name=payload]", '{"by": "dana", "note": "limit checked"}')
    FLAKY_FAILURES["left"] = 2  # the booking step after the approval fails twice, then works
    await live.page.check("input[name=confirm]")
    await live.page.click("#confirm-button")
    await expect(live.page.locator("#notice")).to_have_text("Signal sent.")
    # The page refreshes itself until the workflow is done.
    await expect(live.page.locator(".page-head .status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(live.page.locator("#output")).to_contain_text("250 approved by dana")
    await expect(live.page.locator("#timeline")).to_contain_text("Signal received")
    await expect(live.page.locator("#steps")).to_contain_text("flaky-step")
    attempts = live.page.locator("#steps tr", has_text="flaky-step").locator("td").nth(5)
    await expect(attempts).to_have_text("3")
    await live.shot("workflow-completed")
    assert (await live.engine.query("approval-7")).output == "250 approved by dana"


async def test_terminate_a_workflow(live: Live) -> None:
    await live.engine.start(approval, 9, workflow_id="approval-stuck")
    await until(live.engine, "approval-stuck", lambda i: i.history_length >= 3)
    await live.open("/workflow?id=approval-stuck")
    await live.page.click("a:has-text('Terminate')")
    await live.page.fill("input[name=reason]", "stuck for good")
    await live.page.check("input[name=confirm]")
    await live.page.click("#confirm-button")
    await expect(live.page.locator(".page-head .status")).to_have_text("terminated")
    await expect(live.page.locator("#notice")).to_have_text("Workflow terminated.")
    await expect(live.page.locator("#error")).to_contain_text("stuck for good")
    await expect(live.page.locator("#pending")).to_have_count(0)
    await expect(live.page.locator("#steps")).to_contain_text("dropped")
    await live.shot("terminate")
    info = await live.engine.query("approval-stuck")
    assert info.status == flows.WorkflowStatus.TERMINATED


async def test_retry_from_the_dead_letter_page(live: Live) -> None:
    await park(live.engine, "fragile-9")
    BROKEN["on"] = True  # not fixed yet
    await live.open("/dead-letters")
    await expect(live.page.locator("#dead-letters")).to_contain_text("NonDeterminismError")
    await live.shot("dead-letters")
    await live.page.click("#dead-letters a:has-text('Retry')")
    await expect(live.page.locator("h1")).to_have_text("Retry the dead letter")
    await live.page.click("#confirm-button")  # unticked: the browser refuses to submit
    await expect(live.page.locator("h1")).to_have_text("Retry the dead letter")
    assert (await live.engine.query("fragile-9")).status == flows.WorkflowStatus.PARKED
    BROKEN["on"] = False  # the code fix is deployed
    await live.page.check("input[name=confirm]")
    await live.page.click("#confirm-button")
    await expect(live.page.locator("#notice")).to_have_text("Dead letter put back to running.")
    await expect(live.page.locator(".page-head .status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(live.page.locator("#output")).to_contain_text("parcel went now")


async def test_queues_chart_and_waiting_reason(live: Live) -> None:
    for day in range(40):
        await live.engine.start(nightly_report, day, workflow_id=f"report-{day:02}")
    stats = await live.engine.store.stats()
    await live.open("/queues")
    await expect(live.page.locator("#depth-total")).to_have_text("40")
    bars = live.page.locator("svg.chart rect.chart-bar")
    await expect(bars).to_have_count(len(stats.queue_depth))
    await live.shot("queues-backlog")
    await live.open("/workflow?id=report-07")
    await expect(live.page.locator("#waiting-reason")).to_contain_text(
        "waiting for a worker that runs 'nightly-report' version 1"
    )


TOKEN = "browser-test-token-0123"


@pytest.mark.parametrize("live", [{"token": {"erin": TOKEN}}], indirect=True)
async def test_token_login_in_the_browser(live: Live) -> None:
    await (await live.engine.start(greet, "lin", workflow_id="greet-login")).result(timeout=20)
    await live.open("/workflow?id=greet-login")
    await expect(live.page.locator("h1")).to_have_text("Log in")
    await live.page.fill("input[name=token]", "not-the-token")
    await live.page.click("button:has-text('Log in')")
    await expect(live.page.locator(".callout.danger")).to_have_text("wrong token")
    await live.page.fill("input[name=token]", TOKEN)
    await live.page.click("button:has-text('Log in')")
    # Back where it was going, logged in: the cookie is HttpOnly, SameSite=Strict.
    await expect(live.page.locator("#workflow-id")).to_have_text("greet-login")
    await expect(live.page.locator(".identity")).to_have_text("erin@127.0.0.1")
    [cookie] = await live.page.context.cookies()
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    await live.page.click("button:has-text('Log out')")
    await expect(live.page.locator("h1")).to_have_text("Log in")
    await live.open("/workflows")
    await expect(live.page.locator("h1")).to_have_text("Log in")


async def test_hostile_values_do_not_run_in_the_browser(live: Live) -> None:
    dialogs: list[str] = []
    live.page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    payload = {"short": "<img src=x onerror=alert(2)>", HOSTILE: "<svg onload=alert(3)>"}
    wf_id = "<script>alert(4)</script>"
    await (await live.engine.start(hostile, payload, workflow_id=wf_id)).result(timeout=20)
    await live.open("/workflows")
    await expect(live.page.locator("#workflows")).to_contain_text(HOSTILE)
    link = live.page.locator("#workflows a", has_text=wf_id)
    await link.click()
    await expect(live.page.locator("#workflow-id")).to_have_text(wf_id)
    await expect(live.page.locator("h1")).to_contain_text(HOSTILE)
    await live.page.click("#timeline details >> nth=0")
    await expect(live.page.locator("#input")).to_contain_text("<img src=x onerror=alert(2)>")
    assert await live.page.locator("img").count() == 0
    assert await live.page.locator("script").count() == 0
    await live.shot("hostile")
    assert dialogs == []
