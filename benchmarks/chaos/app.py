"""The chaos workload: workflows, activities, and what each workflow must end with.

Everything here is imported both by the driver (to start workflows and compute the
expected outcome of each) and by the worker processes (to run them). Every activity
execution is recorded in ``<schema>.chaos_exec`` (the harness's own connections,
autocommit, retried through outages) so the driver can count executions against the
results recorded in the histories.

Shapes (``Params.kind``):

``steps``     n sequential activities                       -> completed, sum
``retry``     activity, a flaky one failing ``fail`` times, activity  -> completed, sum
``timer``     activity, durable sleep, activity             -> completed, sum
``signal``    k waits for signal "go" (sent by the driver), then a wait for "never" with a
              short timeout (never sent)                    -> completed, k*value + 1
``gather``    k activities and a sleep in parallel          -> completed, list
``cancel``    activity then a one-hour sleep; the driver cancels it; the workflow catches
              Cancelled and runs a compensation             -> cancelled, "compensated"
``fail``      activity, then one raising TerminalError; with ``catch`` the workflow
              compensates and completes ("recovered"), else it fails (ActivityFailed)
``outlive``   one activity whose first execution outlives its lease without heartbeating:
              it runs again elsewhere, its result is recorded once
``heartbeat`` one activity running for 3 leases, heartbeating: it runs once
``txact``     activity, then a transactional one that inserts a row in
              ``<schema>.chaos_tx_effects`` in the transaction that records its result
                                                            -> completed, sum; the row is
              there exactly once (the driver counts them), however often the step ran
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import sql

import flows_core as flows

EXEC_TABLE = "chaos_exec"
FAST_RETRY = flows.RetryPolicy(
    initial_interval=timedelta(seconds=0.05),
    backoff=2.0,
    max_interval=timedelta(seconds=0.5),
    max_attempts=20,
    jitter=0.1,
)
KINDS = ("steps", "retry", "timer", "signal", "gather", "cancel", "fail", "txact")
WEIGHTS = (20, 15, 15, 15, 15, 12, 8, 10)
TX_EFFECTS_TABLE = "chaos_tx_effects"


class Params(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    i: int
    n: int = 0
    fail: int = 0
    sleep: float = 0.0
    value: int = 0
    timeout: float = 0.0
    catch: bool = False


class FlakyIn(msgspec.Struct, frozen=True):
    value: int
    fail: int


def effect_value(v: int) -> int:
    return 3 * v + 1


# -- recording executions ---------------------------------------------------------------


def create_exec_table_sql(schema: str) -> sql.Composed:
    """The executions table, and the effect table of the transactional activity."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} (id bigserial PRIMARY KEY, workflow_id text NOT NULL, "
        "seq int NOT NULL, name text NOT NULL, attempt int NOT NULL, pid int NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp()); "
        "CREATE TABLE IF NOT EXISTS {}.{} (workflow_id text NOT NULL, seq int NOT NULL)"
    ).format(
        sql.Identifier(schema),
        sql.Identifier(EXEC_TABLE),
        sql.Identifier(schema),
        sql.Identifier(TX_EFFECTS_TABLE),
    )


def _insert_sql() -> sql.Composed:
    # RETURNING the number of earlier executions of this step (the subquery sees the
    # statement's snapshot, without the new row).
    table = sql.SQL("{}.{}").format(
        sql.Identifier(os.environ["CHAOS_SCHEMA"]), sql.Identifier(EXEC_TABLE)
    )
    return sql.SQL(
        "INSERT INTO {t} (workflow_id, seq, name, attempt, pid) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING (SELECT count(*) FROM {t} WHERE workflow_id = %s AND seq = %s)"
    ).format(t=table)


def _exec_params() -> tuple[Any, ...]:
    info = flows.activity_info()
    return (
        info.workflow_id,
        info.seq,
        info.activity_name,
        info.attempt,
        os.getpid(),
        info.workflow_id,
        info.seq,
    )


_local = threading.local()
_aconn: dict[str, Any] = {}
_alock: dict[str, asyncio.Lock] = {}
RECORD_PATIENCE = 120.0  # seconds an execution record is retried through an outage


def record_sync() -> int:
    """Record this execution (sync activities, in a thread); earlier executions of the step."""
    params = _exec_params()
    deadline = time.monotonic() + RECORD_PATIENCE
    while True:
        try:
            conn = getattr(_local, "conn", None)
            if conn is None or conn.closed:
                conn = _local.conn = psycopg.connect(
                    os.environ["CHAOS_EXEC_DSN"], autocommit=True, connect_timeout=5
                )
            row = conn.execute(_insert_sql(), params).fetchone()
            assert row is not None
            return int(row[0])
        except psycopg.OperationalError:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def record_async() -> int:
    """Record this execution (async activities); earlier executions of the step."""
    params = _exec_params()
    deadline = time.monotonic() + RECORD_PATIENCE
    lock = _alock.setdefault("lock", asyncio.Lock())
    while True:
        try:
            async with lock:
                conn = _aconn.get("conn")
                if conn is None or conn.closed:
                    conn = _aconn["conn"] = await psycopg.AsyncConnection.connect(
                        os.environ["CHAOS_EXEC_DSN"], autocommit=True, connect_timeout=5
                    )
                cur = await conn.execute(_insert_sql(), params)
                row = await cur.fetchone()
            assert row is not None
            return int(row[0])
        except psycopg.OperationalError:
            _aconn.pop("conn", None)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def lease_seconds() -> float:
    return float(os.environ.get("CHAOS_LEASE", "2.0"))


# -- activities -------------------------------------------------------------------------


@flows.activity("chaos-effect", retry=FAST_RETRY)
async def effect(v: int) -> int:
    await record_async()
    return effect_value(v)


@flows.activity("chaos-flaky", retry=FAST_RETRY)
def flaky(inp: FlakyIn) -> int:
    """Sync (runs in a thread): fails its first ``fail`` attempts."""
    record_sync()
    if flows.activity_info().attempt <= inp.fail:
        raise RuntimeError(f"flaky: attempt {flows.activity_info().attempt} of {inp.fail + 1}")
    return effect_value(inp.value)


@flows.activity("chaos-doomed", retry=FAST_RETRY)
async def doomed(v: int) -> int:
    await record_async()
    raise flows.TerminalError(f"doomed {v}")


@flows.activity("chaos-compensate", retry=FAST_RETRY)
async def compensate(v: int) -> int:
    await record_async()
    return v


@flows.activity("chaos-outlive", retry=FAST_RETRY)
async def outlive(v: int) -> int:
    """The first execution outlives its lease (2.5 leases) without heartbeating."""
    earlier = await record_async()
    if earlier == 0:
        await asyncio.sleep(2.5 * lease_seconds())
    return effect_value(v)


@flows.activity("chaos-heartbeat", retry=FAST_RETRY)
async def heartbeating(v: int) -> int:
    """Runs for three leases, heartbeating every 0.2 s: it must run once."""
    await record_async()
    deadline = time.monotonic() + 3 * lease_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        flows.heartbeat()
    return effect_value(v)


@flows.activity("chaos-tx", transactional=True, retry=FAST_RETRY)
async def tx_effect(conn: psycopg.AsyncConnection, v: int) -> int:
    """Its effect row commits with its result, exactly once (its execution record, on
    another connection, at least once)."""
    await record_async()
    info = flows.activity_info()
    table = sql.Identifier(os.environ["CHAOS_SCHEMA"], TX_EFFECTS_TABLE)
    await conn.execute(
        sql.SQL("INSERT INTO {} (workflow_id, seq) VALUES (%s, %s)").format(table),
        (info.workflow_id, info.seq),
    )
    return effect_value(v)


ACTIVITIES = [effect, flaky, doomed, compensate, outlive, heartbeating, tx_effect]


# -- workflows --------------------------------------------------------------------------


@flows.workflow("chaos-steps")
async def wf_steps(ctx: flows.WorkflowContext, p: Params) -> int:
    total = 0
    for j in range(p.n):
        total += await ctx.execute(effect, p.i * 10 + j)
    return total


@flows.workflow("chaos-retry")
async def wf_retry(ctx: flows.WorkflowContext, p: Params) -> int:
    a = await ctx.execute(effect, p.i * 10)
    b = await ctx.execute(flaky, FlakyIn(value=p.i * 10 + 1, fail=p.fail))
    c = await ctx.execute(effect, p.i * 10 + 2)
    return a + b + c


@flows.workflow("chaos-timer")
async def wf_timer(ctx: flows.WorkflowContext, p: Params) -> int:
    a = await ctx.execute(effect, p.i * 10)
    await ctx.sleep(timedelta(seconds=p.sleep))
    b = await ctx.execute(effect, p.i * 10 + 1)
    return a + b


@flows.workflow("chaos-signal")
async def wf_signal(ctx: flows.WorkflowContext, p: Params) -> int:
    await ctx.execute(effect, p.i * 10)
    total = 0
    for _ in range(p.n):
        total += await ctx.wait_for_signal("go", int)
    never = await ctx.wait_for_signal("never", int, timeout=timedelta(seconds=p.timeout))
    return total + (1 if never is None else 0)


@flows.workflow("chaos-gather")
async def wf_gather(ctx: flows.WorkflowContext, p: Params) -> list[int]:
    steps = [ctx.execute(effect, p.i * 10 + j) for j in range(p.n)]
    results = await flows.gather(*steps, ctx.sleep(timedelta(seconds=p.sleep)))
    return [r for r in results if r is not None]


@flows.workflow("chaos-cancel")
async def wf_cancel(ctx: flows.WorkflowContext, p: Params) -> str:
    try:
        await ctx.execute(effect, p.i * 10)
        await ctx.sleep(timedelta(hours=1))
    except flows.Cancelled:
        await ctx.execute(compensate, p.i)
        return "compensated"
    return "not cancelled"


@flows.workflow("chaos-fail")
async def wf_fail(ctx: flows.WorkflowContext, p: Params) -> str:
    await ctx.execute(effect, p.i * 10)
    try:
        await ctx.execute(doomed, p.i)
    except flows.ActivityFailed:
        if not p.catch:
            raise
        await ctx.execute(compensate, p.i)
        return "recovered"
    return "not failed"


@flows.workflow("chaos-outlive")
async def wf_outlive(ctx: flows.WorkflowContext, p: Params) -> int:
    return await ctx.execute(outlive, p.i)


@flows.workflow("chaos-heartbeat")
async def wf_heartbeat(ctx: flows.WorkflowContext, p: Params) -> int:
    return await ctx.execute(heartbeating, p.i)


@flows.workflow("chaos-txact")
async def wf_txact(ctx: flows.WorkflowContext, p: Params) -> int:
    a = await ctx.execute(effect, p.i * 10)
    b = await ctx.execute(tx_effect, p.i * 10 + 1)
    return a + b


WORKFLOWS = {
    "steps": wf_steps,
    "retry": wf_retry,
    "timer": wf_timer,
    "signal": wf_signal,
    "gather": wf_gather,
    "cancel": wf_cancel,
    "fail": wf_fail,
    "outlive": wf_outlive,
    "heartbeat": wf_heartbeat,
    "txact": wf_txact,
}


# -- expectations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    status: str  # completed / cancelled / failed
    output: Any = None  # decoded JSON output (completed, cancelled)
    error_type: str | None = None  # failed
    activities: tuple[str, ...] = ()  # activity names recorded, in seq order (completed)


def make_params(kind: str, i: int, rng: Any) -> Params:
    if kind == "steps":
        return Params(kind=kind, i=i, n=rng.randint(1, 4))
    if kind == "retry":
        return Params(kind=kind, i=i, fail=rng.randint(1, 3))
    if kind == "timer":
        return Params(kind=kind, i=i, sleep=round(rng.uniform(0.1, 1.0), 3))
    if kind == "signal":
        return Params(
            kind=kind,
            i=i,
            n=rng.randint(1, 3),
            value=rng.randint(1, 100),
            timeout=round(rng.uniform(0.3, 1.0), 3),
        )
    if kind == "gather":
        return Params(kind=kind, i=i, n=rng.randint(2, 4), sleep=round(rng.uniform(0.1, 0.5), 3))
    if kind == "fail":
        return Params(kind=kind, i=i, catch=rng.random() < 0.5)
    return Params(kind=kind, i=i)


def expected(p: Params) -> Expected:
    i = p.i
    if p.kind == "steps":
        return Expected(
            "completed",
            sum(effect_value(i * 10 + j) for j in range(p.n)),
            activities=("chaos-effect",) * p.n,
        )
    if p.kind == "retry":
        return Expected(
            "completed",
            sum(effect_value(i * 10 + j) for j in range(3)),
            activities=("chaos-effect", "chaos-flaky", "chaos-effect"),
        )
    if p.kind == "timer":
        return Expected(
            "completed",
            effect_value(i * 10) + effect_value(i * 10 + 1),
            activities=("chaos-effect", "chaos-effect"),
        )
    if p.kind == "signal":
        return Expected("completed", p.n * p.value + 1, activities=("chaos-effect",))
    if p.kind == "gather":
        return Expected(
            "completed",
            [effect_value(i * 10 + j) for j in range(p.n)],
            activities=("chaos-effect",) * p.n,
        )
    if p.kind == "cancel":
        return Expected("cancelled", "compensated")
    if p.kind == "fail":
        if p.catch:
            return Expected(
                "completed",
                "recovered",
                activities=("chaos-effect", "chaos-doomed", "chaos-compensate"),
            )
        return Expected(
            "failed", error_type="TerminalError", activities=("chaos-effect", "chaos-doomed")
        )
    if p.kind == "outlive":
        return Expected("completed", effect_value(i), activities=("chaos-outlive",))
    if p.kind == "heartbeat":
        return Expected("completed", effect_value(i), activities=("chaos-heartbeat",))
    if p.kind == "txact":
        return Expected(
            "completed",
            effect_value(i * 10) + effect_value(i * 10 + 1),
            activities=("chaos-effect", "chaos-tx"),
        )
    raise ValueError(p.kind)
