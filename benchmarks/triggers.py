"""Reproduce the 16 triggers of issue 10 as a user would, and count what user code did.

``python -m benchmarks.triggers [--store memory|pg|both]``

Each case uses a real Engine and Worker (TestEnvironment where the trigger is about it),
small poll intervals and leases, and is bounded in time: a case that has not settled
within its bound is reported as NOT SETTLED. The table says, per trigger and store, how
many times user code ran, the attempts Flows counted (``flows.activity_info().attempt``
seen inside the activity, or ``error.attempts`` on the record), the outcome and the
wall seconds. ``pg`` is an embedded PostgreSQL 18 in a temporary directory, stopped and
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

import flows_core as flows
from flows_memory import MemoryStore, TestEnvironment

BOUND = 5.0  # seconds a case may take to settle
FAST_RETRY = flows.RetryPolicy(initial_interval=timedelta(milliseconds=50), jitter=0.0)
TWO_ATTEMPTS = flows.RetryPolicy(
    initial_interval=timedelta(milliseconds=50), jitter=0.0, max_attempts=2
)
UNDECODABLE_PATH = os.fsdecode(b"/data/\xff.csv")  # holds a lone surrogate


@dataclass
class Result:
    trigger: str
    store: str
    executions: str
    attempts: str
    outcome: str
    seconds: float


class Counter:
    """Executions of user code and the attempts Flows said they were."""

    def __init__(self) -> None:
        self.runs = 0
        self.attempts: list[int] = []
        self.active = 0
        self.max_active = 0

    def activity_ran(self) -> None:
        self.runs += 1
        self.attempts.append(flows.activity_info().attempt)

    def counted(self) -> str:
        return str(max(self.attempts)) if self.attempts else "0"


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- stores --


class Stores:
    """Makes a fresh store per case: a MemoryStore, or a new schema on the embedded server."""

    def __init__(self, kind: str, dsn: str | None) -> None:
        self.kind = kind
        self.dsn = dsn

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[Any]:
        if self.kind == "memory":
            yield MemoryStore()
            return
        from flows_pg import PostgresStore

        assert self.dsn is not None
        schema = f"trig_{uuid.uuid4().hex[:12]}"
        store = PostgresStore(self.dsn, schema=schema)
        await store.migrate()
        try:
            yield store
        finally:
            await store.close()
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def running(worker: flows.Worker) -> AsyncIterator[flows.Worker]:
    task = asyncio.ensure_future(worker.run())
    try:
        yield worker
    finally:
        await worker.stop(grace_period=1.0)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)


def make_worker(store: Any, workflows: list[Any], activities: list[Any], **kw: Any) -> flows.Worker:
    options: dict[str, Any] = {
        "poll_interval": 0.05,
        "lease": timedelta(seconds=2),
        "workflow_task_backoff": timedelta(milliseconds=50),
    }
    options.update(kw)
    return flows.Worker(store, workflows=workflows, activities=activities, **options)


async def settle(
    engine: flows.Engine,
    workflow_id: str,
    until: Callable[[flows.WorkflowInfo], bool] | None = None,
    bound: float = BOUND,
) -> tuple[flows.WorkflowInfo, bool]:
    """Poll until finished or parked (or ``until``), at most ``bound`` seconds."""
    pred = until or (lambda i: i.finished or i.status == flows.WorkflowStatus.PARKED)
    deadline = time.monotonic() + bound
    while True:
        info = await engine.query(workflow_id)
        if pred(info):
            return info, True
        if time.monotonic() > deadline:
            return info, False
        await asyncio.sleep(0.02)


def describe(info: flows.WorkflowInfo, settled: bool) -> str:
    text = info.status.value
    if info.error is not None:
        msg = info.error.message.replace("\n", " ")
        text += f" {info.error.type}: {msg[:70]}"
    if not settled:
        text = f"NOT SETTLED after {BOUND:.0f}s ({text})"
    return text


def err_attempts(info: flows.WorkflowInfo) -> str:
    return str(info.error.attempts) if info.error is not None else "-"


# -- the cases; each returns (executions, counted attempts, outcome) --

Case = Callable[[Stores], Awaitable[tuple[str, str, str]]]


async def activity_failing(
    stores: Stores, name: str, raise_it: Callable[[], None]
) -> tuple[str, str, str]:
    """An activity (max_attempts=2) that fails through ``raise_it``; the workflow runs it."""
    c = Counter()

    @flows.activity(name, retry=TWO_ATTEMPTS)
    async def act(x: int) -> int:
        c.activity_ran()
        raise_it()
        return x

    @flows.workflow(f"wf-{name}")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return await ctx.execute(act, x)

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [act])):
            run = await engine.start(wf, 1)
            info, ok = await settle(engine, run.workflow_id)
        await asyncio.sleep(0.3)  # anything still re-running would show here
    return str(c.runs), f"{c.counted()} (record {err_attempts(info)})", describe(info, ok)


async def case_bad_str(stores: Stores) -> tuple[str, str, str]:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("__str__ exploded")

    def boom() -> None:
        raise Nasty()

    return await activity_failing(stores, "bad-str", boom)


async def case_cancelled_error(stores: Stores) -> tuple[str, str, str]:
    def boom() -> None:
        raise asyncio.CancelledError()

    return await activity_failing(stores, "cancelled-error", boom)


async def case_surrogate(stores: Stores) -> tuple[str, str, str]:
    def boom() -> None:
        raise ValueError(f"cannot open {UNDECODABLE_PATH}")

    return await activity_failing(stores, "surrogate", boom)


async def case_asyncio_timeout(stores: Stores) -> tuple[str, str, str]:
    c = Counter()

    @flows.activity("slowish", retry=FAST_RETRY)
    async def act(x: int) -> int:
        c.activity_ran()
        await asyncio.sleep(0.05)
        return x

    @flows.workflow("wf-asyncio-timeout")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        async with asyncio.timeout(10):
            return await ctx.execute(act, x)

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [act])):
            run = await engine.start(wf, 1)
            info, ok = await settle(engine, run.workflow_id)
            await asyncio.sleep(0.5)
    says = "flows.race" in (info.error.message if info.error else "")
    outcome = f"{describe(info, ok)}... (names flows.race: {'yes' if says else 'NO'})"
    return str(c.runs), f"{c.counted()} (record {err_attempts(info)})", outcome


class FailingCommits:
    """A store proxy whose commit_workflow_task always raises StoreUnavailable."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit_workflow_task(self, commit: Any) -> Any:
        self.commits += 1
        raise flows.StoreUnavailable("commit refused by the benchmark's proxy store")


async def case_failing_commit(stores: Stores) -> tuple[str, str, str]:
    runs = 0

    @flows.workflow("wf-failing-commit")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        nonlocal runs
        runs += 1
        return x

    async with stores.fresh() as store:
        proxy = FailingCommits(store)
        engine = flows.Engine(store, workflows=[wf])
        worker = make_worker(proxy, [wf], [], max_workflow_task_attempts=3)
        async with running(worker):
            run = await engine.start(wf, 1)
            info, ok = await settle(engine, run.workflow_id)
            await asyncio.sleep(0.5)
    return (
        f"{runs} (commits tried {proxy.commits})",
        err_attempts(info),
        describe(info, ok),
    )


async def case_nan(stores: Stores) -> tuple[str, str, str]:
    c_float, c_dict = Counter(), Counter()

    @flows.activity("nan-float", retry=FAST_RETRY)
    async def as_float(x: int) -> float:
        c_float.activity_ran()
        return float("nan")

    @flows.activity("inf-dict", retry=FAST_RETRY)
    async def as_dict(x: int) -> dict[str, float]:
        c_dict.activity_ran()
        return {"v": float("inf")}

    @flows.workflow("wf-nan-float")
    async def wf_f(ctx: flows.WorkflowContext, x: int) -> str:
        value = await ctx.execute(as_float, x)
        return repr(value)

    @flows.workflow("wf-inf-dict")
    async def wf_d(ctx: flows.WorkflowContext, x: int) -> str:
        value = await ctx.execute(as_dict, x)
        return repr(value)

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf_f, wf_d])
        async with running(make_worker(store, [wf_f, wf_d], [as_float, as_dict])):
            r1 = await engine.start(wf_f, 1)
            r2 = await engine.start(wf_d, 1)
            i1, ok1 = await settle(engine, r1.workflow_id)
            i2, ok2 = await settle(engine, r2.workflow_id)
    out1 = describe(i1, ok1) if i1.error else f"{i1.status.value} output={i1.output!r}"
    out2 = describe(i2, ok2) if i2.error else f"{i2.status.value} output={i2.output!r}"
    return (
        f"float {c_float.runs} / dict {c_dict.runs}",
        f"{c_float.counted()} / {c_dict.counted()}",
        f"float: {out1[:55]} | dict: {out2[:55]}",
    )


class AddressV1(msgspec.Struct):
    street: str


class AddressV2(msgspec.Struct):
    street: str
    zip: str | None = None


async def case_struct_evolution(stores: Stores) -> tuple[str, str, str]:
    runs = {"v1": 0, "v2": 0}

    @flows.activity("geocode", retry=FAST_RETRY)
    async def geocode_v1(addr: AddressV1) -> str:
        runs["v1"] += 1
        return f"geo:{addr.street}"

    @flows.workflow("wf-evolution")
    async def wf_v1(ctx: flows.WorkflowContext, street: str) -> str:
        geo = await ctx.execute(geocode_v1, AddressV1(street=street))
        return f"{geo} {await ctx.wait_for_signal('go', str)}"

    # The deploy: the input Struct gained an optional field with a default.
    @flows.activity("geocode", retry=FAST_RETRY)
    async def geocode_v2(addr: AddressV2) -> str:
        runs["v2"] += 1
        return f"geo:{addr.street}"

    @flows.workflow("wf-evolution")
    async def wf_v2(ctx: flows.WorkflowContext, street: str) -> str:
        geo = await ctx.execute(geocode_v2, AddressV2(street=street))
        return f"{geo} {await ctx.wait_for_signal('go', str)}"

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf_v1])
        async with running(make_worker(store, [wf_v1], [geocode_v1])):
            run = await engine.start(wf_v1, "main st")
            info, ok = await settle(
                engine, run.workflow_id, until=lambda i: i.history_length >= 4 or i.finished
            )
        before = f"old code: {info.status.value}, {info.history_length} events"
        engine = flows.Engine(store, workflows=[wf_v2])
        async with running(make_worker(store, [wf_v2], [geocode_v2])):
            await engine.signal(run.workflow_id, "go", "now")
            info, ok = await settle(engine, run.workflow_id)
    out = describe(info, ok)
    if info.status == flows.WorkflowStatus.COMPLETED:
        out += f" output={info.output!r}"
    return f"v1 {runs['v1']}, v2 {runs['v2']}", "-", f"{before}; new code: {out}"


async def case_concurrency(stores: Stores) -> tuple[str, str, str]:
    c = Counter()

    @flows.activity("rate-limited", retry=FAST_RETRY)
    async def act(x: int) -> int:
        c.activity_ran()
        c.active += 1
        c.max_active = max(c.max_active, c.active)
        try:
            await asyncio.sleep(0.005)
        finally:
            c.active -= 1
        return x

    @flows.workflow("wf-gather-64")
    async def wf(ctx: flows.WorkflowContext, n: int) -> int:
        return sum(await flows.gather(*(ctx.execute(act, i) for i in range(n))))

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [act], concurrency=1)):
            run = await engine.start(wf, 64)
            info, ok = await settle(engine, run.workflow_id, bound=15)
    return (
        str(c.runs),
        c.counted(),
        f"{describe(info, ok)}; max concurrent activities = {c.max_active}",
    )


async def case_cancel_terminate_parked(stores: Stores) -> tuple[str, str, str]:
    runs = 0

    @flows.workflow("wf-parks")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        nonlocal runs
        runs += 1
        return len(x)  # type: ignore[arg-type]  # a TypeError bug: parks the workflow

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [])):
            r1 = await engine.start(wf, 1)
            r2 = await engine.start(wf, 2)
            p1, _ = await settle(engine, r1.workflow_id)
            p2, _ = await settle(engine, r2.workflow_id)
            cancel = await engine.cancel(r1.workflow_id, reason="operator")
            term = await engine.terminate(r2.workflow_id, reason="operator")
            i1, ok1 = await settle(engine, r1.workflow_id, until=lambda i: i.finished)
            i2, ok2 = await settle(engine, r2.workflow_id, until=lambda i: i.finished)
    return (
        str(runs),
        f"{err_attempts(p1)} / {err_attempts(p2)}",
        f"was {p1.status.value}/{p2.status.value}; cancel()={cancel.value} -> "
        f"{i1.status.value}{'' if ok1 else ' NOT SETTLED'}; terminate()={term.value} -> "
        f"{i2.status.value}{'' if ok2 else ' NOT SETTLED'}",
    )


async def case_gather_failure(stores: Stores) -> tuple[str, str, str]:
    c = Counter()

    @flows.activity("fails-for-good", retry=flows.RetryPolicy(max_attempts=1))
    async def act(x: int) -> int:
        c.activity_ran()
        raise RuntimeError("card declined")

    @flows.workflow("wf-gather-failure")
    async def wf(ctx: flows.WorkflowContext, x: int) -> str:
        await flows.gather(ctx.execute(act, x), ctx.wait_for_signal("never-sent", str))
        return "done"

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [act])):
            run = await engine.start(wf, 1)
            info, ok = await settle(engine, run.workflow_id)
    return str(c.runs), f"{c.counted()} (record {err_attempts(info)})", describe(info, ok)


async def case_result_timeout(stores: Stores) -> tuple[str, str, str]:
    @flows.workflow("wf-waits-forever")
    async def wf(ctx: flows.WorkflowContext, x: int) -> str:
        return await ctx.wait_for_signal("never-sent", str)

    async def measure(run: flows.Run[str]) -> str:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(run.result(timeout=0.5), BOUND)
            what = "returned"
        except TimeoutError as exc:
            what = f"TimeoutError: {str(exc)[:60]}" if str(exc) else "TimeoutError"
        return f"raised after {time.monotonic() - t0:.2f}s wall: {what}"

    if stores.kind == "memory":
        async with TestEnvironment(workflows=[wf]) as env:
            run = await env.engine.start(wf, 1)
            return "-", "-", "TestEnvironment " + await measure(run)
    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [])):
            run = await engine.start(wf, 1)
            return "-", "-", "(real Engine; TestEnvironment is memory-only) " + await measure(run)


async def case_unserved_activity(stores: Stores) -> tuple[str, str, str]:
    @flows.activity("nobody-serves-me")
    async def act(x: int) -> int:
        return x

    @flows.workflow("wf-unserved")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        return await ctx.execute(act, x)

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [])):
            run = await engine.start(wf, 1)
            info, ok = await settle(
                engine,
                run.workflow_id,
                until=lambda i: "nobody-serves-me" in (i.waiting_reason or "") or i.finished,
                bound=3,
            )
    reason = info.waiting_reason or "None"
    unsettled = "" if ok else " (no reason naming the activity within 3 s)"
    return "0", "-", f"{info.status.value}; waiting_reason={reason[:90]}{unsettled}"


async def case_zero_timers(stores: Stores) -> tuple[str, str, str]:
    @flows.workflow("wf-zero-timers")
    async def wf(ctx: flows.WorkflowContext, kind: str) -> str:
        if kind == "zero":
            await ctx.sleep(0)
        elif kind == "past":
            await ctx.sleep_until(ctx.now() - timedelta(hours=1))
        elif kind == "10ms":
            await ctx.sleep(0.01)
        return kind

    took: dict[str, float] = {}
    outcome = ""
    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[wf])
        async with running(make_worker(store, [wf], [], poll_interval=1.0)):
            for kind in ("no timer", "zero", "past", "10ms"):
                await asyncio.sleep(0.3)  # the worker is idle, waiting on its poll interval
                t0 = time.monotonic()
                run = await engine.start(wf, kind)
                info, ok = await settle(engine, run.workflow_id)
                took[kind] = time.monotonic() - t0
                if not (ok and info.status == flows.WorkflowStatus.COMPLETED):
                    outcome += f" {kind}: {describe(info, ok)};"
    timings = ", ".join(f"{k} {v:.3f}s" for k, v in took.items())
    return "-", "-", f"{outcome or 'all completed'}; start->completed: {timings} (poll 1 s)"


async def case_blocking_workflow(stores: Stores) -> tuple[str, str, str]:
    runs = 0

    @flows.workflow("wf-blocks")
    async def wf(ctx: flows.WorkflowContext, x: int) -> int:
        nonlocal runs
        runs += 1
        time.sleep(2)  # noqa: ASYNC251  # the mistake under test
        return x

    capture = LogCapture()
    logger = logging.getLogger("flows")
    logger.addHandler(capture)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        async with stores.fresh() as store:
            engine = flows.Engine(store, workflows=[wf])
            worker = make_worker(store, [wf], [], max_workflow_task_attempts=2)
            async with running(worker):
                run = await engine.start(wf, 1)
                info, ok = await settle(engine, run.workflow_id, bound=12)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        logger.propagate = propagate
    warned = [r for r in capture.records if r.levelno >= logging.WARNING]
    about = [r for r in warned if run.workflow_id in r.getMessage()]
    first = about[0].getMessage().splitlines()[0][:90] if about else "none"
    return (
        str(runs),
        err_attempts(info),
        f"{describe(info, ok)[:70]}; {len(about)} log warnings naming it, first: {first}",
    )


async def case_code_errors(stores: Stores) -> tuple[str, str, str]:
    charged = Counter()
    bug = {"present": True}
    runs = 0

    @flows.activity("charge")
    async def charge(x: int) -> int:
        charged.activity_ran()
        return x

    @flows.workflow("wf-direct-call")
    async def direct(ctx: flows.WorkflowContext, x: int) -> int:
        return await charge(x)  # type: ignore[operator,no-any-return]  # the mistake under test

    @flows.workflow("wf-fixable")
    async def fixable(ctx: flows.WorkflowContext, x: int) -> int:
        nonlocal runs
        runs += 1
        paid = await ctx.execute(charge, x)
        if bug["present"]:
            return paid + "1"  # type: ignore[operator]  # the TypeError bug
        return paid + 1

    async with stores.fresh() as store:
        engine = flows.Engine(store, workflows=[direct, fixable])
        async with running(make_worker(store, [direct, fixable], [charge])):
            r1 = await engine.start(direct, 1)
            r2 = await engine.start(fixable, 1)
            i1, ok1 = await settle(engine, r1.workflow_id)
            p2, okp = await settle(engine, r2.workflow_id)
            bug["present"] = False  # "deploy the fix"
            retried = "retry() ok"
            try:
                await engine.retry(r2.workflow_id)
            except flows.FlowsError as exc:
                retried = f"retry() raised {type(exc).__name__}"
            i2, ok2 = await settle(engine, r2.workflow_id, until=lambda i: i.finished)
    says = "ctx.execute" in (i1.error.message if i1.error else "")
    direct_out = f"{describe(i1, ok1)[:85]}... (names ctx.execute: {'yes' if says else 'NO'})"
    fix_out = f"{p2.status.value}{'' if okp else ' NOT SETTLED'} -> {retried} -> " + (
        f"{i2.status.value} output={i2.output!r}" if ok2 else describe(i2, ok2)
    )
    return (
        f"charge {charged.runs}, wf-fixable {runs}",
        f"{err_attempts(i1)} / {err_attempts(p2)}",
        f"direct: {direct_out} | bug: {fix_out}",
    )


async def case_advance_after_signal(stores: Stores) -> tuple[str, str, str]:
    @flows.workflow("wf-signal-then-sleep")
    async def wf(ctx: flows.WorkflowContext, x: int) -> str:
        dock = await ctx.wait_for_signal("ready", int)
        await ctx.sleep(timedelta(hours=1))
        return f"dock {dock}"

    if stores.kind != "memory":
        return "-", "-", "n/a: TestEnvironment is memory-only"
    async with TestEnvironment(workflows=[wf], time_skipping=False) as env:
        run = await env.engine.start(wf, 1)
        await env.engine.signal(run.workflow_id, "ready", 4)
        await env.advance(timedelta(hours=1))
        info = await run.query()
    out = f"{info.status.value} output={info.output!r}" if info.finished else describe(info, True)
    return "-", "-", f"await env.advance(1h) right after signal -> {out}"


CASES: list[tuple[str, Case]] = [
    ("1 exception whose __str__ raises (max_attempts=2)", case_bad_str),
    ("2 activity lets CancelledError escape (max_attempts=2)", case_cancelled_error),
    ("3 asyncio.timeout around a step in workflow code", case_asyncio_timeout),
    ("4 error message with a lone surrogate (max_attempts=2)", case_surrogate),
    ("5 commit_workflow_task always fails (max_wf_task_attempts=3)", case_failing_commit),
    ("6 activity returns NaN (-> float) / inf (-> dict)", case_nan),
    ("7 optional field added to input Struct mid-run", case_struct_evolution),
    ("8 Worker(concurrency=1), gather of 64 activities", case_concurrency),
    ("9 cancel / terminate a parked workflow", case_cancel_terminate_parked),
    ("10 gather(failed activity, signal never sent)", case_gather_failure),
    ("11 run.result(timeout=0.5), nothing due", case_result_timeout),
    ("12 awaited activity served by no live worker", case_unserved_activity),
    ("13 ctx.sleep(0) + sleep_until(past), poll_interval=1", case_zero_timers),
    ("14 time.sleep(2) in workflow code (max_wf_task_attempts=2)", case_blocking_workflow),
    ("15 activity called directly; TypeError bug then retry()", case_code_errors),
    ("16 await env.advance() right after a signal", case_advance_after_signal),
]


async def run_all(kinds: list[str], dsn: str | None) -> list[Result]:
    results: list[Result] = []
    for kind in kinds:
        stores = Stores(kind, dsn)
        for title, case in CASES:
            t0 = time.monotonic()
            try:
                executions, attempts, outcome = await asyncio.wait_for(case(stores), 30)
            except Exception as exc:  # a case that breaks is a result too
                executions, attempts = "?", "?"
                outcome = f"CASE ERROR {type(exc).__name__}: {str(exc)[:100]}"
            took = time.monotonic() - t0
            results.append(Result(title, kind, executions, attempts, outcome, took))
            print(f"  {kind:6} {title}: {outcome} ({took:.2f}s)", file=sys.stderr, flush=True)
    return results


def table(results: list[Result]) -> str:
    head = "| trigger | store | user-code executions | counted attempts | outcome | seconds |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in results:
        outcome = r.outcome.replace("|", "/")
        lines.append(
            f"| {r.trigger} | {r.store} | {r.executions} | {r.attempts} | {outcome} | "
            f"{r.seconds:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["memory", "pg", "both"], default="both")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the worker's log lines are counted, not shown
    kinds = ["memory", "pg"] if args.store == "both" else [args.store]
    dsn: str | None = None
    data_dir: Path | None = None
    try:
        if "pg" in kinds:
            from flows_pg import embedded

            base = Path(tempfile.mkdtemp(prefix="flows-triggers-pg-"))
            os.chmod(base, 0o755)  # the embedded server may run as its own system user
            data_dir = base / "data"
            dsn = embedded.ensure_started(data_dir)
        results = asyncio.run(run_all(kinds, dsn))
    finally:
        if data_dir is not None:
            from flows_pg import embedded

            with contextlib.suppress(Exception):
                embedded.stop(data_dir, delete=True)
            import shutil

            shutil.rmtree(data_dir.parent, ignore_errors=True)
    print(f"Issue 10 triggers, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
