"""Workflow, activity and worker process used by the crash tests.

Run as a worker process::

    python crash_app.py DSN SCHEMA MODE LEASE_SECONDS

MODE is ``normal`` (it also serves ``poison-wf``, which os._exit()s the process),
``slow`` (step 1 of every workflow blocks for a minute, so the
process can be killed inside the activity), ``die-in-commit:SECONDS`` (the process
SIGKILLs itself that long after sending its first workflow-task commit),
``die-in-child-commit:SECONDS`` (the same, for the first commit that starts a child
workflow), ``die-after-child-start`` (SIGKILLs itself right after delivering the first
child start from the outbox, before the outbox row is deleted), ``die-in-tick`` (its
scheduler SIGKILLs the process after starting a schedule's tick workflows, before
advancing the schedule), ``die-in-continue:SECONDS`` (the same as ``die-in-commit``
with its first commit that continues as new) or ``die-in-debounce`` (it SIGKILLs itself
after starting a closed debounce window's workflow, before deleting the window's row).
Every activity execution is recorded in ``<schema>.crash_effects`` (its own connection,
autocommit), so the test can count executions against recorded results.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import msgspec
import psycopg
from psycopg import sql

import flows_core as flows

MODE = os.environ.get("CRASH_MODE", "normal")
_local = threading.local()


class EffectIn(msgspec.Struct):
    workflow_id: str
    step: int


def effects_table(schema: str) -> sql.Composed:
    return sql.SQL("{}.crash_effects").format(sql.Identifier(schema))


@flows.activity("effect", retry=flows.RetryPolicy(initial_interval=timedelta(seconds=0.1)))
def effect(inp: EffectIn) -> int:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ["CRASH_DSN"], autocommit=True)
    try:
        conn.execute(
            sql.SQL("INSERT INTO {} (workflow_id, step, pid) VALUES (%s, %s, %s)").format(
                effects_table(os.environ["CRASH_SCHEMA"])
            ),
            (inp.workflow_id, inp.step, os.getpid()),
        )
    except psycopg.OperationalError:
        _local.conn = None  # the server went away: the retry reconnects
        conn.close()
        raise
    if MODE == "slow" and inp.step == 1:
        time.sleep(60)
    return inp.step + 1


@flows.workflow("crash-wf")
async def crash_wf(ctx: flows.WorkflowContext, steps: int) -> int:
    total = 0
    for step in range(steps):
        total += await ctx.execute(effect, EffectIn(workflow_id=ctx.workflow_id, step=step))
    await ctx.sleep(timedelta(seconds=0.2))
    return total


@flows.workflow("tick-wf")
async def tick_wf(ctx: flows.WorkflowContext, name: str) -> str:
    """Started by the crash tests' schedule, once per tick."""
    return f"tick of {name}"


class Tally(msgspec.Struct, frozen=True):
    every: int
    seen: list[int] = []


@flows.workflow("crash-entity")
async def crash_entity(ctx: flows.WorkflowContext, tally: Tally) -> list[int]:
    """Collects "add" signals until a negative one, continuing as new every ``every``."""
    seen, in_run = list(tally.seen), 0
    while True:
        value = await ctx.wait_for_signal("add", int)
        if value < 0:
            return seen
        seen.append(value)
        in_run += 1
        if in_run == tally.every:
            ctx.continue_as_new(Tally(every=tally.every, seen=seen))


@flows.workflow("poison-wf")
async def poison_wf(ctx: flows.WorkflowContext, _: None) -> None:
    """Kills the process running its workflow task, every time (a poison task)."""
    os._exit(17)


@flows.workflow("crash-parent")
async def crash_parent(ctx: flows.WorkflowContext, children: int) -> int:
    """Starts ``children`` crash-wf children at once and sums their results."""
    results = await flows.gather(*(ctx.execute_child(crash_wf, 3) for _ in range(children)))
    return sum(results)


async def run_worker(dsn: str, schema: str, lease: float) -> None:
    from flows_pg import PostgresStore

    store_class = PostgresStore
    if os.environ.get("CRASH_STORE") == "citus":
        from flows_citus import CitusStore

        store_class = CitusStore
    async with store_class(dsn, schema=schema) as store:
        if MODE.startswith(("die-in-commit:", "die-in-continue:")):
            delay = float(MODE.split(":", 1)[1])
            commit = store.commit_workflow_task
            only_continue = MODE.startswith("die-in-continue:")

            async def dying(c: object) -> object:
                if only_continue and getattr(c, "continue_as_new", None) is None:
                    return await commit(c)  # type: ignore[arg-type]
                inflight = asyncio.ensure_future(commit(c))  # type: ignore[arg-type]
                await asyncio.sleep(delay)
                del inflight  # never awaited: the process dies while it runs
                os.kill(os.getpid(), signal.SIGKILL)

            store.commit_workflow_task = dying  # type: ignore[method-assign]
        if MODE == "die-in-tick":

            async def die_before_advancing(advance: object) -> bool:
                os.kill(os.getpid(), signal.SIGKILL)
                return False

            store.advance_schedule = die_before_advancing  # type: ignore[method-assign]
        if MODE == "die-in-debounce":

            async def die_before_deleting(lease: object) -> bool:
                os.kill(os.getpid(), signal.SIGKILL)
                return False

            store.finish_pending_start = die_before_deleting  # type: ignore[method-assign]
        if MODE.startswith("die-in-child-commit:"):
            delay = float(MODE.split(":", 1)[1])
            plain_commit = store.commit_workflow_task

            async def dying_with_child(c: object) -> object:
                if not getattr(c, "outbox", None):
                    return await plain_commit(c)  # type: ignore[arg-type]
                inflight = asyncio.ensure_future(plain_commit(c))  # type: ignore[arg-type]
                await asyncio.sleep(delay)
                del inflight
                os.kill(os.getpid(), signal.SIGKILL)
                return None

            store.commit_workflow_task = dying_with_child  # type: ignore[method-assign,assignment]
        if MODE == "die-after-child-start":
            start = store.start_workflow

            async def start_then_die(new: object, **kw: object) -> None:
                await start(new, **kw)  # type: ignore[arg-type]
                if getattr(new.started, "parent", None) is not None:  # type: ignore[attr-defined]
                    os.kill(os.getpid(), signal.SIGKILL)

            store.start_workflow = start_then_die  # type: ignore[method-assign,assignment]
        worker = flows.Worker(
            store,
            workflows=[crash_wf, poison_wf, tick_wf, crash_parent, crash_entity],
            activities=[effect],
            lease=timedelta(seconds=lease),
            poll_interval=0.1,
            concurrency=10,
            max_workflow_task_attempts=int(os.environ.get("CRASH_MAX_WF_ATTEMPTS", "5")),
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop()))
        print("ready", flush=True)
        await worker.run()


if __name__ == "__main__":
    dsn, schema, mode, lease = sys.argv[1:5]
    os.environ.update(CRASH_DSN=dsn, CRASH_SCHEMA=schema, CRASH_MODE=mode)
    MODE = mode
    asyncio.run(run_worker(dsn, schema, float(lease)))
