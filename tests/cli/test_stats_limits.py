"""``flows stats`` shows the flow-control limits of what live workers serve, and their
usage (slots held, waiters, rate tokens), as text and as JSON."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import uuid6
from conftest_pg import drop_pg_store, make_pg_store

from flows_core.store import SlotHolder, WorkerInfo
from tests.cli.test_cli_pg import flows, ok

pytestmark = pytest.mark.pg


async def test_stats_shows_limits_and_their_usage(pg_dsn: str) -> None:
    store = await make_pg_store(pg_dsn)
    try:
        now = store.clock.now()
        await store.register_worker(
            WorkerInfo(
                worker_id="w1",
                workflow_types=[("orders", 1)],
                activity_names=["charge", "partner-api"],
                heartbeat_at=now,
            )
        )
        holder = SlotHolder(
            kind="task",
            tenant_id="t",
            shard_key="s",
            workflow_id="w",
            task_id=str(uuid6.uuid7()),
            token=str(uuid6.uuid7()),
            expires_at=now + timedelta(hours=1),
        )
        assert (await store.acquire_slot("a:charge", "c:cust-1", 1, holder)).acquired
        every = timedelta(seconds=0.01)
        await store.take_rate_token("a:partner-api", "r", every, holder.task_id, timedelta(1))
        # a limit of something no live worker serves is not listed
        assert (await store.acquire_slot("a:gone", "c", 1, holder)).acquired

        text = ok(flows(pg_dsn, "stats", schema=store.schema))
        assert "limits" in text
        assert "a:charge c:cust-1" in text
        assert "held 1/1, waiting 0" in text
        assert "a:partner-api r" in text
        assert "rate 1 per 10ms" in text
        assert "a:gone" not in text

        listed = json.loads(ok(flows(pg_dsn, "stats", "--json", schema=store.schema)))
        limits = {(u["bucket"], u["limit_key"]): u for u in listed["limits"]}
        assert set(limits) == {("a:charge", "c:cust-1"), ("a:partner-api", "r")}
        assert limits[("a:charge", "c:cust-1")]["held"] == 1
        assert limits[("a:partner-api", "r")]["every_seconds"] == pytest.approx(0.01)
        assert "queue_depth" in listed
    finally:
        await drop_pg_store(store)
