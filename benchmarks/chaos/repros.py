"""Minimal reproductions of library bugs found by the chaos suite.

``python -m benchmarks.chaos.repros`` runs each and says whether it still reproduces.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from flows_core.events import WorkflowCancelledEvent, decode_events, encode_event


def cancelled_output_does_not_decode() -> str | None:
    """A workflow that catches Cancelled, compensates and returns a value ends with
    ``WorkflowCancelledEvent(output=...)``; its stored history can no longer be decoded
    (``Engine.history``, ``flows history`` ...): msgspec does not take ``msgspec.Raw`` in
    a union, so ``output: msgspec.Raw | None`` only accepts null."""
    event = WorkflowCancelledEvent(output=msgspec.Raw(b'"compensated"'), at=datetime.now(UTC))
    stored = b"[" + encode_event(event) + b"]"
    try:
        decode_events(stored)
    except msgspec.ValidationError as exc:
        return f"decode_events({stored!r}) raises ValidationError: {exc}"
    return None


def pipeline_prepare_poisons_connection() -> str | None:
    """Found by the Citus chaos run (psycopg 3.3.x). ``CitusStore._each_key`` runs the same
    statement once per shard key in one pipeline (flows_citus/_store.py, ``_pipelined``).
    When an execution fails (a worker node is down) and a later execution of the same
    statement in that pipeline crosses psycopg's ``prepare_threshold``, psycopg records the
    statement as prepared although the server skipped its Parse; from then on every use
    of it on that connection fails with InvalidSqlStatementName ``prepared statement
    "_pg3_0" does not exist``, until the pool drops the connection (seen for up to 25 s,
    store errors and backoff in a worker, slow recovery after a node restart)."""
    import asyncio
    import tempfile
    from pathlib import Path

    import psycopg

    from flows_pg import embedded

    async def once(dsn: str) -> str | None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            query = "SELECT 1 / %s::int"
            try:
                async with conn.pipeline():
                    for divisor in (1, 0, 1, 1, 1, 1, 1, 1):  # the 2nd fails
                        await conn.execute(query, (divisor,))
            except psycopg.errors.DivisionByZero:
                pass
            try:
                await conn.execute(query, (1,))
            except psycopg.Error as exc:
                return repr(exc)
        return None

    async def go(dsn: str) -> str | None:
        tries = 20  # it depends on when psycopg flushes the pipeline: not every time
        found = [r for r in [await once(dsn) for _ in range(tries)] if r is not None]
        if found:
            return (
                f"{len(found)} of {tries} connections poisoned after a failed pipeline: {found[0]}"
            )
        return None

    data = Path(tempfile.mkdtemp(prefix="flows-repro-")) / "pg"
    dsn = embedded.ensure_started(data)
    try:
        return asyncio.run(go(dsn))
    finally:
        embedded.stop(data, delete=True)


def idle_wait_store_error_kills_worker() -> str | None:
    """Found by the Citus chaos run: ``Worker.run`` calls ``_idle_wait()`` outside its
    store-error handling (flows_core/_worker.py, ``if not progressed: await
    self._idle_wait()``), and ``_idle_wait`` calls ``store.next_due``; one failing
    ``next_due`` (on Citus: a worker node down, the per-key pipeline fails) ends
    ``Worker.run()`` with that exception, and the worker process exits."""
    import asyncio
    from collections.abc import Sequence

    import flows_core as flows
    from flows_memory import MemoryStore

    class FailingOnce(MemoryStore):
        failed = False

        async def next_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("a node is down")
            return await super().next_due(shard_keys)

    @flows.activity("repro-noop")
    async def noop(x: int) -> int:
        return x

    async def go() -> str | None:
        worker = flows.Worker(FailingOnce(), activities=[noop], poll_interval=0.05)
        running = asyncio.ensure_future(worker.run())
        await asyncio.sleep(0.5)
        if running.done():
            return f"Worker.run() ended with {running.exception()!r}"
        await worker.stop()
        await running
        return None

    return asyncio.run(go())


REPROS = [
    cancelled_output_does_not_decode,
    pipeline_prepare_poisons_connection,
    idle_wait_store_error_kills_worker,
]


def main() -> int:
    import logging

    logging.getLogger("psycopg").setLevel(logging.ERROR)
    found = 0
    for repro in REPROS:
        result = repro()
        found += result is not None
        print(f"{repro.__name__}: {'REPRODUCES: ' + result if result else 'fixed'}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
