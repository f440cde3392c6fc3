"""Running workflows keep every guarantee while Citus moves their shards.

Two scenarios, each with a worker (``flows.Worker``, in-process) running a stream of
30-60 workflows (three activities that record each execution in a plain
coordinator-local table, a 0.3 s durable timer and a signal; every 5th workflow gets its
signal only after the last move, so it sits on a moving shard through all of them)
while shards move underneath it:

* ``test_moves_between_workers``: every shard group of the Flows schema on one worker is
  moved to the other with ``citus_move_shard_placement``, then moved back. Runs on any
  cluster with two workers (FLOWS_CITUS_DSN and Docker included).
* ``test_add_node_rebalance_and_drain``: the documented scale-out and scale-in: a new
  PostgreSQL node (``LocalCitusCluster.add_worker()``: initdb, same settings, CREATE
  EXTENSION citus) is registered with ``citus_add_node``, ``citus_rebalance_start()``
  moves shards onto it in the background (polled with ``citus_rebalance_status()``), then
  ``citus_drain_node`` moves them all off again and ``citus_remove_node`` removes it.
  It needs a cluster this module starts itself; with FLOWS_CITUS_DSN or Docker it skips.

Both end with the same checks: every workflow completed with its own output, each
activity scheduled once and its result recorded exactly once in the history,
``assert_history_invariants`` and ``assert_record_matches`` for every history, every
activity executed at least once (re-executions are counted and printed), no task or
inbox row left, no workflow parked, and the shards really moved (``citus_shards``).
Timings, what was in flight during each move, how long the worker's store calls stalled
and the worker's counters are printed (``pytest -s``).

Shard transfer mode: ``block_writes`` for the moves, the rebalancer and the drain
(``$FLOWS_CITUS_SHARD_TRANSFER_MODE`` overrides it). The shard group is copied while
writes to it are blocked: a commit, claim or signal that writes to the moving shard
group waits (0.3-0.5 s per move here; it grows with the shard's size), then goes on;
reads go on. The worker's calls that visit every shard key (claim, fire_due_timers) may
wait for several moves in a row (up to ~1.2 s here). Router queries are planned from the
coordinator's metadata, which the move updates, so a write that waited goes to the new
node. Nothing fails, but for one thing: Citus's distributed deadlock detection may
cancel a worker transaction that waits for a moving shard group while holding row locks
on another (DeadlockDetected, seen in a few rebalances); the worker retries it
(``store_errors``), no guarantee is affected.

Known Citus limitation, both modes (``test_row_lock_does_not_survive_a_shard_move``
shows it without Flows): ``SELECT .. FOR UPDATE`` is a read to Citus, so a move does not
wait for it and does not block it. A transaction whose first statement were such a lock
could lock the row on the old placement, wait for the move at its first write, and
finish on the new placement without any lock, unserialized against a concurrent
transaction there (an earlier CitusStore did this: a workflow-task commit and a timer
firing ran at once, and a workflow was stuck for good, 3 times in 33 runs of a heavier
variant of this test). So every CitusStore write transaction begins with a write (its
locks are no-op UPDATEs: FENCE_LOCK, INBOX_LOCK): a router write takes Citus's shard
metadata lock until the transaction ends, so a move waits for the transaction, or the
transaction waits for the move and runs wholly on the new node.

Why not logical replication (``auto``, Citus' default, or ``force_logical``), which
blocks writes only for the final catch-up? On this machine (Citus 13.2.2, PostgreSQL
15.20, every Flows table has a primary key, ``wal_level = logical``) it also lost
committed writes, in roughly one move in 20 under this workload: transactions that had
committed on the source placement in the last ~100 ms before the move blocked writes for
its final catch-up (30-90 ms before, in the two cases traced; Citus was building the
secondary indexes on the target then) were missing on the new placement, with no error
in any log. Flows then saw a started workflow vanish (WorkflowNotFound) and workflows
stuck running; an activity executed again and a signal failing with a duplicate key
were seen too, which the limitation above may explain as well. Traced with
statement logs of the source and target nodes, and by comparing the old placement (kept
by the deferred drop) with the new one right after each move. Simpler two-table
workloads without Flows (pipelined transactions, CTEs, INSERT .. SELECT, ON CONFLICT,
secondary indexes) did not reproduce it in ~70 moves, so its cause is not pinned down.
``FLOWS_CITUS_SHARD_TRANSFER_MODE=auto`` runs these tests that way (they then fail more
often). Until that is understood, move and rebalance the shards of a Flows schema with
``shard_transfer_mode => 'block_writes'``.

The module starts its own small cluster (``LocalCitusCluster``, coordinator and two
workers, from ``find_citus_pg_bin()``) so that moving shards and adding a node cannot
disturb the session's cluster and the tests running on it. Its nodes run with
``citus.background_task_queue_interval = 100ms`` (the background rebalancer otherwise
waits up to 5 s before starting a job and again between its tasks) and, for logical
moves, ``wal_retrieve_retry_interval = 200ms`` (PostgreSQL 15's logical replication
launcher starts at most one apply worker per node per that interval, 5 s by default, so
back-to-back logical moves onto the same node each waited 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psycopg
import pytest
from conftest_citus import citus_test_dsn, drop_citus_store, local_citus_pg_bin, make_citus_store
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import flows_core as flows
from flows_citus import CitusStore
from flows_citus._cluster import LocalCitusCluster
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    SignalReceived,
    TimerFired,
    TimerStarted,
)
from tests.contract.checks import assert_history_invariants, assert_record_matches

pytestmark = [pytest.mark.citus, pytest.mark.slow]

T = TypeVar("T")

TRANSFER_MODE = os.environ.get("FLOWS_CITUS_SHARD_TRANSFER_MODE", "block_writes")
FLOWS_TABLES = ("workflows", "history", "inbox", "tasks", "workers")
"""The distributed, colocated tables of a Flows schema (``layout`` is a reference table)."""

MIN_WORKFLOWS = 30
MAX_WORKFLOWS = 60
BURST = 12
"""Workflows started before the first move, so that work is in flight when it begins."""
START_EVERY = 0.2
SIGNAL_AFTER = 0.5
HELD_EVERY = 5
"""Every 5th workflow gets its signal only after the last move: it sits on a moving shard
(timer fired, waiting for the signal) through every move, and must resume afterwards."""
MOVE_TIMEOUT = 30.0
RESULT_TIMEOUT = 30.0
FAST_MOVES = {
    "citus.background_task_queue_interval": "100ms",
    "wal_retrieve_retry_interval": "200ms",
}
"""Settings of the module's own cluster (every node, the added one too); see above."""


# --- the cluster ------------------------------------------------------------------------


@dataclass
class Target:
    dsn: str
    cluster: LocalCitusCluster | None
    """The module's own cluster; None when the DSN is FLOWS_CITUS_DSN's or Docker's."""
    where: str


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A Citus cluster of our own (coordinator + 2 workers) when a local PostgreSQL has
    Citus and FLOWS_CITUS_DSN is not set; otherwise the session's ``citus_dsn``."""
    pg_bin = None if os.environ.get("FLOWS_CITUS_DSN") else local_citus_pg_bin()
    if pg_bin is None or isinstance(pg_bin, str):
        # FLOWS_CITUS_DSN, Docker, or nothing (citus_dsn then skips, or fails on REQUIRE).
        where = "FLOWS_CITUS_DSN" if os.environ.get("FLOWS_CITUS_DSN") else "the session cluster"
        yield Target(request.getfixturevalue("citus_dsn"), None, where)
        return
    base = Path(tempfile.mkdtemp(prefix="flows-citus-rebalance-", dir="/tmp"))
    cluster = LocalCitusCluster(base, pg_bin, workers=2, settings=FAST_MOVES)
    try:
        cluster.start()
        yield Target(citus_test_dsn(cluster.dsn), cluster, f"a cluster of our own in {base}")
    finally:
        cluster.stop(delete=True)


async def admin(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A connection for the cluster operations, each bounded by a statement timeout."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(f"SET statement_timeout = '{int(MOVE_TIMEOUT)}s'")
    return conn


async def placements(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[int, Any]:
    """shard id -> (table, (host, port)) of every distributed Flows table's shard."""
    cur = await conn.execute(
        "SELECT c.relname::text, s.shardid, s.nodename::text, s.nodeport"
        " FROM citus_shards s JOIN pg_class c ON c.oid = s.table_name"
        " WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)"
        " AND s.citus_table_type = 'distributed' ORDER BY s.shardid",
        [schema],
    )
    return {sid: (table, (host, port)) for table, sid, host, port in await cur.fetchall()}


def nodes_of(shards: dict[int, Any], table: str) -> Counter[tuple[str, int]]:
    return Counter(node for t, node in shards.values() if t == table)


def assert_colocated(shards: dict[int, Any]) -> None:
    """Every table's shards sit on the same nodes as the workflows table's."""
    expected = nodes_of(shards, "workflows")
    assert sum(expected.values()) > 0, shards
    for table in FLOWS_TABLES:
        assert nodes_of(shards, table) == expected, (table, shards)


async def active_workers(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, int]]:
    cur = await conn.execute(
        "SELECT nodename::text, nodeport FROM pg_dist_node WHERE groupid <> 0"
        " AND isactive AND noderole = 'primary' AND shouldhaveshards ORDER BY nodeid"
    )
    return [(h, p) for h, p in await cur.fetchall()]


async def move(
    conn: psycopg.AsyncConnection[Any], shard: int, src: tuple[str, int], dst: tuple[str, int]
) -> None:
    await conn.execute(
        "SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, shard_transfer_mode => %s)",
        [shard, *src, *dst, TRANSFER_MODE],
    )


async def wait_for_job(conn: psycopg.AsyncConnection[Any], job: int) -> str:
    """Poll the background rebalance job until it ends; its final state."""
    deadline = time.monotonic() + MOVE_TIMEOUT
    while True:
        cur = await conn.execute(
            "SELECT state::text FROM citus_rebalance_status() WHERE job_id = %s", [job]
        )
        row = await cur.fetchone()
        state = str(row[0]) if row else "missing"
        if state in ("finished", "failed", "cancelled", "missing"):
            if state != "finished":
                cur = await conn.execute(
                    "SELECT message FROM pg_dist_background_task WHERE job_id = %s", [job]
                )
                print(f"  rebalance job {job} {state}: {await cur.fetchall()}")
            return state
        if time.monotonic() > deadline:
            await conn.execute("SELECT citus_rebalance_stop()")
            raise AssertionError(f"rebalance job {job} still {state} after {MOVE_TIMEOUT} s")
        await asyncio.sleep(0.1)


async def remove_node(conn: psycopg.AsyncConnection[Any], node: tuple[str, int]) -> None:
    """Drop the moved-away shards' leftovers (deferred drop), then the node itself."""
    await conn.execute("CALL citus_cleanup_orphaned_resources()")
    await conn.execute("SELECT citus_remove_node(%s, %s)", [*node])


# --- the workload -----------------------------------------------------------------------


class EffectIn(msgspec.Struct):
    workflow_id: str
    step: int


def make_app(pool: AsyncConnectionPool[Any], schema: str) -> tuple[Any, Any]:
    """The activity and the workflow, the activity recording each execution in
    ``<schema>.rebalance_effects`` (a plain table on the coordinator)."""
    insert = sql.SQL("INSERT INTO {} (workflow_id, step, at) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema, "rebalance_effects")
    )

    @flows.activity(
        "rebalance-effect", retry=flows.RetryPolicy(initial_interval=timedelta(seconds=0.1))
    )
    async def effect(inp: EffectIn) -> int:
        async with pool.connection() as conn:
            await conn.execute(insert, (inp.workflow_id, inp.step, time.time()))
        await asyncio.sleep(0.02)
        return inp.step + 1

    @flows.workflow("rebalance-wf")
    async def workflow(ctx: flows.WorkflowContext, n: int) -> list[int]:
        a = await ctx.execute(effect, EffectIn(workflow_id=ctx.workflow_id, step=0))
        await ctx.sleep(timedelta(seconds=0.3))
        go = await ctx.wait_for_signal("go", int)
        b = await ctx.execute(effect, EffectIn(workflow_id=ctx.workflow_id, step=1))
        c = await ctx.execute(effect, EffectIn(workflow_id=ctx.workflow_id, step=2))
        return [n, a + b + c, go]

    return effect, workflow


def expected_output(n: int) -> list[int]:
    return [n, 1 + 2 + 3, 10 * n + 1]


@dataclass
class Window:
    """One cluster operation: when, and what was in flight when it began."""

    label: str
    start: float
    end: float = 0.0
    in_flight: int = 0
    tasks: int = 0


@dataclass
class Call:
    """One store call of the worker."""

    name: str
    start: float
    seconds: float
    outcome: str


TIMED = ("claim", "commit_workflow_task", "complete_activity", "fire_due_timers", "release")


def time_store_calls(store: Any, calls: list[Call]) -> None:
    """Record the duration and outcome of the worker's main store calls."""
    for name in TIMED:
        original = getattr(store, name)

        async def timed(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            start, outcome = time.time(), "ok"
            try:
                return await _original(*args, **kw)
            except BaseException as exc:
                outcome = type(exc).__name__
                raise
            finally:
                calls.append(Call(_name, start, time.time() - start, outcome))

        setattr(store, name, timed)


class _Collect(logging.Handler):
    """Keeps the worker's warnings (store errors it retried, leases lost) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


@dataclass
class Load:
    """Workflows started and signalled while moves run, and what happened meanwhile."""

    dsn: str
    schema: str
    engine: flows.Engine
    workflow: Any
    worker: flows.Worker
    started: dict[str, int] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    client_errors: list[str] = field(default_factory=list)
    worker_warnings: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    moves_done: asyncio.Event = field(default_factory=asyncio.Event)
    burst_started: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Future[Any]] = field(default_factory=list)

    async def client(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """A client call, retried after a connection-level error (counted) until it is
        answered; WorkflowAlreadyExists after a retried start means the first attempt
        committed. (A retried signal whose first attempt committed unseen would be sent
        twice: the leftover inbox row would fail the test, so none went unnoticed.)"""
        deadline = time.monotonic() + MOVE_TIMEOUT
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except flows.WorkflowAlreadyExists:
                if attempt == 1:
                    raise
                return None
            except (psycopg.OperationalError, OSError) as exc:
                self.client_errors.append(f"{what}: {exc!r}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} kept failing: {exc!r}") from exc
                await asyncio.sleep(0.05)

    async def feed(self) -> None:
        """BURST workflows at once, then one every START_EVERY s while moves run
        (at least MIN_WORKFLOWS, at most MAX_WORKFLOWS)."""
        n = 0
        while n < MAX_WORKFLOWS and (n < MIN_WORKFLOWS or not self.moves_done.is_set()):
            wf_id = f"rb-{n}"
            await self.client(
                f"start {wf_id}",
                lambda wf_id=wf_id, n=n: self.engine.start(self.workflow, n, workflow_id=wf_id),
            )
            self.started[wf_id] = n
            self.tasks.append(asyncio.ensure_future(self._signal_later(wf_id, n)))
            self.tasks.append(asyncio.ensure_future(self._await_result(wf_id)))
            n += 1
            if n >= BURST:
                self.burst_started.set()
                await asyncio.sleep(START_EVERY)
        self.burst_started.set()

    async def _signal_later(self, wf_id: str, n: int) -> None:
        if n % HELD_EVERY == 0:
            await self.moves_done.wait()
        else:
            await asyncio.sleep(SIGNAL_AFTER)
        await self.client(
            f"signal {wf_id}", lambda: self.engine.signal(wf_id, "go", expected_output(n)[2])
        )

    async def _await_result(self, wf_id: str) -> None:
        with contextlib.suppress(Exception):  # checked again, and reported, by check()
            await self.engine.wait_for_result(wf_id, timeout=RESULT_TIMEOUT + MOVE_TIMEOUT)
            self.done_at[wf_id] = time.time()

    @contextlib.asynccontextmanager
    async def window(self, label: str, conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
        """Times a cluster operation and notes what was in flight when it began."""
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.schema, "tasks"))
        row = await (await conn.execute(query)).fetchone()
        w = Window(label, time.time(), tasks=row[0] if row else 0)
        w.in_flight = len(self.started) - len(self.done_at)
        try:
            yield
        finally:
            w.end = time.time()
            self.windows.append(w)

    async def check(self) -> None:
        """Every guarantee, after the moves; prints the report."""
        await asyncio.wait_for(self.tasks[0], MOVE_TIMEOUT)  # the feeder: no more tasks
        await asyncio.wait_for(asyncio.gather(*self.tasks), RESULT_TIMEOUT + MOVE_TIMEOUT)
        tenant = self.engine.tenant_for(None)
        for wf_id, n in self.started.items():
            output = await self.engine.wait_for_result(wf_id, timeout=RESULT_TIMEOUT)
            assert output == expected_output(n), wf_id
            history = await self.engine.history(wf_id)
            assert_history_invariants(history)
            assert_record_matches(await self.engine.store.get_workflow(tenant, wf_id), history)
            scheduled = Counter(e.seq for e in history if isinstance(e, ActivityScheduled))
            recorded = Counter(e.seq for e in history if isinstance(e, ActivityCompleted))
            assert len(scheduled) == 3, history
            assert set(scheduled.values()) == {1}, f"{wf_id}: a step was scheduled twice"
            assert recorded == scheduled, f"{wf_id}: a result was not recorded exactly once"
            assert sum(isinstance(e, TimerStarted) for e in history) == 1, history
            assert sum(isinstance(e, TimerFired) for e in history) == 1, history
            signals = [e.name for e in history if isinstance(e, SignalReceived)]
            assert signals == ["go"], history

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            left = {}
            for table in ("tasks", "inbox"):
                q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.schema, table))
                row = await (await conn.execute(q)).fetchone()
                left[table] = row[0] if row else -1
            cur = await conn.execute(
                sql.SQL("SELECT workflow_id, step, at FROM {}").format(
                    sql.Identifier(self.schema, "rebalance_effects")
                )
            )
            effects = await cur.fetchall()
        assert left == {"tasks": 0, "inbox": 0}, f"rows left behind: {left}"
        runs = Counter((w, step) for w, step, _ in effects)
        missing = [(w, s) for w in self.started for s in range(3) if runs[(w, s)] < 1]
        assert not missing, f"activities never executed: {missing[:5]}"
        assert self.worker.counters["parked"] == 0, self.worker.counters

        moves = [w for w in self.windows if w.label.startswith(MOVING)]
        print(f"\n  {len(self.started)} workflows; shard_transfer_mode {TRANSFER_MODE!r}:")
        for w in self.windows:
            active = sum(w.start <= at <= w.end for _, _, at in effects)
            finished = sum(w.start <= at <= w.end for at in self.done_at.values())
            during = [c for c in self.calls if c.start < w.end and c.start + c.seconds > w.start]
            slowest = max(during, key=lambda c: c.seconds, default=None)
            slow = f"{slowest.name} {slowest.seconds:.2f} s" if slowest else "-"
            print(
                f"    {w.label:<44} {w.end - w.start:5.2f} s; at its start {w.in_flight}"
                f" workflows unfinished, {w.tasks} tasks; meanwhile {active} activity runs,"
                f" {finished} workflows done, {len(during)} worker store calls"
                f" (slowest: {slow})"
            )
        reruns = {k: v for k, v in runs.items() if v > 1}
        failed = Counter(c.outcome for c in self.calls if c.outcome != "ok")
        print(f"  activities executed more than once: {sorted(reruns.items())}")
        print(f"  worker counters: {self.worker.counters}")
        print(f"  worker store calls: {len(self.calls)}, failed: {dict(failed)}")
        print(f"  worker warnings: {len(self.worker_warnings)}")
        for warning in self.worker_warnings[:10]:
            print(f"    {warning}")
        print(f"  client call errors (retried): {len(self.client_errors)}")
        for error in self.client_errors[:10]:
            print(f"    {error}")
        assert moves, self.windows
        assert all(w.in_flight > 0 for w in moves), "a move found no work in flight"
        overlapping = [
            c
            for w in moves
            for c in self.calls
            if c.start < w.end and c.start + c.seconds > w.start
        ]
        assert overlapping, "the worker made no store call while shards moved"


MOVING = ("move", "citus_rebalance", "citus_drain")
"""Labels of the windows in which shards move."""


@contextlib.asynccontextmanager
async def running_load(dsn: str) -> AsyncIterator[Load]:
    """A Flows schema on ``dsn`` with a worker running; the feeder runs until
    ``load.moves_done`` is set (and MIN_WORKFLOWS were started)."""
    store = await make_citus_store(dsn, max_size=20)
    # Spread the workflows over every shard key (make_citus_store shards by tenant).
    await store.migrate(shards=16, sharding="workflow")
    client = CitusStore(dsn, schema=store.schema, max_size=10)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=False
    )
    worker: flows.Worker | None = None
    worker_task: asyncio.Future[None] | None = None
    handler = _Collect()
    logging.getLogger("flows").addHandler(handler)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (workflow_id text NOT NULL, step int NOT NULL,"
                    " at double precision NOT NULL)"
                ).format(sql.Identifier(store.schema, "rebalance_effects"))
            )
        await pool.open()
        await client.open()
        effect, workflow = make_app(pool, store.schema)
        worker = flows.Worker(
            store,
            workflows=[workflow],
            activities=[effect],
            concurrency=16,
            poll_interval=0.1,
            lease=timedelta(seconds=3),
        )
        load = Load(dsn, store.schema, flows.Engine(client), workflow, worker)
        handler.records = load.worker_warnings
        time_store_calls(store, load.calls)
        worker_task = asyncio.ensure_future(worker.run())
        load.tasks.append(asyncio.ensure_future(load.feed()))
        await asyncio.wait_for(load.burst_started.wait(), MOVE_TIMEOUT)
        await asyncio.sleep(0.2)  # the burst's first steps under way
        yield load
    finally:
        if worker is not None and worker_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.stop(), 15)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(worker_task, 5)
        logging.getLogger("flows").removeHandler(handler)
        with contextlib.suppress(Exception):
            await client.close()
        with contextlib.suppress(Exception):
            await pool.close()
        await drop_citus_store(store)


# --- the tests --------------------------------------------------------------------------


async def test_moves_between_workers(target: Target) -> None:
    """Every Flows shard group on one worker moves to the other, then back."""
    t0 = time.monotonic()
    async with await admin(target.dsn) as conn:
        workers = await active_workers(conn)
        if len(workers) < 2:
            pytest.skip(f"moving shards needs two workers; {target.where} has {len(workers)}")
        async with running_load(target.dsn) as load:
            try:
                before = await placements(conn, load.schema)
                assert_colocated(before)
                holding = nodes_of(before, "workflows")
                src = max(workers, key=lambda n: holding[n])
                dst = next(n for n in workers if n != src)
                groups = [s for s, (t, node) in before.items() if t == "workflows" and node == src]
                for shard in groups:
                    async with load.window(f"move group {shard} {src[1]} -> {dst[1]}", conn):
                        await move(conn, shard, src, dst)
                moved = await placements(conn, load.schema)
                assert_colocated(moved)
                assert nodes_of(moved, "workflows")[src] == 0, moved
                assert all(moved[s][1] == dst for s in groups), moved
                for shard in groups:
                    async with load.window(f"move group {shard} {dst[1]} -> {src[1]}", conn):
                        await move(conn, shard, dst, src)
                back = await placements(conn, load.schema)
                assert back == before, (before, back)
            finally:
                load.moves_done.set()
            await load.check()
    print(f"  {len(groups)} shard groups there and back; test {time.monotonic() - t0:.1f} s")


async def test_add_node_rebalance_and_drain(target: Target) -> None:
    """Scale out (add a node, rebalance onto it) and back in (drain it, remove it)."""
    cluster = target.cluster
    if cluster is None:
        pytest.skip(
            "adding a node needs a PostgreSQL this test can initdb and start (a local"
            f" Citus install, FLOWS_CITUS_DSN unset); {target.where} is used here, so"
            " only test_moves_between_workers runs on it"
        )
    t0 = time.monotonic()
    async with await admin(target.dsn) as conn, running_load(target.dsn) as load:
        new: tuple[str, int] | None = None
        try:
            before = await placements(conn, load.schema)
            async with load.window("new node: initdb, start, CREATE EXTENSION", conn):
                added = await asyncio.to_thread(cluster.add_worker)
            async with load.window(f"citus_add_node {added[1]}", conn):
                await conn.execute("SELECT citus_add_node(%s, %s)", [*added])
                new = added
            async with load.window("citus_rebalance_start() until finished", conn):
                cur = await conn.execute(
                    "SELECT citus_rebalance_start(shard_transfer_mode => %s)", [TRANSFER_MODE]
                )
                row = await cur.fetchone()
                job = row[0] if row else None
                assert job is not None, "the rebalancer planned no move"
                state = await wait_for_job(conn, job)
            assert state == "finished", f"rebalance job {job} ended {state}"
            spread = await placements(conn, load.schema)
            assert_colocated(spread)
            assert nodes_of(spread, "workflows")[new] > 0, f"no Flows shard on {new}: {spread}"
            changed = sorted(s for s in before if before[s][1] != spread[s][1])
            assert all(spread[s][1] == new for s in changed), (before, spread)

            async with load.window(f"citus_drain_node {new[1]}", conn):
                await conn.execute(
                    "SELECT citus_drain_node(%s, %s, shard_transfer_mode => %s)",
                    [*new, TRANSFER_MODE],
                )
            drained = await placements(conn, load.schema)
            assert_colocated(drained)
            assert nodes_of(drained, "workflows")[new] == 0, drained
            async with load.window(f"citus_remove_node {new[1]}", conn):
                await remove_node(conn, new)
            new = None
        finally:
            load.moves_done.set()
            if new is not None:  # a failure above: leave the cluster as the other test expects
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT citus_rebalance_stop()")
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT citus_drain_node(%s, %s)", [*new])
                with contextlib.suppress(Exception):
                    await remove_node(conn, new)
        await load.check()
    print(
        f"  the rebalance moved {len(changed)} of {len(spread)} Flows shards to {added};"
        f" test {time.monotonic() - t0:.1f} s"
    )


@pytest.mark.xfail(
    strict=True,
    reason="Citus limitation: a row lock taken by SELECT .. FOR UPDATE before a shard move"
    " does not hold after it (see the module docstring); if this passes, Citus changed",
)
async def test_row_lock_does_not_survive_a_shard_move(target: Target) -> None:
    """Without Flows: X locks a row (SELECT .. FOR UPDATE), the row's shard moves
    (block_writes), then X and Y each add one to the row. Correct: 2 (the move waits
    for X, or Y waits for X's lock). On Citus 13.2 the move goes ahead, Y is not blocked
    on the new node, and X's update, decided on its locked read, overwrites Y's: 1."""
    schema = f"rl_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    table = sql.Identifier(schema, "counter")
    async with await admin(target.dsn) as conn:
        workers = await active_workers(conn)
        if len(workers) < 2:
            pytest.skip(f"moving shards needs two workers; {target.where} has {len(workers)}")
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        x = await psycopg.AsyncConnection.connect(target.dsn, autocommit=True)
        y = await psycopg.AsyncConnection.connect(target.dsn, autocommit=True)
        try:
            await conn.execute(
                sql.SQL("CREATE TABLE {} (k text PRIMARY KEY, n int NOT NULL)").format(table)
            )
            await conn.execute(
                "SELECT create_distributed_table(%s, 'k', shard_count => 2,"
                " colocate_with => 'none')",
                [f"{schema}.counter"],
            )
            await conn.execute(sql.SQL("INSERT INTO {} VALUES ('x', 0)").format(table))
            cur = await conn.execute(
                "SELECT s.shardid, s.nodename::text, s.nodeport FROM citus_shards s"
                " WHERE s.shardid = get_shard_id_for_distribution_column(%s, 'x')",
                [f"{schema}.counter"],
            )
            row = await cur.fetchone()
            assert row is not None
            shard, src = row[0], (row[1], row[2])
            dst = next(n for n in workers if n != src)
            await x.execute("BEGIN")
            cur = await x.execute(
                sql.SQL("SELECT n FROM {} WHERE k = 'x' FOR UPDATE").format(table)
            )
            locked = await cur.fetchone()
            assert locked is not None
            await conn.execute("SET statement_timeout = '3s'")
            with contextlib.suppress(psycopg.errors.QueryCanceled):  # the move waited: right
                await conn.execute(
                    "SELECT citus_move_shard_placement(%s, %s, %s, %s, %s,"
                    " shard_transfer_mode => 'block_writes')",
                    [shard, *src, *dst],
                )
            await y.execute("SET statement_timeout = '10s'")
            y_update = asyncio.ensure_future(
                y.execute(sql.SQL("UPDATE {} SET n = n + 1 WHERE k = 'x'").format(table))
            )
            await asyncio.sleep(0.2)  # Y either waits for X's lock (right) or is done
            await x.execute(
                sql.SQL("UPDATE {} SET n = %s WHERE k = 'x'").format(table), [locked[0] + 1]
            )
            await x.execute("COMMIT")
            await y_update
            cur = await y.execute(sql.SQL("SELECT n FROM {} WHERE k = 'x'").format(table))
            final = await cur.fetchone()
            assert final == (2,), f"lost update: n = {final} after two increments"
        finally:
            await x.close()
            await y.close()
            await conn.execute("SET statement_timeout = '30s'")
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
