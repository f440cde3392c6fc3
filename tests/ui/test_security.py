"""Safe by default: authentication, loopback refusal, CSRF, read-only, tenant scope,
escaping of hostile values."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

import flows_core as flows
from flows_memory import MemoryStore, TestEnvironment
from flows_ui import build_server, create_app, serve

from .conftest import client_for, csrf_token
from .workflows import HOSTILE, approval, failing, greet, hostile

TOKEN = "s3cret-token-for-tests"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "flows.example.com"])
def test_refuses_a_non_loopback_address_without_auth(host: str) -> None:
    engine = flows.Engine(MemoryStore())
    with pytest.raises(flows.InvalidArgument, match="refusing to serve the Flows UI on"):
        build_server(engine, host=host, port=0)
    with pytest.raises(flows.InvalidArgument, match="without authentication"):
        serve(engine, host=host, port=0)  # raises before binding anything
    with pytest.raises(flows.InvalidArgument, match="without authentication"):
        build_server(create_app(engine, read_only=True), host=host, port=0)
    assert build_server(engine, host=host, port=0, token=TOKEN).config.host == host
    assert build_server(engine, host=host, port=0, basic_auth=("ops", "password1")) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_auth(host: str) -> None:
    engine = flows.Engine(MemoryStore())
    assert build_server(engine, host=host, port=0).config.host == host


def test_bad_options_are_named() -> None:
    engine = flows.Engine(MemoryStore())
    with pytest.raises(flows.InvalidArgument, match="at least 8"):
        create_app(engine, token="short")
    with pytest.raises(flows.InvalidArgument, match="definitions must be workflows"):
        create_app(engine, definitions=["order-workflow"])  # type: ignore[list-item]
    with pytest.raises(flows.InvalidArgument, match="must be 'user:password'"):
        create_app(engine, basic_auth="just-a-password")
    with pytest.raises(flows.InvalidArgument, match=r"takes a flows_core\.Engine"):
        create_app("postgresql://x")  # type: ignore[arg-type]
    with pytest.raises(flows.InvalidArgument, match="are for create_app"):
        build_server(create_app(engine), token=TOKEN)
    with pytest.raises(flows.InvalidArgument, match="is not a Flows UI app"):
        build_server(object(), host="127.0.0.1")  # type: ignore[arg-type]


async def test_token_auth(env: TestEnvironment) -> None:
    await env.result(await env.engine.start(greet, "x", workflow_id="g-auth"))
    app = create_app(env.engine, token={"alice": TOKEN})
    async with client_for(app) as client:
        page = await client.get("/workflows?status=completed")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fworkflows%3Fstatus%3Dcompleted"
        assert (await client.get("/workflow?id=g-auth")).status_code == 303
        wrong = await client.get("/workflows", headers={"Authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 303
        ok = await client.get("/workflows", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert "g-auth" in ok.text
        css = await client.get("/static/flows.css")
        assert css.status_code == 200  # the login page needs it

        # The login form: CSRF-protected, then a signed session cookie.
        csrf = await csrf_token(client, "/login")
        bad = await client.post("/login", data={"token": "wrong-token", "csrf_token": csrf})
        assert bad.status_code == 401
        assert "wrong token" in bad.text
        no_csrf = await client.post("/login", data={"token": TOKEN})
        assert no_csrf.status_code == 403
        done = await client.post(
            "/login", data={"token": TOKEN, "csrf_token": csrf, "next": "//evil.example/x"}
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/workflows"
        page = await client.get("/workflows")
        assert page.status_code == 200
        assert "alice@127.0.0.1" in page.text

        # A forged cookie is not a login.
        client.cookies.set("flows_ui_session", "eyJzaWQiOiJ4IiwidXNlciI6ImFsaWNlIn0.00")
        assert (await client.get("/workflows")).status_code == 303

        # A POST without authentication is refused, not redirected.
        refused = await client.post("/actions/cancel", data={"id": "g-auth"})
        assert refused.status_code == 401


@pytest.mark.parametrize(
    "option", ["ops:correct horse", ("ops", "correct horse"), {"ops": "correct horse"}]
)
async def test_basic_auth(env: TestEnvironment, option: Any) -> None:
    app = create_app(env.engine, basic_auth=option)
    async with client_for(app) as client:
        page = await client.get("/workflows")
        assert page.status_code == 401
        assert page.headers["www-authenticate"].startswith("Basic realm=")
        assert (
            await client.get("/workflows", headers=basic("ops", "wrong horse"))
        ).status_code == 401
        assert (
            await client.get("/workflows", headers=basic("eve", "correct horse"))
        ).status_code == 401
        assert (await client.get("/login")).headers["location"] == "/workflows"  # no token login
        ok = await client.get("/workflows", headers=basic("ops", "correct horse"))
        assert ok.status_code == 200
        assert "ops@127.0.0.1" in ok.text


async def test_csrf_is_required_on_every_action(
    env: TestEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    run = await env.engine.start(approval, 7, workflow_id="ap-csrf")
    await env.wait_until(run, lambda i: i.history_length >= 3)
    app = create_app(env.engine)
    form = {"id": "ap-csrf", "name": "approve", "payload": '{"by": "mallory"}', "confirm": "yes"}
    async with client_for(app) as client:
        caplog.set_level(logging.WARNING, logger="flows.ui")
        missing = await client.post("/actions/signal", data=form)
        assert missing.status_code == 403
        assert "security token" in missing.text
        csrf = await csrf_token(client, "/actions/signal?id=ap-csrf")
        forged = await client.post("/actions/signal", data={**form, "csrf_token": "0" * 64})
        assert forged.status_code == 403
        cross = await client.post(
            "/actions/signal",
            data={**form, "csrf_token": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        # The token of one session is worthless in another (another browser, no cookie).
        async with client_for(app) as other:
            stolen = await other.post("/actions/signal", data={**form, "csrf_token": csrf})
            assert stolen.status_code == 403
        for action in ("cancel", "terminate", "retry", "rerun"):
            response = await client.post(
                f"/actions/{action}", data={"id": "ap-csrf", "confirm": "yes"}
            )
            assert response.status_code == 403, action
        assert "bad CSRF token" in caplog.text
        info = await env.engine.query("ap-csrf")
        assert info.status == flows.WorkflowStatus.RUNNING
        assert not info.cancel_requested
        assert info.history_length == 3  # no signal got in
        assert len(await env.engine.list(name="approval")) == 1  # no rerun either

        huge = {**form, "payload": '"' + "x" * (5 * 1024 * 1024) + '"', "csrf_token": csrf}
        too_big = await client.post("/actions/signal", data=huge)
        assert too_big.status_code == 413

        sent = await client.post("/actions/signal", data={**form, "csrf_token": csrf})
        assert sent.status_code == 303
    assert await env.result(run) == "7 approved by mallory"


async def test_read_only_hides_and_refuses_actions(env: TestEnvironment) -> None:
    run = await env.engine.start(approval, 3, workflow_id="ap-ro")
    await env.wait_until(run, lambda i: i.history_length >= 3)
    app = create_app(env.engine, read_only=True)
    async with client_for(app) as client:
        page = await client.get("/workflow?id=ap-ro")
        assert page.status_code == 200
        assert 'id="actions"' not in page.text
        assert "/actions/" not in page.text
        assert "read-only" in page.text
        for action in ("signal", "cancel", "terminate", "retry", "rerun"):
            assert (await client.get(f"/actions/{action}?id=ap-ro")).status_code == 403
        csrf_page = await client.get("/workflows")
        assert csrf_page.status_code == 200
        refused = await client.post("/actions/cancel", data={"id": "ap-ro", "confirm": "yes"})
        assert refused.status_code == 403
        assert "read-only" in refused.text
    info = await env.engine.query("ap-ro")
    assert info.status == flows.WorkflowStatus.RUNNING
    assert not info.cancel_requested


async def test_tenant_scope_sees_one_tenant(env: TestEnvironment) -> None:
    await env.result(await env.engine.start(greet, "a", workflow_id="mine", tenant_id="acme"))
    await env.result(await env.engine.start(greet, "b", workflow_id="theirs", tenant_id="globex"))
    await env.result(await env.engine.start(greet, "c", workflow_id="same-id", tenant_id="globex"))
    app = create_app(env.engine, tenant_id="acme")
    async with client_for(app) as client:
        listing = await client.get("/workflows")
        assert "mine" in listing.text
        assert "theirs" not in listing.text
        assert "tenant acme" in listing.text
        assert 'name="tenant"' not in listing.text  # no tenant filter
        other = await client.get("/workflows?tenant=globex")
        assert "theirs" not in other.text
        assert "mine" in other.text
        assert (await client.get("/workflow?id=mine")).status_code == 200
        assert (await client.get("/workflow?id=theirs")).status_code == 404
        assert (await client.get("/workflow?id=theirs&tenant=globex")).status_code == 404
        assert (await client.get("/workflow?id=same-id&tenant=globex")).status_code == 404
        assert (await client.get("/workflow/raw?id=theirs&tenant=globex")).status_code == 404
        assert (await client.get("/actions/rerun?id=theirs&tenant=globex")).status_code == 404
        csrf = await csrf_token(client, "/actions/rerun?id=mine")
        post = await client.post(
            "/actions/rerun",
            data={"id": "theirs", "tenant": "globex", "confirm": "yes", "csrf_token": csrf},
        )
        assert post.status_code == 404
        assert (await client.get("/workers")).status_code == 404
        assert (await client.get("/queues")).status_code == 404
    assert len(await env.engine.list(tenant_id="globex")) == 2  # nothing was rerun


async def test_hostile_values_are_escaped(env: TestEnvironment) -> None:
    huge = "<script>alert('huge')</script>" * 3500  # ~105k characters
    payload = {"short": HOSTILE, "huge": huge, HOSTILE: '"><img src=x onerror=alert(1)>'}
    wf_id = "\"><script>alert('id')</script>"
    run = await env.engine.start(hostile, payload, workflow_id=wf_id, tenant_id="<b>t</b>")
    await env.result(run)
    failed = await env.engine.start(failing, "<script>alert('error')</script>" + "x" * 100_000)
    with pytest.raises(flows.WorkflowFailed):
        await env.result(failed)
    app = create_app(env.engine)
    async with client_for(app) as client:
        pages = [
            await client.get("/workflows"),
            await client.get("/workflows", params={"name": HOSTILE, "id": wf_id[:5]}),
            await client.get("/workflow", params={"tenant": "<b>t</b>", "id": wf_id}),
            await client.get("/workflow", params={"id": failed.workflow_id}),
            await client.get("/actions/signal", params={"tenant": "<b>t</b>", "id": wf_id}),
            await client.get(
                "/actions/cancel",
                params={"tenant": "<b>t</b>", "id": wf_id, "reason": "<script>alert(3)</script>"},
            ),
            await client.get("/workflow", params={"id": "<script>alert('missing')</script>"}),
            await client.get("/workflows", params={"status": "<script>alert('s')</script>"}),
        ]
        raw = await client.get("/workflow/raw", params={"tenant": "<b>t</b>", "id": wf_id})
    for page in pages:
        assert "<script>" not in page.text, page.text[:300]
        assert "<b>t</b>" not in page.text
        assert "onerror=alert(1)>" not in page.text.replace("&gt;", "")
    listing, filtered, detail, error_page, _confirm, cancel, missing, bad_status = pages
    escaped_name = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;"
    assert escaped_name in listing.text
    assert escaped_name in filtered.text
    assert "&#34;&gt;&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;" in detail.text
    assert "&lt;b&gt;t&lt;/b&gt;" in detail.text
    assert detail.text.count("&lt;script&gt;alert(&#39;huge&#39;)&lt;/script&gt;") >= 3500 * 2
    assert "&lt;script&gt;alert(&#39;error&#39;)&lt;/script&gt;" + "x" * 100_000 in error_page.text
    assert 'value="&lt;script&gt;alert(3)&lt;/script&gt;"' in cancel.text
    assert missing.status_code == 404
    assert bad_status.status_code == 400
    assert "&lt;script&gt;alert(&#39;s&#39;)&lt;/script&gt;" in bad_status.text
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert "script-src" not in detail.headers["content-security-policy"]  # default-src 'none'
    assert "default-src 'none'" in detail.headers["content-security-policy"]


async def test_garbage_input_is_a_clear_error_not_a_crash(env: TestEnvironment) -> None:
    await env.result(await env.engine.start(greet, "x", workflow_id="g-garbage"))
    bad = [
        ("/workflows?after=garbage", 400, "invalid page cursor"),
        ("/workflows?after=WzEsMiwzXQ", 400, "invalid page cursor"),  # [1,2,3]
        ("/workflows?from=2030-13-45T99:99", 400, "is not a date and time"),
        ("/workflows?name=%01", 400, "control or non-printable"),
        ("/workflow?id=", 400, "id= is missing"),
        ("/workflow?id=%20padded%20", 400, "leading or trailing spaces"),
        ("/workflow?id=" + "x" * 300, 400, "the limit is 200"),
        ("/workflow?id=g-garbage&refresh=" + "9" * 5000, 200, "g-garbage"),
        ("/workflow/raw?id=g-garbage&part=secrets", 404, "has no secrets"),
        ("/actions/signal", 400, "id is missing"),
        ("/actions/nope?id=g-garbage", 404, ""),
    ]
    async with client_for(create_app(env.engine)) as client:
        for url, status, text in bad:
            response = await client.get(url)
            assert response.status_code == status, (url, response.text[-500:])
            assert text in response.text, url
