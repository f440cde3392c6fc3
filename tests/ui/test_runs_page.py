"""The workflow page shows the run (continue-as-new) and the published status."""

from __future__ import annotations

import flows_core as flows
from flows_memory import TestEnvironment
from flows_ui import create_app

from .conftest import client_for


@flows.workflow("ui-counter")
async def counter(ctx: flows.WorkflowContext, total: int) -> int:
    value = await ctx.wait_for_signal("add", int)
    ctx.set_status({"total": total + value, "stage": "counting"})
    if value > 0:
        ctx.continue_as_new(total + value)
    return total


async def test_run_and_published_status_on_the_workflow_page() -> None:
    async with TestEnvironment(workflows=[counter]) as env:
        run = await env.engine.start(counter, 0, workflow_id="counter-1")
        for value in (2, 3, 0):
            await env.engine.signal("counter-1", "add", value)
        assert await env.result(run) == 5
        async with client_for(create_app(env.engine)) as client:
            page = await client.get("/workflow", params={"id": "counter-1"})
    assert page.status_code == 200
    text = page.text
    assert 'id="run-number">3 (continued as new 2 times)' in text
    status = text[text.index('id="published-status">') :].split("</pre>", 1)[0]
    assert "&#34;total&#34;: 5" in status
    assert "counting" in status
