"""Fuzz every client entry point on PostgreSQL and on Citus: Engine and SyncClient (see
fuzz_support).

Hostile tenant ids, workflow ids, names, signal names and payloads must give a correct
result or a Flows error, never a raw psycopg error, and never another tenant's workflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from conftest_citus import drop_citus_store, make_citus_store
from conftest_pg import drop_pg_store, make_pg_store
from fuzz_support import (
    SECRET_ID,
    SECRET_TENANT,
    Tally,
    assert_not_secret,
    expect_flows,
    fuzz_wf,
    one_case,
    run_cases,
)

import flows_citus
import flows_core as flows
import flows_pg

EXAMPLES = {"pg": 200, "citus": 100}


@pytest.mark.parametrize(
    "kind",
    [pytest.param("pg", marks=pytest.mark.pg), pytest.param("citus", marks=pytest.mark.citus)],
)
def test_hostile_inputs(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = request.getfixturevalue("pg_dsn" if kind == "pg" else "citus_dsn")
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(make_pg_store(dsn) if kind == "pg" else make_citus_store(dsn))
    engine = flows.Engine(store, workflows=[fuzz_wf])
    client_class = flows_pg.SyncClient if kind == "pg" else flows_citus.SyncClient
    client = client_class(schema=store.schema, workflows=[fuzz_wf])
    conn = psycopg.connect(dsn, autocommit=True)
    loop.run_until_complete(
        engine.start(fuzz_wf, {"secret": True}, tenant_id=SECRET_TENANT, workflow_id=SECRET_ID)
    )
    tally = Tally()

    def sync_call(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            return fn()

        return call

    async def sync_ops(
        tally: Tally, tenant: Any, workflow_id: Any, name: Any, signal_name: Any, payload: Any
    ) -> None:
        await expect_flows(
            tally,
            "sync.start",
            sync_call(
                lambda: client.start(
                    fuzz_wf, payload, tenant_id=tenant, workflow_id=workflow_id, tx=conn
                )
            ),
        )
        await expect_flows(
            tally,
            "sync.start(name)",
            sync_call(lambda: client.start(name, payload, tenant_id=tenant, tx=conn)),
        )
        for wid in (workflow_id, SECRET_ID):
            info = await expect_flows(
                tally,
                "sync.query",
                sync_call(lambda wid=wid: client.query(wid, tenant_id=tenant, tx=conn)),
            )
            assert_not_secret(info, tenant)
            await expect_flows(
                tally,
                "sync.signal",
                sync_call(
                    lambda wid=wid: client.signal(
                        wid, signal_name, payload, tenant_id=tenant, tx=conn
                    )
                ),
            )
            await expect_flows(
                tally,
                "sync.cancel",
                sync_call(
                    lambda wid=wid: client.cancel(wid, reason=name, tenant_id=tenant, tx=conn)
                ),
            )

    def one(**kw: Any) -> None:
        loop.run_until_complete(one_case(engine, tally, sync=sync_ops, **kw))

    try:
        run_cases(EXAMPLES[kind], one)
        # the secret workflow is intact and still its tenant's only
        info = loop.run_until_complete(engine.query(SECRET_ID, tenant_id=SECRET_TENANT))
        assert info.tenant_id == SECRET_TENANT
        assert info.name == "fuzz-wf"
    finally:
        conn.close()
        loop.run_until_complete(drop_pg_store(store) if kind == "pg" else drop_citus_store(store))
        loop.close()
    assert tally.cases >= EXAMPLES[kind] // 2
    with capsys.disabled():
        print(f"\n{kind} fuzz: {tally.cases} cases, {tally.calls} calls: {tally.outcomes}")
