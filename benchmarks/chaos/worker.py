"""One chaos worker process: ``python -m benchmarks.chaos.worker DSN SCHEMA LEASE SLOT``.

``CHAOS_STORE=citus`` in the environment makes it a ``CitusStore`` (DSN: the coordinator).

Runs a ``flows.Worker`` over every chaos workflow and activity until SIGTERM (graceful)
or SIGKILL. It never opens the store itself: the worker's own loop has to survive a
server that is down when it starts. Writes one JSON object per line to stdout (the
driver redirects it to a log file, together with stderr):

* ``ready``: the worker is about to run;
* ``err``: the first store error after a success (op, exception), then one per second;
* ``ok``: the first successful write (commit, activity result or retry) after an error;
* ``resume``: a successful write after none for ``GAP`` seconds (the first write after an
  outage, whether or not the worker saw an error: a short outage can hide in the pool's
  wait for a connection);
* ``stats``: the worker's counters, every second, and at exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core import LeaseLost

from .app import ACTIVITIES, WORKFLOWS

GAP = 0.3
WRITES = (
    "commit_workflow_task",
    "complete_activity",
    "retry_activity",
    # group commit (flows_core._group_commit): wrapped too, so that it stays in use
    "commit_workflow_tasks",
    "complete_activities",
)
WATCHED = (
    *WRITES,
    "claim",
    "fire_due_timers",
    "heartbeat",
    "release",
    "next_due",
    "register_worker",
    "park_workflow",
    "wait_for_work",
)


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": ev, "t": time.time(), "pid": os.getpid(), **fields}) + "\n")
    sys.stdout.flush()


def counters(worker: flows.Worker) -> dict[str, Any]:
    """The worker's counters (``Worker.counters``, formerly the ``Worker.stats`` dict)."""
    for name in ("counters", "stats"):
        value = getattr(worker, name, None)
        if isinstance(value, dict):
            return value
    return {}


class Watch:
    """Wraps the store's methods to log errors and the first successful write after one."""

    def __init__(self) -> None:
        self.failing = False
        self.owe_ok = False
        self.last_err_log = 0.0
        self.errors = 0
        self.writes = 0
        self.last_write = time.monotonic()

    def wrap(self, store: Any) -> None:
        for name in WATCHED:
            setattr(store, name, self._wrapped(name, getattr(store, name)))

    def _wrapped(self, name: str, method: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await method(*args, **kwargs)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except Exception as exc:
                self._error(name, exc)
                raise
            failed = _failed_group(name, result)
            if failed is not None:  # every item of a group write failed: an error too
                self._error(name, failed)
                return result
            if name in WRITES:
                self.writes += 1
                gap = time.monotonic() - self.last_write
                self.last_write = time.monotonic()
                if gap > GAP:
                    emit("resume", op=name, gap=round(gap, 3))
                if self.owe_ok:
                    emit("ok", op=name)
                    self.owe_ok = False
            if name in WRITES or name == "claim":
                self.failing = False
            return result

        return call

    def _error(self, name: str, exc: Exception) -> None:
        self.errors += 1
        now = time.time()
        if not self.failing or now - self.last_err_log > 1.0:
            emit("err", op=name, exc=repr(exc)[:200])
            self.last_err_log = now
        self.failing = self.owe_ok = True


def _failed_group(name: str, result: Any) -> Exception | None:
    """The first error of a group write whose items all failed other than by a lost
    lease (its outcomes are returned, not raised), else None."""
    if not name.endswith("s") or not isinstance(result, list) or not result:
        return None
    if all(isinstance(o, Exception) and not isinstance(o, LeaseLost) for o in result):
        first: Exception = result[0]
        return first
    return None


async def main(dsn: str, schema: str, lease: float, slot: int) -> None:
    from flows_pg import PostgresStore

    os.environ.update(CHAOS_SCHEMA=schema, CHAOS_LEASE=str(lease))
    if os.environ.get("CHAOS_STORE") == "citus":
        from flows_citus import CitusStore

        store: PostgresStore = CitusStore(dsn, schema=schema, max_size=8)
    else:
        store = PostgresStore(dsn, schema=schema, max_size=8)
    watch = Watch()
    watch.wrap(store)
    worker = flows.Worker(
        store,
        workflows=list(WORKFLOWS.values()),
        activities=ACTIVITIES,
        concurrency=16,
        poll_interval=0.2,
        lease=timedelta(seconds=lease),
        worker_id=f"chaos-{slot}-{os.getpid()}",
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop(5)))

    async def stats() -> None:
        while True:
            await asyncio.sleep(1.0)
            emit("stats", writes=watch.writes, errors=watch.errors, **counters(worker))

    ticker = asyncio.ensure_future(stats())
    emit("ready", slot=slot)
    try:
        await worker.run()
    finally:
        ticker.cancel()
        emit("stats", writes=watch.writes, errors=watch.errors, final=True, **counters(worker))
        await store.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    dsn_arg, schema_arg, lease_arg, slot_arg = sys.argv[1:5]
    os.environ.setdefault("CHAOS_EXEC_DSN", dsn_arg)
    asyncio.run(main(dsn_arg, schema_arg, float(lease_arg), int(slot_arg)))
