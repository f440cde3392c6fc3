"""The workflows the benchmarks run on Flows, and a store wrapper that reports completions.

The wrapper lets the harness learn in-process when workflows finish (from the worker's
own terminal commits) instead of polling the database, so the transactions it counts
are the library's own.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core.events import SignalWaitStarted
from flows_core.store import TERMINAL_STATUSES

# -- activities --

# Worker-side timestamps recorded by the activities themselves.
STAMPS: dict[str, list[float]] = {}
"""workflow id -> perf_counter() of each step of the 20-step workflow."""
WALL: dict[tuple[str, str], float] = {}
"""(workflow id, label) -> time.time() recorded by the ``mark`` activity."""
WAKE: dict[str, asyncio.Future[float]] = {}
"""workflow id -> future resolved with time.time() when the ``mark`` activity runs."""


@flows.activity("bench-inc")
async def inc(x: int) -> int:
    return x + 1


IO_DELAY = 0.05
"""Seconds each activity of the I/O-bound workflow (scenario i) awaits."""


@flows.activity("bench-io")
async def io_wait(x: int) -> int:
    await asyncio.sleep(IO_DELAY)
    return x + 1


@flows.activity("bench-step")
async def step(x: int) -> int:
    STAMPS.setdefault(flows.activity_info().workflow_id, []).append(time.perf_counter())
    return x + 1


@flows.activity("bench-mark")
async def mark(label: str) -> float:
    now = time.time()
    wid = flows.activity_info().workflow_id
    WALL[(wid, label)] = now
    fut = WAKE.get(wid)
    if fut is not None and not fut.done():
        fut.set_result(now)
    return now


# -- workflows --


@flows.workflow("bench-three")
async def three(ctx: flows.WorkflowContext, x: int) -> int:
    x = await ctx.execute(inc, x)
    x = await ctx.execute(inc, x)
    return await ctx.execute(inc, x)


@flows.workflow("bench-io-three")
async def three_io(ctx: flows.WorkflowContext, x: int) -> int:
    x = await ctx.execute(io_wait, x)
    x = await ctx.execute(io_wait, x)
    return await ctx.execute(io_wait, x)


@flows.workflow("bench-history")
async def history(ctx: flows.WorkflowContext, n: int) -> int:
    """``n`` steps (the harness writes their events directly), then a signal loop."""
    x = 0
    for _ in range(n):
        x = await ctx.execute(inc, x)
    while True:
        await ctx.wait_for_signal("go", int)
        await ctx.execute(mark, "resumed")


@flows.workflow("bench-steps")
async def steps(ctx: flows.WorkflowContext, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ctx.execute(step, x)
    return x


@flows.workflow("bench-signal")
async def signalled(ctx: flows.WorkflowContext, _: int) -> float:
    await ctx.wait_for_signal("go", int)
    return await ctx.execute(mark, "resumed")


@flows.workflow("bench-timer")
async def timer(ctx: flows.WorkflowContext, ms: int) -> float:
    await ctx.execute(mark, "before")
    await ctx.sleep(timedelta(milliseconds=ms))
    return await ctx.execute(mark, "after")


WORKFLOWS: list[flows.Workflow[Any, Any]] = [three, steps, signalled, timer, three_io, history]
ACTIVITIES: list[flows.Activity[Any, Any]] = [inc, step, mark, io_wait]


# -- completion tracking --


class Tracker:
    """Counts terminal commits and signal waits seen by a wrapped store."""

    def __init__(self) -> None:
        self.done = 0
        self.waiting = 0
        self.target = 0
        self.wait_target = 0
        self.all_done = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self.finished: dict[str, asyncio.Future[None]] = {}

    def expect(self, n: int) -> None:
        self.done, self.target = 0, n
        self.all_done = asyncio.Event()
        if n == 0:
            self.all_done.set()

    def expect_waiting(self, n: int) -> None:
        self.waiting, self.wait_target = 0, n
        self.all_waiting = asyncio.Event()

    def future(self, workflow_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished[workflow_id] = fut
        return fut

    def on_commit(self, commit: Any) -> None:
        if commit.status in TERMINAL_STATUSES:
            self.done += 1
            if self.done >= self.target:
                self.all_done.set()
            fut = self.finished.pop(commit.lease.workflow_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if any(isinstance(e, SignalWaitStarted) for e in commit.events):
            self.waiting += 1
            if self.waiting >= self.wait_target:
                self.all_waiting.set()


# Store methods counted per call: on PostgreSQL each is one statement, one transaction
# (a commit whose history grew meanwhile takes a second, locking, statement).
COUNTED = (
    "start_workflow",
    "start_workflow_leased",
    "signal_workflow",
    "cancel_workflow",
    "get_workflow",
    "get_history",
    "claim",
    "commit_workflow_task",
    "park_workflow",
    "complete_activity",
    "retry_activity",
    "heartbeat",
    "release",
    "fire_due_timers",
    "next_due",
    "register_worker",
    "unregister_worker",
    "list_workers",
    "commit_workflow_tasks",
    "complete_activities",
    "start_workflows",
)


def _counting(name: str, fn: Any) -> Any:
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        return await fn(self, *args, **kwargs)

    call.__name__ = name
    call.__wrapped__ = fn  # type: ignore[attr-defined]  # (PostgresStore looks through it)
    return call


def tracked(store_cls: type) -> type:
    """A subclass of ``store_cls`` that counts its calls (``.calls``) and whose successful
    workflow commits feed ``.tracker``."""

    async def commit_workflow_task(self: Any, commit: Any) -> Any:
        result = await store_cls.commit_workflow_task(self, commit)
        self.tracker.on_commit(commit)
        return result

    ns: dict[str, Any] = {
        name: _counting(name, getattr(store_cls, name))
        for name in COUNTED
        if hasattr(store_cls, name)
    }

    async def commit_workflow_tasks(self: Any, commits: Any) -> Any:
        outcomes = await store_cls.commit_workflow_tasks(self, commits)
        for commit, outcome in zip(commits, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                self.tracker.on_commit(commit)
        return outcomes

    ns["commit_workflow_task"] = _counting("commit_workflow_task", commit_workflow_task)
    if hasattr(store_cls, "commit_workflow_tasks"):  # group commit (flows_core._group_commit)
        ns["commit_workflow_tasks"] = _counting("commit_workflow_tasks", commit_workflow_tasks)
    cls = type(f"Tracked{store_cls.__name__}", (store_cls,), ns)
    return cls


def memory_store() -> Any:
    from flows_memory import MemoryStore

    store = tracked(MemoryStore)()
    store.tracker = Tracker()
    store.calls = {}
    return store


def pg_store(dsn: str, schema: str, **kwargs: Any) -> Any:
    from flows_pg import PostgresStore

    store = tracked(PostgresStore)(dsn, schema=schema, **kwargs)
    store.tracker = Tracker()
    store.calls = {}
    return store


def citus_store(dsn: str, schema: str, **kwargs: Any) -> Any:
    from flows_citus import CitusStore

    store = tracked(CitusStore)(dsn, schema=schema, **kwargs)
    store.tracker = Tracker()
    store.calls = {}
    return store


async def start_many(
    engine: flows.Engine, workflow: Any, inputs: list[Any], concurrency: int = 16
) -> list[flows.Run[Any]]:
    """Start one workflow per input, ``concurrency`` start calls in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(x: Any) -> flows.Run[Any]:
        async with sem:
            return await engine.start(workflow, x)

    return list(await asyncio.gather(*(one(x) for x in inputs)))
