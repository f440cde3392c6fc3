"""The loan application as a small HTTP service (Starlette) on PostgreSQL.

    POST /applications                      {"applicant": "ada", "amount": 5000}
    POST /applications/{id}/documents       {"kind": "payslip", "content": "..."}
    POST /applications/{id}/decision        {"approved": true, "manager": "bob"}
    GET  /applications/{id}

The POST that creates an application writes the application's own row and starts its
workflow in one transaction: both happen, or neither. The service runs its own worker.

Run it:  uvicorn --factory examples.loan_app.app:from_env   (FLOWS_DSN, else embedded)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import msgspec
import uuid6
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import flows_core as flows
from flows_pg import PostgresStore

from .workflow import (
    DEMO_COOLING_OFF,
    Bank,
    Document,
    LoanIn,
    ManagerDecision,
    new_activities,
    new_workflow,
)

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS loan_applications (
    id text PRIMARY KEY,
    applicant text NOT NULL,
    amount integer NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


class NewApplication(msgspec.Struct):
    applicant: str
    amount: int


def create_app(
    dsn: str,
    *,
    bank: Bank | None = None,
    cooling_off: timedelta = timedelta(hours=24),
    review_probability: float = 0.3,
    schema: str = "flows",
) -> Starlette:
    """Build the service; the lifespan opens the pool, migrates and runs a worker."""
    acts = new_activities(bank or Bank())
    loan = new_workflow(acts, cooling_off=cooling_off, review_probability=review_probability)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False)
        await pool.open()
        store = PostgresStore(pool, schema=schema)
        await store.open()
        await store.migrate()
        async with pool.connection() as conn:
            await conn.execute(SCHEMA_SQL)
        worker = flows.Worker(store, workflows=[loan], activities=list(acts), poll_interval=0.5)
        task = asyncio.ensure_future(worker.run())
        state.update(pool=pool, engine=flows.Engine(store, workflows=[loan]))
        try:
            yield
        finally:
            await worker.stop()
            await task
            await store.close()
            await pool.close()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def body(request: Request, type_: type[Any]) -> Any:
        try:
            return msgspec.json.decode(await request.body(), type=type_)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from exc

    async def create(request: Request) -> JSONResponse:
        try:
            new = await body(request, NewApplication)
        except ValueError as exc:
            return error(422, str(exc))
        if new.amount <= 0:
            return error(422, "amount must be positive")
        app_id = str(uuid6.uuid7())
        engine: flows.Engine = state["engine"]
        async with state["pool"].connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO loan_applications (id, applicant, amount) VALUES (%s, %s, %s)",
                (app_id, new.applicant, new.amount),
            )
            await engine.start(
                loan,
                LoanIn(application_id=app_id, applicant=new.applicant, amount=new.amount),
                workflow_id=f"loan-{app_id}",
                tx=conn,
            )
        return JSONResponse({"id": app_id, "workflow_id": f"loan-{app_id}"}, status_code=201)

    async def send(request: Request, signal: str, type_: type[Any]) -> JSONResponse:
        app_id = request.path_params["id"]
        try:
            payload = await body(request, type_)
        except ValueError as exc:
            return error(422, str(exc))
        try:
            await state["engine"].signal(f"loan-{app_id}", signal, payload)
        except flows.WorkflowNotFound:
            return error(404, f"no application {app_id}")
        except flows.WorkflowNotRunning:
            return error(409, f"application {app_id} is already decided")
        return JSONResponse({"ok": True}, status_code=202)

    async def document(request: Request) -> JSONResponse:
        return await send(request, "document", Document)

    async def decision(request: Request) -> JSONResponse:
        return await send(request, "manager-decision", ManagerDecision)

    async def show(request: Request) -> JSONResponse:
        app_id = request.path_params["id"]
        async with state["pool"].connection() as conn:
            cur = await conn.execute(
                "SELECT applicant, amount FROM loan_applications WHERE id = %s", (app_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return error(404, f"no application {app_id}")
        info = await state["engine"].query(f"loan-{app_id}")
        return JSONResponse(
            {
                "id": app_id,
                "applicant": row[0],
                "amount": row[1],
                "status": info.status.value,
                "result": info.output,
                "error": str(info.error) if info.error else None,
            }
        )

    return Starlette(
        routes=[
            Route("/applications", create, methods=["POST"]),
            Route("/applications/{id}/documents", document, methods=["POST"]),
            Route("/applications/{id}/decision", decision, methods=["POST"]),
            Route("/applications/{id}", show, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def from_env() -> Starlette:
    """Factory for uvicorn: $FLOWS_DSN, else the embedded server; 5 s cooling-off."""
    dsn = os.environ.get("FLOWS_DSN")
    if not dsn:
        from flows_pg import embedded

        dsn = embedded.ensure_started(None)
    return create_app(dsn, cooling_off=DEMO_COOLING_OFF)
