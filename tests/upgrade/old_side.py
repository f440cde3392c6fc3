"""The previous release's side of the schema-upgrade test, run as a script in a
subprocess whose PYTHONPATH puts that release's tree (``git archive``) first.

    old_side.py setup DSN SCHEMA N   migrate a fresh schema with the old migrations,
                                     start N workflows and run a worker until each waits
                                     (even ones on the signal, odd ones on the timer);
                                     prints one JSON line, then waits to be killed
    old_side.py start DSN SCHEMA ID...  start workflows, no worker (never claimed)
    old_side.py worker DSN SCHEMA    run a worker until SIGTERM (prints RUNNING first)

It imports ``flows_core`` and ``flows_pg`` of whatever release comes first on the path
and prints where they come from, so the test can check it really ran the old code.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta

from upgrade_app import ACTIVITIES, WORKFLOWS, OrderIn, order

import flows_core as flows
import flows_pg
from flows_pg import PostgresStore

SHORT_TIMER = 0.2
LONG_TIMER = 8.0
LEASE = timedelta(seconds=2)


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def new_worker(store: PostgresStore) -> flows.Worker:
    return flows.Worker(
        store, workflows=WORKFLOWS, activities=ACTIVITIES, poll_interval=0.1, lease=LEASE
    )


def wait_kind(history: list[object]) -> str | None:
    """What the last step of ``history`` waits for ("signal", "timer"), if it waits."""
    kinds = [type(e).__name__ for e in history]
    if kinds and kinds[-1] == "SignalWaitStarted":
        return "signal"
    if kinds and kinds[-1] == "TimerStarted":
        return "timer"
    return None


async def setup(dsn: str, schema: str, count: int) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    applied = await store.migrate()
    engine = flows.Engine(store, workflows=WORKFLOWS, eager_start=False)
    ids = [f"up-{i}" for i in range(count)]
    for i, wf_id in enumerate(ids):
        delay = SHORT_TIMER if i % 2 == 0 else LONG_TIMER
        await engine.start(order, OrderIn(order_id=wf_id, delay=delay), workflow_id=wf_id)
    worker = new_worker(store)
    task = asyncio.create_task(worker.run())
    want = {wf_id: ("signal" if i % 2 == 0 else "timer") for i, wf_id in enumerate(ids)}
    while True:
        seen = {wf_id: wait_kind(await engine.history(wf_id)) for wf_id in ids}
        if seen == want:
            break
        if task.done():
            task.result()
            raise RuntimeError("the old worker ended early")
        await asyncio.sleep(0.05)
    say(
        {
            "applied": applied,
            "waiting": seen,
            "flows_core": flows.__file__,
            "flows_pg": flows_pg.__file__,
        }
    )
    await asyncio.Event().wait()  # until killed, the worker still running


async def start(dsn: str, schema: str, ids: list[str]) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    engine = flows.Engine(store, workflows=WORKFLOWS, eager_start=False)
    for wf_id in ids:
        await engine.start(order, OrderIn(order_id=wf_id, delay=SHORT_TIMER), workflow_id=wf_id)
    await store.close()
    say({"started": ids, "flows_core": flows.__file__})


async def worker(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    w = new_worker(store)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    loop.add_signal_handler(
        signal.SIGTERM, lambda: stopping.append(asyncio.ensure_future(w.stop()))
    )
    run = asyncio.create_task(w.run())
    say({"running": w.worker_id, "flows_core": flows.__file__})
    await run
    for t in stopping:
        await t
    await store.close()


def main(argv: list[str]) -> None:
    command, dsn, schema, *rest = argv
    if command == "setup":
        asyncio.run(setup(dsn, schema, int(rest[0])))
    elif command == "start":
        asyncio.run(start(dsn, schema, rest))
    elif command == "worker":
        asyncio.run(worker(dsn, schema))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
