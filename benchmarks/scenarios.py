"""Scenarios that run inside the harness process (memory, and PostgreSQL for b-f)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import flows_core as flows
from flows_core.events import encode_event
from flows_core.store import ClaimRequest

from . import apps
from .common import Row, log, median, percentile


@dataclass
class Target:
    """Where a scenario runs: ``memory`` or ``postgres`` (dsn of the Flows database)."""

    adapter: str
    dsn: str = ""

    @property
    def pg(self) -> bool:
        return self.adapter != "memory"


def fresh_schema(prefix: str) -> str:
    return f"bench_{prefix}_{uuid.uuid4().hex[:8]}"


async def drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


@contextlib.asynccontextmanager
async def open_store(target: Target, prefix: str) -> AsyncIterator[Any]:
    if not target.pg:
        yield apps.memory_store()
        return
    schema = fresh_schema(prefix)
    if target.adapter == "citus":
        store = apps.citus_store(target.dsn, schema)
    else:
        store = apps.pg_store(target.dsn, schema)
    try:
        async with store:
            await store.migrate()
            yield store
    finally:
        await drop_schema(target.dsn, schema)


@contextlib.asynccontextmanager
async def flows_env(
    target: Target, prefix: str, *, concurrency: int = 32, poll_interval: float = 1.0
) -> AsyncIterator[tuple[Any, flows.Engine, flows.Worker]]:
    async with open_store(target, prefix) as store:
        eager = flows.EagerStarts()  # the engine starts workflows on this worker
        engine = flows.Engine(store, eager=eager)
        worker = flows.Worker(
            store,
            workflows=apps.WORKFLOWS,
            activities=apps.ACTIVITIES,
            concurrency=concurrency,
            poll_interval=poll_interval,
            eager=eager,
        )
        running = asyncio.create_task(worker.run())
        try:
            yield store, engine, worker
        finally:
            await worker.stop()
            await running


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# -- (a) throughput in this process: memory and Citus (the PostgreSQL rounds, side by
# side with the peers, run in subprocesses: see cli and pgruns) --


async def throughput_memory(n: int, concurrencies: list[int]) -> list[Row]:
    return await throughput_inprocess(Target("memory"), n, concurrencies)


async def throughput_inprocess(target: Target, n: int, concurrencies: list[int]) -> list[Row]:
    rows = []
    for c in concurrencies:
        async with flows_env(target, "tp", concurrency=c) as (store, engine, _):
            store.tracker.expect(n)
            t0 = time.perf_counter()
            await apps.start_many(engine, apps.three, list(range(n)), 16)
            await asyncio.wait_for(store.tracker.all_done.wait(), 120)
            elapsed = time.perf_counter() - t0
        rows.append(
            Row(
                "a throughput",
                target.adapter,
                f"c={c} N={n}",
                "workflows/s",
                n / elapsed,
                "wf/s",
                note=f"{3 * n / elapsed:,.0f} steps/s",
            )
        )
    return rows


# -- (b) per-step overhead --


async def per_step(target: Target, workflows: int, steps: int, bulk: int) -> list[Row]:
    intervals: list[float] = []
    per_wf: list[float] = []
    async with flows_env(target, "step", concurrency=32) as (store, engine, _):
        # warm up
        wid = new_id("warm")
        fut = store.tracker.future(wid)
        await engine.start(apps.steps, 3, workflow_id=wid)
        await asyncio.wait_for(fut, 60)
        for _ in range(workflows):
            wid = new_id("step")
            fut = store.tracker.future(wid)
            t0 = time.perf_counter()
            await engine.start(apps.steps, steps, workflow_id=wid)
            await asyncio.wait_for(fut, 60)
            per_wf.append((time.perf_counter() - t0) / steps)
            stamps = apps.STAMPS.pop(wid)
            intervals += [b - a for a, b in itertools.pairwise(stamps)]
        # steps/s with many workflows at once
        store.tracker.expect(bulk)
        t0 = time.perf_counter()
        await apps.start_many(engine, apps.steps, [steps] * bulk, 16)
        await asyncio.wait_for(store.tracker.all_done.wait(), 300)
        elapsed = time.perf_counter() - t0
        apps.STAMPS.clear()
    ms = [x * 1000 for x in intervals]
    case = f"{steps}-step wf x{workflows}, one at a time"
    goal = "p50 <= 1.0 ms" if target.pg else ""
    p50 = percentile(ms, 50)
    rows = [
        Row(
            "b per-step",
            target.adapter,
            case,
            "step p50",
            p50,
            "ms",
            goal=goal,
            met=(p50 <= 1.0) if target.pg else None,
            note=f"{len(ms)} intervals",
        ),
        Row("b per-step", target.adapter, case, "step p95", percentile(ms, 95), "ms"),
        Row("b per-step", target.adapter, case, "step p99", percentile(ms, 99), "ms"),
        Row(
            "b per-step",
            target.adapter,
            case,
            "wf time / steps (median)",
            median(per_wf) * 1000,
            "ms",
        ),
    ]
    sps = bulk * steps / elapsed
    goal = "" if target.pg else ">= 20,000 steps/s"
    rows.append(
        Row(
            "b per-step",
            target.adapter,
            f"{bulk} x {steps}-step wfs, c=32",
            "steps/s",
            sps,
            "steps/s",
            goal=goal,
            met=None if target.pg else sps >= 20_000,
        )
    )
    return rows


# -- (c) signal to resume --


async def signal_latency(target: Target, samples: int) -> list[Row]:
    lat: list[float] = []
    loop = asyncio.get_running_loop()
    async with flows_env(target, "sig", concurrency=8, poll_interval=1.0) as (
        store,
        engine,
        _,
    ):
        wids = [new_id("sig") for _ in range(samples)]
        store.tracker.expect_waiting(samples)
        for wid in wids:
            await engine.start(apps.signalled, 0, workflow_id=wid)
        await asyncio.wait_for(store.tracker.all_waiting.wait(), 60)
        await asyncio.sleep(1.2)  # the worker is idle now, waiting on LISTEN
        for wid in wids:
            fut: asyncio.Future[float] = loop.create_future()
            apps.WAKE[wid] = fut
            sent = time.time()
            await engine.signal(wid, "go", 1)
            resumed = await asyncio.wait_for(fut, 30)
            lat.append((resumed - sent) * 1000)
            apps.WAKE.pop(wid, None)
            await asyncio.sleep(random.uniform(0.02, 0.05))
    p50 = percentile(lat, 50)
    goal = "p50 <= 10 ms" if target.pg else ""
    case = f"{samples} samples, poll_interval=1s"
    return [
        Row(
            "c signal-to-resume",
            target.adapter,
            case,
            "p50",
            p50,
            "ms",
            goal=goal,
            met=(p50 <= 10) if target.pg else None,
        ),
        Row(
            "c signal-to-resume",
            target.adapter,
            case,
            "p95",
            percentile(lat, 95),
            "ms",
            note=f"max {max(lat):.1f} ms",
        ),
    ]


# -- (d) timer lateness --


async def timer_lateness(target: Target, samples: int, sleep_ms: int = 500) -> list[Row]:
    late: list[float] = []
    async with flows_env(target, "timer", concurrency=32, poll_interval=1.0) as (
        store,
        engine,
        _,
    ):
        wids = [new_id("tmr") for _ in range(samples)]
        store.tracker.expect(samples)
        for wid in wids:
            await engine.start(apps.timer, sleep_ms, workflow_id=wid)
            await asyncio.sleep(0.03)
        await asyncio.wait_for(store.tracker.all_done.wait(), 60)
        for wid in wids:
            before = apps.WALL.pop((wid, "before"))
            after = apps.WALL.pop((wid, "after"))
            late.append((after - before - sleep_ms / 1000) * 1000)
    case = f"sleep({sleep_ms} ms) x{samples}"
    return [
        Row("d timer lateness", target.adapter, case, "p50", percentile(late, 50), "ms"),
        Row(
            "d timer lateness",
            target.adapter,
            case,
            "p95",
            percentile(late, 95),
            "ms",
            note=f"max {max(late):.1f} ms",
        ),
    ]


# -- (e) replay cost --


async def replay_cost(sizes: list[int], budget: float) -> list[Row]:
    rows: list[Row] = []
    per_event: dict[int, float] = {}
    async with flows_env(Target("memory"), "replay", concurrency=4) as (store, engine, _):
        histories = {}
        for n in sizes:
            wid = new_id("replay")
            fut = store.tracker.future(wid)
            await engine.start(apps.steps, n, workflow_id=wid)
            await asyncio.wait_for(fut, 120)
            histories[n] = await engine.history(wid)
            apps.STAMPS.pop(wid, None)
    now = datetime.now(UTC)
    for n in sizes:
        history = histories[n]
        flows.replay(apps.steps, history, now)  # warm
        reps = max(3, int(budget * 1e6 / (len(history) * 3.0) / 5))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                flows.replay(apps.steps, history, now)
            best = min(best, (time.perf_counter() - t0) / reps)
        per_event[n] = best * 1e6 / len(history)
        rows.append(
            Row(
                "e replay",
                "pure",
                f"{n} steps ({len(history)} events)",
                "replay time",
                best * 1000,
                "ms",
                note=f"{per_event[n]:.2f} us/event",
            )
        )
    lo, hi = min(sizes), max(sizes)
    growth = per_event[hi] / per_event[lo]
    rows.append(
        Row(
            "e replay",
            "pure",
            f"us/event at {hi} vs {lo} steps",
            "ratio",
            growth,
            "x",
            goal="linear (ratio <= 2)",
            met=growth <= 2.0,
            note="; ".join(f"{n}: {per_event[n]:.2f} us/ev" for n in sizes),
        )
    )
    return rows


# -- (f) claim rate with a backlog --


async def _fill_pg(store: Any, engine: flows.Engine, n: int) -> None:
    """Insert ``n`` started workflows (row, history, workflow task) in three statements."""
    wid = "bl-@WID@"
    planner = getattr(engine, "planner", None)
    if planner is not None:
        new, definition = planner.start(apps.three, 0, None, wid)
    else:  # before the Planner split
        new, definition = engine.prepare_start(apps.three, 0, None, wid)  # type: ignore[attr-defined]
    event = encode_event(new.started).decode().replace(wid, "@WID@")
    name, version = definition.name, definition.version
    S = store._ident  # the quoted schema name
    params = {
        "n": n,
        "name": name,
        "version": version,
        "tid": new.tenant_id,
        "input": bytes(new.input).decode(),
        "event": event,
    }
    sk = "%(name)s || '-shard-' || (g %% 9)"
    async with store.pool.connection() as conn:
        ver = (await (await conn.execute("SHOW server_version_num")).fetchone())[0]
        new_uuid = "uuidv7()" if int(ver) >= 180000 else "gen_random_uuid()"
        async with conn.transaction():
            await conn.execute(
                f"""INSERT INTO {S}.workflows (shard_key, tenant_id, workflow_id, name, version,
                        status, input, history_length, next_seq)
                    SELECT {sk}, %(tid)s, 'bl-' || g, %(name)s, %(version)s, 'running',
                           %(input)s::json, 1, 1
                    FROM generate_series(1, %(n)s) g""",
                params,
            )
            await conn.execute(
                f"""INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
                    SELECT {sk}, %(tid)s, 'bl-' || g, 1,
                           replace(%(event)s, '@WID@', g::text)::json
                    FROM generate_series(1, %(n)s) g""",
                params,
            )
            await conn.execute(
                f"""INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind,
                        queue, name, visible_at)
                    SELECT {sk}, %(tid)s, {new_uuid}, 'bl-' || g, 'workflow',
                           'w:' || %(name)s || ':' || %(version)s, %(name)s,
                           now() - interval '1 hour' + g * interval '1 ms'
                    FROM generate_series(1, %(n)s) g""",
                params,
            )
        for table in ("workflows", "history", "tasks"):
            await conn.execute(f"ANALYZE {S}.{table}")


async def _claim_rate(store: Any, limit: int, calls: int, seconds: float) -> tuple[float, int]:
    request = ClaimRequest(
        owner="bench-claimer",
        workflow_types=[(apps.three.name, apps.three.version)],
        activity_names=[],
        limit=limit,
        lease=timedelta(minutes=10),
    )
    # Five bursts of calls / 5 claims each: the best burst's rate (a burst of a few
    # milliseconds on memory is easily hit by a pause of the shared machine).
    tasks = 0
    best = 0.0
    t_end = time.perf_counter() + seconds
    for _ in range(5):
        done = 0
        t0 = time.perf_counter()
        while done < calls // 5 and time.perf_counter() < t_end:
            got = await store.claim(request)
            done += 1
            tasks += len(got)
            if not got:
                break
        if done:
            best = max(best, done / (time.perf_counter() - t0))
    return best, tasks


async def claim_rate(target: Target, backlogs: list[int], seconds: float) -> list[Row]:
    rows: list[Row] = []
    rates: dict[tuple[int, int], float] = {}
    for backlog in backlogs:
        async with open_store(target, "claim") as store:
            engine = flows.Engine(store)
            t0 = time.perf_counter()
            if target.pg:
                await _fill_pg(store, engine, backlog)
            else:
                for i in range(backlog):
                    await engine.start(apps.three, i)
            fill = time.perf_counter() - t0
            log(f"  claim: {target.adapter} backlog {backlog:,} filled in {fill:.1f}s")
            for limit, calls in ((1, 400), (16, 100)):
                rate, tasks = await _claim_rate(store, limit, calls, seconds)
                rates[(backlog, limit)] = rate
                rows.append(
                    Row(
                        "f claim rate",
                        target.adapter,
                        f"backlog {backlog:,}, limit {limit}",
                        "claims/s",
                        rate,
                        "claims/s",
                        note=f"{rate * limit:,.0f} tasks/s; {tasks} tasks claimed",
                    )
                )
    small, big = min(backlogs), max(backlogs)
    for limit in (1, 16):
        ratio = rates[(big, limit)] / rates[(small, limit)]
        rows.append(
            Row(
                "f claim rate",
                target.adapter,
                f"limit {limit}: {big:,} vs {small:,} backlog",
                "ratio",
                ratio,
                "x",
                goal="no degradation (>= 0.8)",
                met=ratio >= 0.8,
            )
        )
    return rows


# -- (h) signal latency against the history size --


def _history_events(steps: int, now: datetime) -> list[Any]:
    """The events ``apps.history(steps)`` records before its first signal wait: each
    step ``inc(i)`` scheduled and completed, then the wait (its seq ``steps + 1``)."""
    import msgspec

    from flows_core.events import ActivityCompleted, ActivityScheduled, SignalWaitStarted

    events: list[Any] = []
    for i in range(steps):
        events.append(
            ActivityScheduled(seq=i + 1, name=apps.inc.name, input=msgspec.Raw(b"%d" % i), at=now)
        )
        events.append(ActivityCompleted(seq=i + 1, output=msgspec.Raw(b"%d" % (i + 1)), at=now))
    events.append(SignalWaitStarted(seq=steps + 1, name="go", at=now))
    return events


async def _prepare_history(store: Any, engine: flows.Engine, wid: str, steps: int) -> None:
    """Start ``apps.history(steps)`` and write its ``steps`` steps through the store
    protocol (claim its first workflow task, commit the events), as if it had run them."""
    from flows_core.store import WorkflowTaskCommit

    await engine.start(apps.history, steps, workflow_id=wid)
    request = ClaimRequest(
        owner="bench-history",
        workflow_types=[(apps.history.name, apps.history.version)],
        activity_names=[],
        limit=1,
        lease=timedelta(minutes=5),
    )
    claims = await store.claim(request)
    if not claims:
        raise RuntimeError("(h): the history workflow's task was not claimable")
    claim = claims[0]
    await store.commit_workflow_task(
        WorkflowTaskCommit(
            lease=claim.lease,
            claimed_history_length=len(claim.history),
            expected_next_seq=claim.workflow.next_seq,
            next_seq=steps + 2,
            events=_history_events(steps, datetime.now(UTC)),
        )
    )


async def signal_history(target: Target, sizes: list[int], samples: int) -> list[Row]:
    """Signal-to-resume latency of one workflow whose history holds ``size`` events
    before the first signal (written directly, not run), ``samples`` signals each (each
    waits until the workflow waits again). The first signal meets a worker that never
    ran the workflow (a full replay); the p50 is what a signal costs afterwards."""
    rows: list[Row] = []
    p50s: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    for size in sizes:
        steps = max(0, (size - 2) // 2)
        lat: list[float] = []
        async with open_store(target, "hist") as store:
            engine = flows.Engine(store)
            wid = new_id("hist")
            t0 = time.perf_counter()
            await _prepare_history(store, engine, wid, steps)
            length = len(await engine.history(wid))
            log(
                f"  (h) {target.adapter}: history of {length:,} events written in "
                f"{time.perf_counter() - t0:.1f}s"
            )
            worker = flows.Worker(
                store,
                workflows=apps.WORKFLOWS,
                activities=apps.ACTIVITIES,
                concurrency=8,
                poll_interval=1.0,
            )
            running = asyncio.create_task(worker.run())
            try:
                await asyncio.sleep(0.3)  # the worker is idle, listening
                for _ in range(samples):
                    fut: asyncio.Future[float] = loop.create_future()
                    apps.WAKE[wid] = fut
                    store.tracker.expect_waiting(1)
                    sent = time.time()
                    await engine.signal(wid, "go", 1)
                    resumed = await asyncio.wait_for(fut, 60)
                    lat.append((resumed - sent) * 1000)
                    await asyncio.wait_for(store.tracker.all_waiting.wait(), 60)
                    await asyncio.sleep(random.uniform(0.02, 0.04))
            finally:
                apps.WAKE.pop(wid, None)
                apps.WALL.pop((wid, "resumed"), None)
                await worker.stop()
                await running
        p50 = percentile(lat, 50)
        p50s[size] = p50
        goal = "p50 <= 12 ms" if target.pg and size >= 20_000 else ""
        rows.append(
            Row(
                "h signal vs history",
                target.adapter,
                f"{length:,} events, {samples} signals",
                "p50",
                p50,
                "ms",
                goal=goal,
                met=(p50 <= 12) if goal else None,
                note=f"first (cold worker) {lat[0]:.1f} ms; p95 {percentile(lat, 95):.1f} ms",
            )
        )
    lo, hi = min(sizes), max(sizes)
    rows.append(
        Row(
            "h signal vs history",
            target.adapter,
            f"p50 at {hi:,} vs {lo:,} events",
            "ratio",
            p50s[hi] / p50s[lo],
            "x",
            note="flat means ~1",
        )
    )
    return rows
