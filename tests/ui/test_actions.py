"""Actions: confirmed, CSRF-protected, validated, logged with who and when."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

import flows_core as flows
from flows_memory import TestEnvironment
from flows_ui import create_app

from .conftest import client_for, csrf_token
from .workflows import BROKEN, SIGNAL_TYPES, WORKFLOWS, approval, fragile, greet

TOKEN = "token-of-carol-1234"


async def act(
    client: httpx.AsyncClient, action: str, fields: dict[str, str], *, confirm: bool = True
) -> httpx.Response:
    """Open the confirm page of ``action`` and submit it."""
    query = {k: v for k, v in fields.items() if k in ("id", "tenant")}
    csrf = await csrf_token(client, f"/actions/{action}?" + httpx.QueryParams(query).__str__())
    data = {**fields, "csrf_token": csrf}
    if confirm:
        data["confirm"] = "yes"
    return await client.post(f"/actions/{action}", data=data)


async def waiting_approval(env: TestEnvironment, wf_id: str) -> flows.Run[str]:
    run = await env.engine.start(approval, 10, workflow_id=wf_id)
    await env.wait_until(run, lambda i: i.history_length >= 3)
    return run


async def test_signal_resumes_and_is_logged(
    env: TestEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    run = await waiting_approval(env, "ap-1")
    caplog.set_level(logging.INFO, logger="flows.ui")
    app = create_app(
        env.engine, definitions=WORKFLOWS, signal_types=SIGNAL_TYPES, token={"carol": TOKEN}
    )
    async with client_for(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        page = await client.get("/actions/signal?id=ap-1")
        assert 'type="checkbox" name="confirm"' in page.text
        unconfirmed = await act(
            client,
            "signal",
            {"id": "ap-1", "name": "approve", "payload": '{"by": "x"}'},
            confirm=False,
        )
        assert unconfirmed.status_code == 400
        assert "tick the confirmation box" in unconfirmed.text
        sent = await act(
            client,
            "signal",
            {"id": "ap-1", "name": "approve", "payload": '{"by": "carol",\n"note": "ok"}'},
        )
        assert sent.status_code == 303
        assert sent.headers["location"] == "/workflow?tenant=default&id=ap-1&done=signal&refresh=1"
        assert await env.result(run) == "10 approved by carol"
        page = await client.get(sent.headers["location"])
        assert "Signal sent." in page.text
        assert "completed" in page.text
        assert "Signal received" in page.text
    [record] = [r for r in caplog.records if r.name == "flows.ui" and "UI signal" in r.getMessage()]
    message = record.getMessage()
    assert "'ap-1'" in message
    assert "carol@127.0.0.1" in message
    assert "'approve'" in message
    assert 'payload {"by":"carol","note":"ok"}' in message  # one line, as sent
    assert re.search(r" at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", message)
    assert record.flows_ui == {  # type: ignore[attr-defined]
        "action": "signal",
        "workflow_id": "ap-1",
        "tenant_id": "default",
        "who": "carol@127.0.0.1",
    }


async def test_signal_payload_is_validated(env: TestEnvironment) -> None:
    run = await waiting_approval(env, "ap-2")
    app = create_app(env.engine, definitions=WORKFLOWS, signal_types=SIGNAL_TYPES)
    async with client_for(app) as client:
        not_json = await act(
            client, "signal", {"id": "ap-2", "name": "approve", "payload": "{by: 1"}
        )
        assert not_json.status_code == 400
        assert "is not valid JSON" in not_json.text
        wrong_type = await act(
            client, "signal", {"id": "ap-2", "name": "approve", "payload": '{"by": 5}'}
        )
        assert wrong_type.status_code == 400
        assert "does not match Approval" in wrong_type.text
        assert "$.by" in wrong_type.text
        unknown = await act(client, "signal", {"id": "ap-2", "name": "aprove", "payload": "{}"})
        assert unknown.status_code == 400
        assert "takes no signal &#39;aprove&#39;" in unknown.text
        nameless = await act(client, "signal", {"id": "ap-2", "name": " ", "payload": "{}"})
        assert nameless.status_code == 400
        assert "needs a name" in nameless.text
    info = await run.query()
    assert info.status == flows.WorkflowStatus.RUNNING
    assert info.history_length == 3
    # Without types, any JSON goes; with definitions that lack the workflow, nothing goes.
    async with client_for(create_app(env.engine, definitions=[greet])) as client:
        refused = await act(
            client, "signal", {"id": "ap-2", "name": "approve", "payload": '{"by": "z"}'}
        )
        assert refused.status_code == 400
        assert "not among the app&#39;s definitions" in refused.text
    async with client_for(create_app(env.engine)) as client:
        sent = await act(
            client, "signal", {"id": "ap-2", "name": "approve", "payload": '{"by": "z"}'}
        )
        assert sent.status_code == 303
    assert await env.result(run) == "10 approved by z"


async def test_signal_to_a_finished_workflow_is_a_conflict(env: TestEnvironment) -> None:
    await env.result(await env.engine.start(greet, "q", workflow_id="g-done"))
    async with client_for(create_app(env.engine)) as client:
        late = await act(client, "signal", {"id": "g-done", "name": "x", "payload": "1"})
    assert late.status_code == 409
    assert "completed" in late.text


async def test_cancel(env: TestEnvironment, caplog: pytest.LogCaptureFixture) -> None:
    run = await waiting_approval(env, "ap-3")
    caplog.set_level(logging.INFO, logger="flows.ui")
    async with client_for(create_app(env.engine)) as client:
        done = await act(client, "cancel", {"id": "ap-3", "reason": "customer left"})
        assert done.status_code == 303
        with pytest.raises(flows.WorkflowCancelled):
            await env.result(run)
        page = await client.get("/workflow?id=ap-3")
        assert "Cancel requested" in page.text
        assert "customer left" in page.text
    assert "UI cancel of workflow 'ap-3'" in caplog.text
    assert "anonymous@127.0.0.1" in caplog.text
    assert "reason 'customer left', outcome requested" in caplog.text


async def test_terminate(env: TestEnvironment) -> None:
    run = await waiting_approval(env, "ap-4")
    async with client_for(create_app(env.engine)) as client:
        done = await act(client, "terminate", {"id": "ap-4", "reason": "stuck for good"})
        assert done.status_code == 303, done.text[-800:]
        with pytest.raises(flows.WorkflowTerminated):
            await env.result(run)
        page = await client.get("/workflow?id=ap-4")
        assert "Workflow terminated" in page.text
        assert "stuck for good" in page.text


async def test_retry_and_rerun_a_dead_letter(env: TestEnvironment) -> None:
    run = await env.engine.start(fragile, "box", workflow_id="fr-1")
    await env.wait_until(run, lambda i: i.history_length >= 2)
    BROKEN["on"] = True
    await env.engine.signal("fr-1", "go", "later")
    await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
    async with client_for(create_app(env.engine)) as client:
        early = await act(client, "retry", {"id": "fr-1"})  # no fix yet: parks again
        assert early.status_code == 303
        await env.wait_until(run, lambda i: i.status == flows.WorkflowStatus.PARKED)
        BROKEN["on"] = False  # the code fix
        rerun = await act(client, "rerun", {"id": "fr-1"})
        assert rerun.status_code == 303
        new_id = httpx.URL(rerun.headers["location"]).params["id"]
        assert new_id != "fr-1"
        retried = await act(client, "retry", {"id": "fr-1"})
        assert retried.status_code == 303
        assert await env.result(run) == "box went later"
        again = await act(client, "retry", {"id": "fr-1"})
        assert again.status_code == 409
        assert "is completed, not dead-lettered; nothing to retry" in again.text
        page = await client.get(f"/workflow?id={new_id}")
        assert "Rerun of" in page.text
        assert "fr-1" in page.text
    new = await env.engine.query(new_id)
    assert new.name == "fragile"
    assert new.status == flows.WorkflowStatus.RUNNING


async def test_signal_checked_against_the_awaited_type_by_replay(env: TestEnvironment) -> None:
    run = await waiting_approval(env, "ap-replay")
    app = create_app(env.engine, definitions=WORKFLOWS)  # no signal_types: found by replay
    async with client_for(app) as client:
        page = await client.get("/actions/signal?id=ap-replay")
        assert "<code>approve</code> → <code>Approval</code>" in page.text
        wrong = await act(
            client, "signal", {"id": "ap-replay", "name": "approve", "payload": '{"by": 1}'}
        )
        assert wrong.status_code == 400
        assert "does not match Approval" in wrong.text
        assert (await run.query()).history_length == 3  # nothing sent
        other = await act(client, "signal", {"id": "ap-replay", "name": "later", "payload": "[1]"})
        assert other.status_code == 303  # not awaited now: buffered unchecked
        sent = await act(
            client, "signal", {"id": "ap-replay", "name": "approve", "payload": '{"by": "r"}'}
        )
        assert sent.status_code == 303
    assert await env.result(run) == "10 approved by r"
