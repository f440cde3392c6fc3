"""Transactional activities on every store: the function's writes and the recording of
its result commit in one transaction, or not at all.

Memory runs them on its stand-in (``flows_memory.MemoryTransaction``), PostgreSQL and
Citus on a real transaction of the store's database (on Citus the effect table is a
local table of the coordinator here: a multi-node transaction; tests/citus has the
colocated case).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityFailedEvent
from flows_core.store import ActivityTaskClaim, ClaimRequest, WorkflowTaskClaim
from flows_memory import MemoryStore
from tests.contract.adapters import Adapter
from tests.contract.test_contract_engine import eventually, kinds, result, running, worker
from tests.contract.txapp import EffectsApp

FAST = flows.RetryPolicy(initial_interval=timedelta(milliseconds=10), jitter=0.0)


async def app_for(adapter: Adapter) -> EffectsApp:
    app = EffectsApp(adapter.store)
    await app.create()
    return app


def names(adapter: Adapter, *parts: str) -> list[str]:
    return [f"{p}-{adapter.ns}" for p in parts]


async def completed_steps(adapter: Adapter, run: flows.Run[Any]) -> list[ActivityCompleted]:
    history = await adapter.store.get_history(run.tenant_id, run.workflow_id)
    return kinds(history, ActivityCompleted)


# -- effect and result together --


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_effect_and_result_commit_together(adapter: Adapter, kind: str) -> None:
    app = await app_for(adapter)
    wf_name, tx_name, plain_name = names(adapter, "wf", "reserve", "notify")
    notified: list[str] = []

    if kind == "async":

        @flows.activity(tx_name, transactional=True)
        async def reserve(conn: Any, key: str) -> dict[str, Any]:
            await app.insert(conn, key)
            return {"key": key, "shard_key": flows.activity_info().shard_key}

    else:

        @flows.activity(tx_name, transactional=True)
        def reserve(conn: Any, key: str) -> dict[str, Any]:
            app.insert_sync(conn, key)
            return {"key": key, "shard_key": flows.activity_info().shard_key}

    @flows.activity(plain_name)
    async def notify(key: str) -> None:
        notified.append(key)

    @flows.workflow(wf_name)
    async def order(ctx: flows.WorkflowContext, key: str) -> dict[str, Any]:
        reserved = await ctx.execute(reserve, key)
        await ctx.execute(notify, key)
        return reserved  # type: ignore[no-any-return]

    engine = flows.Engine(adapter.store, workflows=[order])
    async with running(worker(adapter.store, workflows=[order], activities=[reserve, notify])):
        run = await engine.start(order, "k1", tenant_id=f"t-{adapter.ns}")
        out = await result(run)
    record = await adapter.store.get_workflow(run.tenant_id, run.workflow_id)
    assert out == {"key": "k1", "shard_key": record.shard_key}
    assert await app.count("k1") == 1
    assert notified == ["k1"]
    steps = await completed_steps(adapter, run)
    assert [s.seq for s in steps] == [1, 2], "each result recorded once"


async def test_failed_attempt_rolls_back_its_writes(adapter: Adapter) -> None:
    app = await app_for(adapter)
    wf_name, tx_name = names(adapter, "wf", "ledger")
    calls = 0

    @flows.activity(tx_name, transactional=True, retry=FAST)
    async def ledger(conn: Any, key: str) -> int:
        nonlocal calls
        calls += 1
        await app.insert(conn, key)
        if calls == 1:
            raise RuntimeError("fails after its write")
        return calls

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> int:
        return await ctx.execute(ledger, key)

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf], activities=[ledger])):
        run = await engine.start(wf, "k2", tenant_id=f"t-{adapter.ns}")
        if adapter.virtual_clock is not None:
            await eventually(lambda: asyncio.sleep(0.01, calls), lambda c: c >= 1)
            await adapter.pass_time(1.0)
        assert await result(run) == 2
    assert await app.count("k2") == 1, "the failed attempt's write was rolled back"
    (step,) = await completed_steps(adapter, run)
    assert step.attempt == 2


# -- the fence --


async def _claim_when_expired(
    adapter: Adapter, request: ClaimRequest
) -> WorkflowTaskClaim | ActivityTaskClaim:
    """Act as another worker: claim the task once its first claimant's lease ran out."""
    for _ in range(200):
        await adapter.pass_time(0.2)
        got = await adapter.store.claim(request)
        if got:
            assert len(got) == 1
            return got[0]
    raise AssertionError("the lease never ran out")


@pytest.mark.parametrize("path", ["inline", "queued"])
async def test_a_worker_whose_lease_was_taken_over_commits_nothing(
    adapter: Adapter, path: str
) -> None:
    app = await app_for(adapter)
    wf_name, tx_name = names(adapter, "wf", "hold")
    entered = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    @flows.activity(tx_name, transactional=True)
    async def hold(conn: Any, key: str) -> str:
        nonlocal calls
        calls += 1
        await app.insert(conn, key)
        if calls == 1:
            entered.set()
            await release.wait()
        return key

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        return await ctx.execute(hold, key)

    lease = timedelta(seconds=0.6)
    store = adapter.store
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(store, workflows=[wf])
    # one slot, taken by the held task: the first worker cannot claim it back itself
    if path == "inline":
        first = worker(store, workflows=[wf], activities=[hold], lease=lease, concurrency=1)
        workers = [first]
    else:
        first = worker(store, activities=[hold], lease=lease, concurrency=1)
        workers = [first, worker(store, workflows=[wf])]
    async with running(*workers):
        run = await engine.start(wf, "k3", tenant_id=tenant)
        await asyncio.wait_for(entered.wait(), 10)
        record = await store.get_workflow(tenant, run.workflow_id)
        taken = await _claim_when_expired(
            adapter,
            ClaimRequest(
                owner="usurper",
                workflow_types=[(wf_name, 1)] if path == "inline" else [],
                activity_names=[] if path == "inline" else [tx_name],
                limit=1,
                lease=timedelta(seconds=30),
                shard_keys=[record.shard_key],
            ),
        )
        release.set()
        await eventually(lambda: asyncio.sleep(0, first.counters["lease_lost"]), lambda n: n >= 1)
        assert await app.count("k3") == 0, "the fenced transaction rolled back its write"
        assert await completed_steps(adapter, run) == []
        await store.release(taken.lease)  # the usurper gives it back: it runs again, once
        assert await result(run) == "k3"
    assert await app.count("k3") == 1
    assert len(await completed_steps(adapter, run)) == 1


# -- conflicts --


async def _make_stock(adapter: Adapter, app: EffectsApp) -> Callable[[Any, bool], Any]:
    """A stock row and a function that reads it, lets another transaction change it
    (when ``interfere``) and then writes it: a serialization failure on PostgreSQL
    (REPEATABLE READ), a write conflict on the memory stand-in."""
    store = adapter.store
    if isinstance(store, MemoryStore):
        await store.transaction(lambda tx: tx.put("stock", 1, 0))

        async def touch_memory(conn: Any, interfere: bool) -> None:
            n = conn.get("stock", 1)
            if interfere:
                await store.transaction(lambda tx: tx.put("stock", 1, tx.get("stock", 1) + 100))
            conn.put("stock", 1, n + 1)

        return touch_memory
    table = sql.Identifier(store.schema, "stock")  # type: ignore[attr-defined]
    await app.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int)").format(table))
    await app.execute(sql.SQL("INSERT INTO {} VALUES (1, 0)").format(table))

    async def touch_sql(conn: Any, interfere: bool) -> None:
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.execute(sql.SQL("SELECT n FROM {} WHERE id = 1").format(table))
        if interfere:
            await app.execute(sql.SQL("UPDATE {} SET n = n + 100 WHERE id = 1").format(table))
        await conn.execute(sql.SQL("UPDATE {} SET n = n + 1 WHERE id = 1").format(table))

    return touch_sql


async def test_conflicts_run_again_without_counting_an_attempt(adapter: Adapter) -> None:
    app = await app_for(adapter)
    touch = await _make_stock(adapter, app)
    wf_name, tx_name = names(adapter, "wf", "stock")
    calls = 0

    @flows.activity(tx_name, transactional=True, retry=flows.RetryPolicy(max_attempts=1))
    async def take(conn: Any, key: str) -> int:
        nonlocal calls
        calls += 1
        await touch(conn, calls <= 2)
        await app.insert(conn, key)
        return calls

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> int:
        return await ctx.execute(take, key)

    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(adapter.store, workflows=[wf], activities=[take])
    async with running(w):
        run = await engine.start(wf, "k4", tenant_id=f"t-{adapter.ns}")
        assert await result(run) == 3, "two conflicts, then it committed (one attempt)"
    assert w.counters["transaction_conflicts"] == 2
    assert await app.count("k4") == 1
    (step,) = await completed_steps(adapter, run)
    assert step.attempt == 1


async def test_conflicts_past_the_bound_count_as_a_failed_attempt(adapter: Adapter) -> None:
    app = await app_for(adapter)
    touch = await _make_stock(adapter, app)
    wf_name, tx_name = names(adapter, "wf", "stock")

    @flows.activity(tx_name, transactional=True, retry=flows.RetryPolicy(max_attempts=1))
    async def take(conn: Any, key: str) -> int:
        await touch(conn, True)
        await app.insert(conn, key)
        return 0

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        try:
            await ctx.execute(take, key)
        except flows.ActivityFailed as exc:
            return exc.error_type
        return "committed"

    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(adapter.store, workflows=[wf], activities=[take])
    async with running(w):
        run = await engine.start(wf, "k5", tenant_id=f"t-{adapter.ns}")
        assert await result(run) == "TransactionConflict"
    bound = flows.TRANSACTION_CONFLICT_RETRIES
    assert w.counters["transaction_conflicts"] == bound
    assert await app.count("k5") == 0
    failed = kinds(
        await adapter.store.get_history(run.tenant_id, run.workflow_id), ActivityFailedEvent
    )
    assert [f.error.attempts for f in failed] == [1]


# -- timeout --


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_timeout_cancels_and_rolls_back(adapter: Adapter, kind: str) -> None:
    app = await app_for(adapter)
    wf_name, tx_name = names(adapter, "wf", "slow")
    memory = isinstance(adapter.store, MemoryStore)
    options: dict[str, Any] = {
        "transactional": True,
        "timeout": timedelta(seconds=0.3),
        "retry": flows.RetryPolicy(max_attempts=1),
    }
    if kind == "async":

        @flows.activity(tx_name, **options)
        async def slow(conn: Any, key: str) -> str:
            await app.insert(conn, key)
            if memory:
                await asyncio.sleep(30)
            else:
                await conn.execute("SELECT pg_sleep(30)")
            return key

    else:

        @flows.activity(tx_name, **options)
        def slow(conn: Any, key: str) -> str:
            app.insert_sync(conn, key)
            if memory:
                time.sleep(1.0)  # a thread cannot be stopped; it can no longer commit
            else:
                conn.execute("SELECT pg_sleep(30)")  # cancelled by the timeout
            return key

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        try:
            return await ctx.execute(slow, key)
        except flows.ActivityFailed as exc:
            return exc.error_type

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf], activities=[slow])):
        run = await engine.start(wf, "k6", tenant_id=f"t-{adapter.ns}")
        assert await result(run) == "ActivityTimeout"
    if memory and kind == "sync":
        await asyncio.sleep(1.2)  # the thread has finished: it could not commit
    assert await app.count("k6") == 0
    if not memory:  # the query was cancelled, not left running

        async def sleeping() -> int:
            rows = await app.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'"
            )
            return int(rows[0][0])

        await eventually(sleeping, lambda n: n == 0, timeout=5)


# -- gather: each its own transaction --


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_gather_runs_each_in_its_own_transaction(adapter: Adapter, kind: str) -> None:
    """Several at once, sync ones too (their first use opens the store's sync pool once)."""
    app = await app_for(adapter)
    wf_name, tx_name = names(adapter, "wf", "part")

    if kind == "async":

        @flows.activity(tx_name, transactional=True)
        async def part(conn: Any, key: str) -> str:
            await app.insert(conn, key)
            return key

    else:

        @flows.activity(tx_name, transactional=True)
        def part(conn: Any, key: str) -> str:
            app.insert_sync(conn, key)
            return key

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> list[str]:
        return list(await flows.gather(*(ctx.execute(part, f"{key}-{i}") for i in range(4))))

    engine = flows.Engine(adapter.store, workflows=[wf])
    w = worker(adapter.store, workflows=[wf], activities=[part])
    async with running(w):
        run = await engine.start(wf, "k7", tenant_id=f"t-{adapter.ns}")
        assert await result(run) == [f"k7-{i}" for i in range(4)]
    for i in range(4):
        assert await app.count(f"k7-{i}") == 1
    steps = await completed_steps(adapter, run)
    assert [s.attempt for s in steps] == [1, 1, 1, 1], "no attempt failed"
    assert w.counters["activity_tasks"] == 4, "each through the queue, in its own transaction"


# -- the application's pool --


async def test_an_application_pool_of_another_database_is_refused(adapter: Adapter) -> None:
    store = adapter.store
    (tx_name,) = names(adapter, "pool")

    @flows.activity(tx_name, transactional=True)
    async def noop(conn: Any, key: str) -> str:
        return key

    if isinstance(store, MemoryStore):
        w = worker(store, activities=[noop], transaction_pool=object())
        with pytest.raises(flows.InvalidArgument, match="MemoryStore takes no transaction_pool"):
            await w.run()
        return
    from psycopg.conninfo import make_conninfo
    from psycopg_pool import AsyncConnectionPool

    dsn = store._conninfo  # type: ignore[attr-defined]
    other = AsyncConnectionPool(make_conninfo(dsn, dbname="template1"), open=False)
    await other.open()
    try:
        w = worker(store, activities=[noop], transaction_pool=other)
        with pytest.raises(flows.InvalidArgument, match="template1") as caught:
            await w.run()
        message = str(caught.value)
        own = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
        assert f"database {own!r}" in message, message
    finally:
        await other.close()


async def test_an_application_pool_of_the_same_database_is_used(adapter: Adapter) -> None:
    store = adapter.store
    if isinstance(store, MemoryStore):
        pytest.skip("the memory stand-in has no connection pools")
    from psycopg_pool import AsyncConnectionPool

    app = await app_for(adapter)
    wf_name, tx_name = names(adapter, "wf", "pooled")
    seen: list[str] = []

    @flows.activity(tx_name, transactional=True)
    async def pooled(conn: Any, key: str) -> str:
        seen.append(conn.info.parameter_status("application_name"))
        await app.insert(conn, key)
        return key

    @flows.workflow(wf_name)
    async def wf(ctx: flows.WorkflowContext, key: str) -> str:
        return await ctx.execute(pooled, key)

    dsn = store._conninfo  # type: ignore[attr-defined]
    pool = AsyncConnectionPool(dsn, kwargs={"application_name": "the-app"}, open=False)
    await pool.open()
    try:
        engine = flows.Engine(store, workflows=[wf])
        w = worker(store, workflows=[wf], activities=[pooled], transaction_pool=pool)
        async with running(w):
            run = await engine.start(wf, "k8", tenant_id=f"t-{adapter.ns}")
            assert await result(run) == "k8"
    finally:
        await pool.close()
    assert seen == ["the-app"]
    assert await app.count("k8") == 1
