"""The chaos driver: starts the workload, injects faults, then checks every outcome.

One embedded PostgreSQL in a temporary data directory (Unix socket only), so it can be
stopped and started again on the same data; ``workers`` worker processes
(``benchmarks.chaos.worker``); the driver itself starts the workflows, sends the
signals and cancel requests, and injects faults:

* SIGKILL of a random worker process at random moments (respawned 0-1 s later);
* ``pg_terminate_backend`` of the workers' connections (all of them, or one worker's);
* PostgreSQL restarts (``embedded.stop`` then ``embedded.ensure_started``, same data).

The heartbeating workflow runs in a quiet window (no fault of any kind) so that its
"runs exactly once" can be asserted strictly; everything else runs under fire.
Then every workflow must have reached the state and output its parameters dictate,
every history must pass ``assert_history_invariants`` and ``assert_record_matches``,
every activity result must be recorded exactly once, no task may be left, every
worker that lived through a restart must have logged store errors and then committed,
and ``flows fsck`` (``flows_core._fsck.fsck``) over the whole store must find nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import msgspec.structs
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import flows_core as flows
from flows_core._fsck import fsck
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    SignalReceived,
    StepCancelled,
    TimerFired,
    decode_event,
)

from .app import (
    EXEC_TABLE,
    KINDS,
    TX_EFFECTS_TABLE,
    WEIGHTS,
    WORKFLOWS,
    Params,
    create_exec_table_sql,
    expected,
    make_params,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "chaos"
TERMINAL = ("completed", "failed", "cancelled")


def _checks() -> Any:
    """tests/contract/checks.py (the contract suite's history invariants)."""
    path = str(REPO / "tests" / "contract")
    if path not in sys.path:
        sys.path.insert(0, path)
    import checks

    return checks


@dataclass
class Config:
    workflows: int = 1200
    start_window: float = 75.0  # seconds over which the workflows are started
    workers: int = 3
    lease: float = 2.0
    restarts: int = 3
    kill_every: tuple[float, float] = (3.0, 8.0)  # uniform gap between SIGKILLs
    terminate_every: tuple[float, float] = (3.0, 7.0)  # gap between pg_terminate_backend
    down_time: tuple[float, float] = (0.5, 2.0)  # PostgreSQL stays down this long
    drain_timeout: float = 120.0  # after the start window, for everything to finish
    max_latency: float = 90.0  # start -> terminal bound for every workflow
    seed: int = 1
    data_dir: str | None = None  # default: a new temporary directory, deleted after
    keep: bool = False  # keep the data directory and logs
    verbose: bool = True
    label: str = "PostgreSQL"  # what the report's title says is under fire

    @classmethod
    def reduced(cls, **overrides: Any) -> Config:
        base: dict[str, Any] = dict(
            workflows=150,
            start_window=55.0,
            restarts=2,
            kill_every=(3.0, 7.0),
            terminate_every=(3.0, 6.0),
            drain_timeout=60.0,
            max_latency=60.0,
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class Incarnation:
    slot: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    killed: float | None = None  # when we SIGKILLed it
    exited: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Restart:
    down_at: float
    up_at: float = 0.0
    first_commit: float | None = None  # seconds after up_at, any worker
    slowest_commit: float | None = None  # seconds after up_at, slowest surviving worker
    survivors: int = 0  # worker processes running before it and still 5 s after
    recovered: int = 0  # of which committed again
    saw_errors: int = 0  # of which logged a store error during the outage


@dataclass
class Stats:
    faults: Counter[str] = field(default_factory=Counter)
    restarts: list[Restart] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    driver_retries: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    numbers: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, str, Any]] = field(default_factory=list)  # (when, kind, target)
    sections: list[str] = field(default_factory=list)  # extra report tables (net, Citus)

    def fail(self, message: str) -> None:
        self.failures.append(message)


class Chaos:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.stats = Stats()
        self.plan: list[tuple[float, str, Params]] = []
        self.params: dict[str, Params] = {}
        self.signals_sent: Counter[str] = Counter()  # signal attempts (incl. ambiguous retries)
        self.tx_effects: Counter[tuple[str, int]] = Counter()
        self.incarnations: list[Incarnation] = []
        self.slots: dict[int, Incarnation] = {}
        self.quiet = False
        self.fault_lock = asyncio.Lock()
        self.done = asyncio.Event()
        self.background: set[asyncio.Task[Any]] = set()
        self.t0 = 0.0
        self.dsn = ""
        self.tmp: Path | None = None
        self.worker_env: dict[str, str] = {}  # added to the worker processes' environment

    # -- helpers --

    def log(self, message: str) -> None:
        if self.cfg.verbose:
            print(f"[chaos {time.time() - self.t0:7.2f}s] {message}", flush=True)

    def spawn_bg(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def conninfo(self, app: str) -> str:
        return make_conninfo(self.dsn, application_name=app)

    async def robust(self, what: str, op: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
        """Run a driver operation through outages; (result, failed attempts)."""
        failed = 0
        deadline = time.monotonic() + 120
        while True:
            try:
                return await op(), failed
            except (flows.WorkflowAlreadyExists, flows.WorkflowNotFound):
                raise
            except Exception as exc:
                failed += 1
                self.stats.driver_retries[what] += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"driver op {what} kept failing: {exc!r}") from exc
                await asyncio.sleep(0.2)

    # -- set-up --

    def make_plan(self) -> None:
        n, w = self.cfg.workflows, self.cfg.start_window
        special = {max(1, n // 10): "outlive", n // 2: "heartbeat"}
        for i in range(n):
            kind = special.get(i) or self.rng.choices(KINDS, WEIGHTS)[0]
            p = make_params(kind, i, self.rng)
            wid = f"chaos-{kind}-{i:05d}"
            self.plan.append((w * i / n, wid, p))
            self.params[wid] = p

    def start_server(self) -> None:
        from flows_pg import embedded

        for name in ("psycopg.pool", "flows_pg.listener"):  # outages are expected here
            logging.getLogger(name).setLevel(logging.ERROR)

        if self.cfg.data_dir is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="flows-chaos-"))
            self.data = self.tmp / "pgdata"
        else:
            self.data = Path(self.cfg.data_dir)
        self.logs = self.data.parent / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dsn = embedded.ensure_started(self.data)

    async def prepare_schema(self) -> None:
        from flows_pg import PostgresStore

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
            )
        self.store = PostgresStore(self.conninfo("chaos-driver"), schema=SCHEMA, max_size=6)
        await self.store.open()
        await self.store.migrate()
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(create_exec_table_sql(SCHEMA))
        self.engine = flows.Engine(self.store, workflows=list(WORKFLOWS.values()))

    # -- worker processes --

    def worker_dsn(self, slot: int) -> str:
        """The DSN a worker process's store connects with (the net run puts a proxy here)."""
        return self.conninfo(f"chaos-worker-{slot}")

    def worker_argv(self, slot: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "benchmarks.chaos.worker",
            self.worker_dsn(slot),
            SCHEMA,
            str(self.cfg.lease),
            str(slot),
        ]

    def spawn_worker(self, slot: int) -> Incarnation:
        n = sum(1 for inc in self.incarnations if inc.slot == slot)
        log = self.logs / f"worker-{slot}-{n}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "CHAOS_EXEC_DSN": self.conninfo(f"chaos-exec-{slot}"),
            **self.worker_env,
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.worker_argv(slot),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        inc = Incarnation(slot, proc, log, time.time())
        self.incarnations.append(inc)
        self.slots[slot] = inc
        return inc

    def check_workers(self) -> None:
        """Notice (and replace) a worker that died without being killed by us."""
        for slot, inc in list(self.slots.items()):
            rc = inc.proc.poll()
            if rc is not None and inc.killed is None and inc.exited is None:
                inc.exited = time.time()
                tail = inc.log.read_text(errors="replace").splitlines()[-12:]
                self.stats.fail(
                    f"worker {slot} (pid {inc.pid}) exited by itself, rc={rc}: see {inc.log}; "
                    "its last lines:\n      " + "\n      ".join(line[:300] for line in tail)
                )
                self.spawn_worker(slot)

    async def respawn_later(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.done.is_set():
            inc = self.spawn_worker(slot)
            self.stats.faults["worker respawn"] += 1
            self.log(f"respawned worker {slot} as pid {inc.pid}")

    # -- faults --

    async def kill_worker(self) -> None:
        alive = [inc for inc in self.slots.values() if inc.proc.poll() is None]
        if not alive:
            return
        inc = self.rng.choice(alive)
        inc.killed = time.time()
        inc.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(inc.proc.wait, 10)
        self.stats.faults["worker SIGKILL"] += 1
        self.stats.timeline.append((inc.killed, "kill", inc.pid))
        self.log(f"SIGKILL worker {inc.slot} (pid {inc.pid})")
        self.spawn_bg(self.respawn_later(inc.slot, self.rng.uniform(0.0, 1.0)))

    async def terminate_backends(self) -> None:
        slot = self.rng.choice([None, *self.slots])  # None: every worker's connections
        pattern = "chaos-worker-%" if slot is None else f"chaos-worker-{slot}"
        try:
            async with await psycopg.AsyncConnection.connect(
                self.conninfo("chaos-admin"), autocommit=True, connect_timeout=5
            ) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "pg_stat_activity WHERE application_name LIKE %s "
                    "AND pid <> pg_backend_pid()",
                    (pattern,),
                )
                row = await cur.fetchone()
        except psycopg.OperationalError as exc:
            self.log(f"pg_terminate_backend skipped: {exc!r}")
            return
        killed = int(row[0]) if row else 0
        self.stats.faults["pg_terminate_backend"] += 1
        self.stats.faults["backends terminated"] += killed
        pids = [i.pid for i in self.slots.values() if slot is None or i.slot == slot]
        self.stats.timeline.append((time.time(), "terminate", pids))
        who = "all workers" if slot is None else f"worker {slot}"
        self.log(f"pg_terminate_backend: {killed} connections of {who}")

    async def restart_pg(self) -> None:
        from flows_pg import embedded

        restart = Restart(down_at=time.time())
        self.log("PostgreSQL: stopping")
        await asyncio.to_thread(embedded.stop, self.data)
        await asyncio.sleep(self.rng.uniform(*self.cfg.down_time))
        dsn = await asyncio.to_thread(embedded.ensure_started, self.data)
        restart.up_at = time.time()
        if dsn != self.dsn:
            self.stats.fail(f"PostgreSQL came back on another DSN: {dsn} != {self.dsn}")
        self.stats.restarts.append(restart)
        self.stats.faults["PostgreSQL restart"] += 1
        self.stats.timeline.append((restart.down_at, "restart", restart.up_at))
        self.log(f"PostgreSQL: up again after {restart.up_at - restart.down_at:.2f}s")

    async def inject(self) -> None:
        cfg, now = self.cfg, time.time
        start = self.t0 + 1.5
        end = self.t0 + cfg.start_window + 4.0
        k = cfg.restarts
        restarts = [self.t0 + cfg.start_window * (j + 1) / (k + 1) for j in range(k)]
        next_kill = start + self.rng.uniform(*cfg.kill_every)
        next_term = start + self.rng.uniform(*cfg.terminate_every)
        while not self.done.is_set():
            due = min([next_kill, next_term, *restarts])
            if due > end and not restarts:
                break
            await asyncio.sleep(max(0.0, due - now()))
            if self.done.is_set():
                break
            async with self.fault_lock:
                if self.quiet:
                    await asyncio.sleep(0.1)  # postponed, not skipped
                    continue
                if restarts and due == restarts[0]:
                    restarts.pop(0)
                    await self.restart_pg()
                elif due == next_kill:
                    next_kill = now() + self.rng.uniform(*cfg.kill_every)
                    if due <= end:
                        await self.kill_worker()
                else:
                    next_term = now() + self.rng.uniform(*cfg.terminate_every)
                    if due <= end:
                        await self.terminate_backends()

    # -- the workload --

    async def start_one(self, wid: str, p: Params) -> None:
        wf = WORKFLOWS[p.kind]
        tried = False

        async def op() -> None:
            nonlocal tried
            first, tried = not tried, True
            try:
                await self.engine.start(wf, p, workflow_id=wid)
            except flows.WorkflowAlreadyExists:
                if first:  # a retry after an ambiguous error: the first try committed
                    raise

        await self.robust("start", op)

    async def signaller(self, wid: str, p: Params) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))
        for _ in range(p.n):
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            _, failed = await self.robust("signal", lambda: self.engine.signal(wid, "go", p.value))
            self.signals_sent[wid] += 1 + failed

    async def canceller(self, wid: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))
        await self.robust("cancel", lambda: self.engine.cancel(wid, reason="chaos"))

    async def quiet_window(self, wid: str) -> None:
        """Faults stay off until ``wid`` (the heartbeating workflow) has finished."""
        try:
            await self.robust(
                "wait", lambda: self.engine.wait_for_result(wid, timeout=self.cfg.drain_timeout)
            )
        except Exception as exc:
            self.stats.fail(f"{wid}: {exc!r}")
        finally:
            self.quiet = False
            self.log(f"quiet window over ({wid} finished)")

    async def starter(self) -> None:
        for offset, wid, p in self.plan:
            await asyncio.sleep(max(0.0, self.t0 + offset - time.time()))
            if p.kind == "heartbeat":
                async with self.fault_lock:  # waits for a fault in progress to finish
                    self.quiet = True
                self.log(f"quiet window for {wid}")
            await self.start_one(wid, p)
            if p.kind == "signal":
                self.spawn_bg(self.signaller(wid, p))
            elif p.kind == "cancel":
                self.spawn_bg(self.canceller(wid))
            elif p.kind == "heartbeat":
                self.spawn_bg(self.quiet_window(wid))
        self.log(f"all {len(self.plan)} workflows started")

    async def status_counts(self) -> Counter[str]:
        async with await psycopg.AsyncConnection.connect(
            self.conninfo("chaos-monitor"), autocommit=True, connect_timeout=5
        ) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT status, count(*) FROM {}.workflows GROUP BY status").format(
                    sql.Identifier(SCHEMA)
                )
            )
            return Counter({s: int(c) for s, c in await cur.fetchall()})

    async def monitor(self) -> None:
        deadline = self.t0 + self.cfg.start_window + self.cfg.drain_timeout
        last = ""
        while True:
            await asyncio.sleep(0.5)
            self.check_workers()
            try:
                counts = await self.status_counts()
            except psycopg.OperationalError:
                continue
            terminal = sum(counts[s] for s in TERMINAL)
            line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            if line != last and self.cfg.verbose:
                self.log(f"workflows: {line}")
                last = line
            if terminal == len(self.plan):
                return
            if time.time() > deadline:
                self.stats.fail(
                    f"only {terminal} of {len(self.plan)} workflows finished within "
                    f"{self.cfg.start_window + self.cfg.drain_timeout:.0f}s: {line}"
                )
                return

    # -- the run --

    async def run(self) -> Stats:
        cfg = self.cfg
        self.make_plan()
        await asyncio.to_thread(self.start_server)
        try:
            await self.prepare_schema()
            self.t0 = time.time()
            for slot in range(cfg.workers):
                self.spawn_worker(slot)
            injector = asyncio.ensure_future(self.inject())
            starter = asyncio.ensure_future(self.starter())
            await self.monitor()
            self.stats.numbers["wall time (s)"] = round(time.time() - self.t0, 1)
            await starter
            self.done.set()
            await injector
            if self.background:
                await asyncio.wait(self.background, timeout=30)
            await self.stop_workers()
            await self.verify()
        finally:
            self.done.set()
            for inc in self.slots.values():
                if inc.proc.poll() is None:
                    inc.proc.kill()
                    inc.proc.wait()
            with contextlib.suppress(Exception):
                await self.store.close()
            await asyncio.to_thread(self.cleanup)
        return self.stats

    async def stop_workers(self) -> None:
        for inc in self.slots.values():
            if inc.proc.poll() is None:
                inc.proc.send_signal(signal.SIGTERM)
        for inc in self.slots.values():
            try:
                await asyncio.to_thread(inc.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.stats.fail(f"worker {inc.slot} (pid {inc.pid}) ignored SIGTERM for 15 s")
                inc.proc.kill()
            inc.exited = time.time()

    def cleanup(self) -> None:
        from flows_pg import embedded

        if self.cfg.keep:
            embedded.stop(self.data)
            print(f"data and worker logs kept in {self.data.parent}")
        else:
            embedded.stop(self.data, delete=True)
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- verification --

    async def verify(self) -> None:
        checks = _checks()
        st = self.stats
        tenant = self.engine.tenant_for(None)
        execs = await self.fetch_executions()
        self.tx_effects = await self.fetch_tx_effects()
        by_step: dict[tuple[str, int], list[tuple[str, int, int, float]]] = defaultdict(list)
        for wid, seq, name, attempt, pid, at in execs:
            by_step[(wid, seq)].append((name, attempt, pid, at))
        latencies: dict[str, list[float]] = defaultdict(list)
        undecodable: Counter[str] = Counter()
        wrong = 0
        for _, wid, p in self.plan:
            exp = expected(p)
            try:
                record = await self.store.get_workflow(tenant, wid)
            except flows.WorkflowNotFound:
                st.fail(f"{wid}: not found")
                wrong += 1
                continue
            stored, problems = await self.stored_history(tenant, wid)
            try:
                history = await self.engine.history(wid)
            except msgspec.ValidationError as exc:
                undecodable[re.sub(r"\$\[\d+\]", "$[i]", str(exc))] += 1
                history = stored  # decoded leniently, to check everything else
            problems += self.check_one(checks, wid, p, exp, record, history, by_step)
            if problems:
                wrong += 1
                for problem in problems[:3]:
                    st.fail(f"{wid}: {problem}")
            status = str(record.status.value)
            st.outcomes[f"{status} (expected {exp.status})"] += 1
            latencies[p.kind].append((record.updated_at - record.created_at).total_seconds())
        for message, n in undecodable.items():
            st.fail(
                f"LIBRARY BUG: Engine.history() raises for {n} workflows: msgspec.ValidationError "
                f"{message!r} (see benchmarks/chaos/repros.py)"
            )
        st.numbers["histories Engine.history() cannot decode"] = sum(undecodable.values())
        st.numbers["workflows"] = len(self.plan)
        st.numbers["wrong outcome or history"] = wrong
        self.check_executions(execs, by_step)
        await self.check_tasks()
        self.check_latency(latencies)
        self.check_recovery(execs)
        await self.check_fsck()

    async def check_fsck(self) -> None:
        """``flows fsck`` over the whole store: any finding fails the run."""
        found = await fsck(self.store, lease=timedelta(seconds=self.cfg.lease))
        self.stats.numbers["fsck: workflows checked"] = found.workflows
        self.stats.numbers["fsck: findings"] = len(found.findings)
        for finding in found.findings[:20]:
            self.stats.fail(f"fsck: {finding.line()}")

    async def stored_history(self, tenant: str, wid: str) -> tuple[list[Any], list[str]]:
        """The history rows, read directly: positions must be 1..n; events decoded
        leniently (a WorkflowCancelledEvent's output, which decode_event rejects)."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT position, event::text FROM {}.history WHERE tenant_id = %s "
                    "AND workflow_id = %s ORDER BY position"
                ).format(sql.Identifier(SCHEMA)),
                (tenant, wid),
            )
            rows = await cur.fetchall()
        problems = []
        positions = [int(pos) for pos, _ in rows]
        if positions != list(range(1, len(rows) + 1)):
            problems.append(f"history positions are not 1..n: {positions}")
        events = []
        for _, text in rows:
            try:
                events.append(decode_event(text))
            except msgspec.ValidationError:
                data = json.loads(text)
                output = data.pop("output", None)
                event = decode_event(json.dumps(data))
                if output is not None:
                    raw = msgspec.Raw(json.dumps(output).encode())
                    event = msgspec.structs.replace(event, output=raw)  # type: ignore[type-var]
                events.append(event)
        return events, problems

    def check_one(
        self,
        checks: Any,
        wid: str,
        p: Params,
        exp: Any,
        record: Any,
        history: list[Any],
        by_step: dict[tuple[str, int], list[tuple[str, int, int, float]]],
    ) -> list[str]:
        problems: list[str] = []
        try:
            checks.assert_history_invariants(history)
            checks.assert_record_matches(record, history)
        except AssertionError as exc:
            problems.append(f"invariant: {str(exc)[:2000]}")
        status = str(record.status.value)
        if status != exp.status:
            problems.append(f"status {status}, expected {exp.status} (error: {record.error})")
            return problems
        output = None if record.output is None else msgspec.json.decode(record.output)
        if exp.status in ("completed", "cancelled") and output != exp.output:
            problems.append(f"output {output!r}, expected {exp.output!r}")
        if exp.status == "failed" and (record.error is None or record.error.type != exp.error_type):
            problems.append(f"error {record.error}, expected type {exp.error_type}")
        scheduled = {e.seq: e for e in history if isinstance(e, ActivityScheduled)}
        resolutions = Counter(
            e.seq for e in history if isinstance(e, ActivityCompleted | ActivityFailedEvent)
        )
        dropped = {e.seq for e in history if isinstance(e, StepCancelled)}
        for seq, event in scheduled.items():
            n = resolutions[seq]
            if n != 1 and not (n == 0 and seq in dropped):
                problems.append(f"activity seq {seq} ({event.name}) recorded {n} times")
            if n and not by_step.get((wid, seq)):
                problems.append(f"activity seq {seq} recorded but never executed")
        names = tuple(scheduled[s].name for s in sorted(scheduled))
        if p.kind == "cancel":
            if not any(isinstance(e, CancelRequested) for e in history):
                problems.append("no CancelRequested in the history")
            comp = [s for s, e in scheduled.items() if e.name == "chaos-compensate"]
            if len(comp) != 1 or resolutions[comp[0]] != 1:
                problems.append(f"compensation recorded {len(comp)} times: {names}")
        elif names != exp.activities:
            problems.append(f"activities {names}, expected {exp.activities}")
        if p.kind == "retry":
            flaky = [e for e in history if isinstance(e, ActivityCompleted) and e.seq == 2]
            if not flaky or flaky[0].attempt != p.fail + 1:
                got = flaky[0].attempt if flaky else None
                problems.append(f"flaky step recorded at attempt {got}, expected {p.fail + 1}")
        if p.kind == "signal":
            gos = sum(1 for e in history if isinstance(e, SignalReceived) and e.name == "go")
            if not p.n <= gos <= self.signals_sent[wid]:
                problems.append(
                    f"{gos} 'go' signals in history, {p.n} needed, "
                    f"{self.signals_sent[wid]} send attempts"
                )
            if not any(isinstance(e, TimerFired) for e in history):
                problems.append("the 'never' wait did not time out")
        if p.kind == "txact":
            rows = self.tx_effects[(wid, 2)]
            self.stats.numbers["transactional effect rows (expect 1 per step)"] = (
                self.stats.numbers.get("transactional effect rows (expect 1 per step)", 0) + rows
            )
            if rows != 1:
                problems.append(f"transactional step's effect row is there {rows} times")
        if p.kind == "heartbeat":
            runs = by_step.get((wid, 1), [])
            self.stats.numbers["heartbeating activity executions (expect 1)"] = len(runs)
            if len(runs) != 1:
                problems.append(f"heartbeating activity ran {len(runs)} times: {runs}")
        if p.kind == "outlive":
            runs = by_step.get((wid, 1), [])
            pids = sorted({pid for _, _, pid, _ in runs})
            self.stats.numbers["lease-outliving activity executions (expect >= 2)"] = len(runs)
            self.stats.numbers["lease-outliving activity pids"] = pids
            if len(runs) < 2:
                problems.append(f"lease-outliving activity ran {len(runs)} times: {runs}")
        return problems

    async def fetch_executions(self) -> list[tuple[str, int, str, int, int, float]]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT workflow_id, seq, name, attempt, pid, extract(epoch FROM at)::float8 "
                    "FROM {}.{} ORDER BY id"
                ).format(sql.Identifier(SCHEMA), sql.Identifier(EXEC_TABLE))
            )
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]

    async def fetch_tx_effects(self) -> Counter[tuple[str, int]]:
        """Effect rows of the transactional activity per (workflow, seq)."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT workflow_id, seq, count(*) FROM {}.{} GROUP BY 1, 2").format(
                    sql.Identifier(SCHEMA), sql.Identifier(TX_EFFECTS_TABLE)
                )
            )
            return Counter({(w, int(s)): int(n) for w, s, n in await cur.fetchall()})

    def check_executions(
        self,
        execs: list[tuple[str, int, str, int, int, float]],
        by_step: dict[tuple[str, int], list[tuple[str, int, int, float]]],
    ) -> None:
        st = self.stats
        per_attempt = Counter((w, s, a) for w, s, name, a, _, _ in execs if name != "chaos-outlive")
        dup = sum(c - 1 for c in per_attempt.values() if c > 1)
        dup_steps = sum(1 for c in per_attempt.values() if c > 1)
        names = {(w, s): {n for n, *_ in runs} for (w, s), runs in by_step.items()}
        mixed = [k for k, v in names.items() if len(v) > 1]
        if mixed:
            st.fail(f"one step executed as different activities: {mixed[:5]}")
        st.numbers["activity executions"] = len(execs)
        st.numbers["steps executed"] = len(by_step)
        st.numbers["duplicate executions (same step+attempt, not outlive)"] = dup
        st.numbers["steps with a duplicate execution"] = dup_steps
        runs: dict[tuple[str, int, int], list[tuple[int, float]]] = defaultdict(list)
        for w, s_, _, a, pid, at in execs:
            runs[(w, s_, a)].append((pid, at))
        causes: Counter[str] = Counter()
        unexplained = []
        for key, count in per_attempt.items():
            if count < 2:
                continue
            for pid, at in runs[key][:-1]:  # every run but the last was not recorded
                cause = self.cause_of_rerun(pid, at)
                causes[cause] += 1
                if cause == "unexplained":
                    unexplained.append(f"{key[0]}#{key[1]}@{key[2]} (pid {pid})")
        st.numbers["re-runs explained by a fault (kill/terminate/restart)"] = (
            f"{causes['kill']}/{causes['terminate']}/{causes['restart']}"
        )
        st.numbers["re-runs with no fault nearby (lease expired under load)"] = causes[
            "unexplained"
        ]
        if unexplained:
            st.numbers["unexplained re-runs"] = ", ".join(unexplained[:6])

    def cause_of_rerun(self, pid: int, at: float) -> str:
        """Which fault made an execution at ``at`` in ``pid`` go unrecorded, if any."""
        window = at + 3 * self.cfg.lease + 5.0
        for when, kind, target in self.stats.timeline:
            if kind == "kill" and target == pid and at - 0.1 <= when <= window:
                return "kill"
        for when, kind, _ in self.stats.timeline:
            if kind == "restart" and at - 3.0 <= when <= window:
                return "restart"
        for when, kind, target in self.stats.timeline:
            if kind == "terminate" and pid in target and at - 0.5 <= when <= window:
                return "terminate"
        return "unexplained"

    async def check_tasks(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT w.status, t.kind, count(*) FROM {s}.tasks t JOIN {s}.workflows w "
                    "USING (shard_key, tenant_id, workflow_id) GROUP BY 1, 2"
                ).format(s=sql.Identifier(SCHEMA))
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {s}.inbox").format(s=sql.Identifier(SCHEMA))
            )
            row = await cur.fetchone()
        left = sum(int(c) for *_, c in rows)
        self.stats.numbers["tasks left"] = left
        self.stats.numbers["inbox rows left (late signals)"] = int(row[0]) if row else 0
        if left:
            self.stats.fail(f"tasks left after every workflow ended: {rows}")

    def check_latency(self, latencies: dict[str, list[float]]) -> None:
        worst = max((max(v), k) for k, v in latencies.items() if v)
        self.stats.numbers["max start-to-end latency (s)"] = f"{worst[0]:.1f} ({worst[1]})"
        everything = sorted(x for v in latencies.values() for x in v)
        if everything:
            p99 = everything[int(0.99 * (len(everything) - 1))]
            self.stats.numbers["p99 start-to-end latency (s)"] = round(p99, 2)
        if worst[0] > self.cfg.max_latency:
            self.stats.fail(f"a {worst[1]} workflow took {worst[0]:.1f}s > {self.cfg.max_latency}")

    # -- worker logs: reconnection after each restart --

    def read_log(self, inc: Incarnation) -> list[dict[str, Any]]:
        events = []
        for line in inc.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def check_recovery(self, execs: list[tuple[str, int, str, int, int, float]]) -> None:
        st = self.stats
        logs = {inc.pid: self.read_log(inc) for inc in self.incarnations}
        totals: Counter[str] = Counter()
        for events in logs.values():
            last = [e for e in events if e["ev"] == "stats"]
            if last:
                for key in ("commits", "lease_lost", "store_errors", "writes", "errors"):
                    totals[key] += int(last[-1].get(key, 0))
        st.numbers["worker commits (last stats of each process)"] = totals["commits"]
        st.numbers["worker lease_lost"] = totals["lease_lost"]
        st.numbers["worker store errors (loop / wrapped calls)"] = (
            f"{totals['store_errors']} / {totals['errors']}"
        )
        horizon = 5.0  # a worker alive this long after the server is back must have recovered
        for n, r in enumerate(st.restarts, start=1):
            firsts: list[float] = []  # first write after up_at, any worker
            survivors: list[float] = []  # same, for the workers that lived through it
            for inc in self.incarnations:
                events = logs[inc.pid]
                end = inc.killed or inc.exited or time.time()
                ready = next((e["t"] for e in events if e["ev"] == "ready"), None)
                first_write = next(
                    (e["t"] for e in events if e["ev"] in ("ok", "resume") and e["t"] > r.up_at),
                    None,
                )
                if first_write is not None:
                    firsts.append(first_write - r.up_at)
                if ready is None or not (ready < r.down_at and end > r.up_at + horizon):
                    continue
                r.survivors += 1
                if any(e["ev"] == "err" and r.down_at <= e["t"] <= r.up_at + 1 for e in events):
                    r.saw_errors += 1
                if first_write is not None and first_write < end:
                    r.recovered += 1
                    survivors.append(first_write - r.up_at)
                else:
                    st.fail(
                        f"restart {n}: worker {inc.slot} (pid {inc.pid}) lived through it but "
                        f"never committed again (log {inc.log})"
                    )
            r.first_commit = min(firsts) if firsts else None
            r.slowest_commit = max(survivors) if survivors else None
            if r.first_commit is None:
                st.fail(f"restart {n}: no worker committed anything after it")
        if st.restarts:
            last_up = st.restarts[-1].up_at
            after = Counter(pid for *_, pid, at in execs if at > last_up)
            st.numbers["activity executions after the last restart, by pid"] = dict(after)
            if not after:
                st.fail("no activity ran after the last PostgreSQL restart")


# -- report -----------------------------------------------------------------------------


def report(cfg: Config, stats: Stats) -> str:
    out = []
    out.append(
        f"Chaos run ({cfg.label}): {cfg.workflows} workflows over {cfg.start_window:.0f}s, "
        f"{cfg.workers} worker processes, lease {cfg.lease}s, seed {cfg.seed}"
    )
    out.append("")
    out.append(f"{'Faults injected':<44}{'count':>8}")
    known = (
        "worker SIGKILL",
        "worker respawn",
        "pg_terminate_backend",
        "backends terminated",
        "PostgreSQL restart",
    )
    for kind in (*known, *(k for k in stats.faults if k not in known)):
        out.append(f"  {kind:<42}{stats.faults[kind]:>8}")
    for what, n in sorted(stats.driver_retries.items()):
        out.append(f"  {'driver ' + what + ' retried (outage)':<42}{n:>8}")
    out.append("")
    out.append(f"{'Outcomes':<44}{'count':>8}")
    for key, n in sorted(stats.outcomes.items()):
        out.append(f"  {key:<42}{n:>8}")
    for key, value in stats.numbers.items():
        text = str(value)
        if len(text) <= 8:
            out.append(f"  {key:<42}{text:>8}")
        else:
            out.append(f"  {key:<42}  {text}")
    if stats.restarts:
        out.append("")
        out.append(
            "PostgreSQL restarts   down (s)   first commit after up (s)   "
            "slowest survivor (s)   survivors recovered (saw errors)"
        )
        for n, r in enumerate(stats.restarts, start=1):

            def fmt(x: float | None) -> str:
                return "-" if x is None else f"{x:.2f}"

            out.append(
                f"  #{n:<19}{r.up_at - r.down_at:>8.2f}   {fmt(r.first_commit):>25}   "
                f"{fmt(r.slowest_commit):>20}   {r.recovered:>9}/{r.survivors} ({r.saw_errors})"
            )
    for section in stats.sections:
        out.append("")
        out.append(section)
    out.append("")
    if stats.failures:
        out.append(f"FAILED: {len(stats.failures)} problem(s)")
        out.extend(f"  - {f}" for f in stats.failures[:40])
    else:
        out.append(
            "OK: every workflow reached its expected state and output; every history "
            "passes the invariants"
        )
    return "\n".join(out)


def run(cfg: Config) -> Stats:
    return asyncio.run(Chaos(cfg).run())


def summary(cfg: Config, stats: Stats) -> dict[str, Any]:
    return {
        "config": asdict(cfg),
        "faults": dict(stats.faults),
        "outcomes": dict(stats.outcomes),
        "numbers": stats.numbers,
        "restarts": [asdict(r) for r in stats.restarts],
        "driver_retries": dict(stats.driver_retries),
        "failures": stats.failures,
        "sections": stats.sections,
    }
