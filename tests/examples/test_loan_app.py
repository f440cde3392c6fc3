"""The loan-application service, driven over real HTTP against PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
import httpx
import uvicorn
from conftest_pg import fresh_schema

from examples.loan_app.app import create_app
from examples.loan_app.workflow import Bank

pytestmark = pytest.mark.pg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(dsn: str, bank: Bank, review: float) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        dsn,
        bank=bank,
        cooling_off=timedelta(seconds=0.3),
        review_probability=review,
        schema=fresh_schema("loan"),
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def _until(client: httpx.AsyncClient, app_id: str, pred: Any, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await client.get(f"/applications/{app_id}")).json()
        if pred(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_loan_approved_after_documents_and_manager_review(pg_dsn: str) -> None:
    bank = Bank(scores={"ada": 780})
    async for client in _serve(pg_dsn, bank, review=1.0):
        created = await client.post("/applications", json={"applicant": "ada", "amount": 5000})
        assert created.status_code == 201
        app_id = created.json()["id"]
        body = (await client.get(f"/applications/{app_id}")).json()
        assert body["status"] == "running"
        assert body["amount"] == 5000
        for kind in ("id-card", "payslip"):
            r = await client.post(
                f"/applications/{app_id}/documents", json={"kind": kind, "content": "scan"}
            )
            assert r.status_code == 202
        await asyncio.sleep(0.5)  # cooling-off; the review wait follows
        r = await client.post(
            f"/applications/{app_id}/decision", json={"approved": True, "manager": "bob"}
        )
        assert r.status_code == 202
        body = await _until(client, app_id, lambda b: b["status"] != "running")
        assert body["status"] == "completed"
        assert body["result"]["status"] == "approved"
        assert body["result"]["reviewed"] is True
        assert body["result"]["transfer_id"] == f"tr-{app_id}"
        assert bank.transfers == [f"tr-{app_id}"]
        late = await client.post(f"/applications/{app_id}/decision", json={"approved": False})
        assert late.status_code == 409


async def test_low_score_rejected_and_bad_requests(pg_dsn: str) -> None:
    bank = Bank(scores={"eve": 420})
    async for client in _serve(pg_dsn, bank, review=0.0):
        created = await client.post("/applications", json={"applicant": "eve", "amount": 900})
        app_id = created.json()["id"]
        body = await _until(client, app_id, lambda b: b["status"] != "running")
        assert body["result"]["status"] == "rejected"
        assert "420" in body["result"]["reason"]
        assert bank.transfers == []
        bad = await client.post("/applications", json={"applicant": "x", "amount": "lots"})
        assert bad.status_code == 422
        assert (await client.get("/applications/nope")).status_code == 404
        missing = await client.post(
            "/applications/nope/documents", json={"kind": "a", "content": "b"}
        )
        assert missing.status_code == 404


async def test_invalid_documents_keep_waiting_and_no_review(pg_dsn: str) -> None:
    bank = Bank()
    async for client in _serve(pg_dsn, bank, review=0.0):
        app_id = (
            await client.post("/applications", json={"applicant": "bo", "amount": 10})
        ).json()["id"]
        await client.post(
            f"/applications/{app_id}/documents", json={"kind": "id-card", "content": " "}
        )
        await client.post(
            f"/applications/{app_id}/documents", json={"kind": "id-card", "content": "ok"}
        )
        await asyncio.sleep(0.3)
        assert (await client.get(f"/applications/{app_id}")).json()["status"] == "running"
        await client.post(
            f"/applications/{app_id}/documents", json={"kind": "payslip", "content": "ok"}
        )
        body = await _until(client, app_id, lambda b: b["status"] != "running")
        assert body["result"]["status"] == "approved"
        assert body["result"]["reviewed"] is False
