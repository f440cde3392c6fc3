"""Chaos on Citus: the chaos workload on a local 3-node cluster (a coordinator and two
worker nodes, ``flows_citus._cluster.LocalCitusCluster``, each a PostgreSQL on loopback),
with ``CitusStore`` in the driver and in every worker process.

Faults, at random moments during the start window:

* a worker node restarted (``pg_ctl stop -m immediate``: as if it crashed; then
  started again), each worker node at least once;
* the coordinator restarted (``pg_ctl stop -m fast``, then started);
* ``pg_terminate_backend`` on the coordinator (the Flows workers' connections) and on
  the worker nodes (every client backend there: the coordinator's connections);
* SIGKILL of Flows worker processes (respawned 0-1 s later);
* all the while (but for the heartbeating workflow's quiet window, as every other
  fault), a shard group of the Flows tables is moved to the other worker node every
  1-3 s (``citus_move_shard_placement``, ``shard_transfer_mode => 'block_writes'``);
  a move that meets a restart fails and the next one goes on.

A probe writes to each Flows shard key every 0.1 s through the coordinator (a table
colocated with the Flows tables), so a restart's cost is measured as seconds without a
successful write, per shard key, on the restarted node and elsewhere; the workflows in
flight on the restarted node's shard keys are listed with their start-to-end latencies.

End checks: the PostgreSQL chaos suite's (``driver.py``), plus every worker that lived
through a restart wrote again after it. The cluster runs with ``synchronous_commit = on``
(the test helper's default is off): an immediate stop may otherwise lose commits that
were acknowledged but not yet written, which no client can guard against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import flows_core as flows

from .app import WORKFLOWS, create_exec_table_sql
from .driver import SCHEMA, Chaos, Config, Stats
from .net import first_write_after

PROBE_TABLE = "chaos_probe"
MOVE_MODE = "block_writes"


@dataclass
class CitusConfig(Config):
    workflows: int = 600
    start_window: float = 60.0
    restarts: int = 0  # PostgreSQL-suite restarts: not used here
    node_restarts: int = 2  # alternating between the two worker nodes
    coordinator_restarts: int = 1
    move_every: tuple[float, float] = (1.0, 3.0)
    kill_every: tuple[float, float] = (4.0, 9.0)
    terminate_every: tuple[float, float] = (3.0, 7.0)
    down_time: tuple[float, float] = (0.5, 2.0)
    flows_shards: int = 8  # Flows shard keys (shard-0 ..), over 4 Citus shards
    # Start-to-end bound ("nothing stuck"), not a latency goal: three PostgreSQL servers
    # and the workers share two cores here, and 600 workflows in 60 s build a backlog.
    max_latency: float = 180.0
    label: str = "Citus, coordinator + 2 worker nodes"

    @classmethod
    def reduced(cls, **overrides: Any) -> CitusConfig:
        base: dict[str, Any] = dict(
            workflows=120,
            start_window=40.0,
            node_restarts=2,
            coordinator_restarts=1,
            drain_timeout=60.0,
            max_latency=90.0,  # see the report: recovery after a node restart can take 20 s+
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class NodeRestart:
    node: int  # 0: the coordinator
    port: int
    mode: str
    down_at: float
    up_at: float = 0.0
    keys_on_node: list[str] = field(default_factory=list)
    stall_on: float | None = None  # max seconds without a probe write, its keys
    stall_off: float | None = None  # same, the other keys
    in_flight: int = 0  # workflows in flight on its keys during the outage
    in_flight_max_latency: float | None = None
    survivors: int = 0
    recovered: int = 0
    slowest: float | None = None  # s from up to a surviving worker's first write
    first: float | None = None  # s from up to the first write of any worker


@dataclass
class Move:
    shard: int
    source: int
    target: int
    began: float
    seconds: float
    error: str = ""


class CitusChaos(Chaos):
    cfg: CitusConfig

    def __init__(self, config: CitusConfig) -> None:
        super().__init__(config)
        self.worker_env = {"CHAOS_STORE": "citus"}
        self.cluster: Any = None
        self.node_restarts: list[NodeRestart] = []
        self.moves: list[Move] = []
        self.probe_ok: dict[str, list[float]] = {}
        self.key_shard: dict[str, int] = {}
        self.node_lock = asyncio.Lock()  # one node down at a time; moves wait for it

    # -- the cluster --

    def start_server(self) -> None:
        from flows_citus._cluster import LocalCitusCluster, find_citus_pg_bin

        # Outages are expected: psycopg logs every pipeline a lost connection aborted.
        for name in ("psycopg", "psycopg.pool", "flows_pg.listener"):
            logging.getLogger(name).setLevel(logging.ERROR)
        pg_bin = find_citus_pg_bin()
        if pg_bin is None:
            raise RuntimeError("no local PostgreSQL with the citus extension installed")
        self.pg_bin = pg_bin
        base = Path(tempfile.mkdtemp(prefix="flows-citus-chaos-", dir="/tmp"))
        self.tmp = Path(tempfile.mkdtemp(prefix="flows-citus-chaos-logs-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.cluster = LocalCitusCluster(
            base, pg_bin, workers=2, settings={"synchronous_commit": "on"}
        )
        coordinator = self.cluster.start()
        self.dsn = make_conninfo(coordinator, options="-c citus.shard_count=4")

    def cleanup(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop(delete=not self.cfg.keep)
        if self.cfg.keep:
            print(f"worker logs kept in {self.logs}; cluster in {self.cluster.base_dir}")
        elif self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def node_dsn(self, node: int) -> str:
        return str(self.cluster.node_dsns[node])

    def pg_ctl(self, node: int, *args: str) -> None:
        """``pg_ctl`` on one node's data directory (``base_dir/n<i>``, as the cluster lays
        it out), as the server's OS user when we are root."""
        data = self.cluster.base_dir / f"n{node}"
        log = self.cluster.base_dir / f"n{node}.log"
        cmd = [str(self.pg_bin / "pg_ctl"), "-D", str(data), "-w", "-t", "60", *args]
        if args[-1] == "start":
            cmd[-1:] = ["-l", str(log), "start"]
        kwargs: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if os.geteuid() == 0:
            # As the cluster starts its nodes: the server's user and its HOME (libpq in
            # the server reads ~/.postgresql for node-to-node connections).
            user = pwd.getpwnam("postgres")
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        subprocess.run(
            cmd, check=True, capture_output=True, cwd=self.cluster.base_dir, env=env, **kwargs
        )

    async def prepare_schema(self) -> None:
        from flows_citus import CitusStore

        self.store = CitusStore(self.conninfo("chaos-driver"), schema=SCHEMA, max_size=6)
        await self.store.open()
        await self.store.migrate(shards=self.cfg.flows_shards, sharding="workflow")
        keys = [f"shard-{n}" for n in range(self.cfg.flows_shards)]
        s = sql.Identifier(SCHEMA)
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(create_exec_table_sql(SCHEMA))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.{} (shard_key text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)"
                ).format(s, sql.Identifier(PROBE_TABLE))
            )
            await conn.execute(
                "SELECT create_distributed_table(%s, 'shard_key', colocate_with => %s)",
                (f"{SCHEMA}.{PROBE_TABLE}", f"{SCHEMA}.workflows"),
            )
            for key in keys:
                await conn.execute(
                    sql.SQL("INSERT INTO {}.{} (shard_key) VALUES (%s)").format(
                        s, sql.Identifier(PROBE_TABLE)
                    ),
                    (key,),
                )
                cur = await conn.execute(
                    "SELECT get_shard_id_for_distribution_column(%s::regclass, %s::text)",
                    (f"{SCHEMA}.workflows", key),
                )
                row = await cur.fetchone()
                assert row is not None
                self.key_shard[key] = int(row[0])
        self.engine = flows.Engine(self.store, workflows=list(WORKFLOWS.values()))

    async def placements(self) -> dict[int, int]:
        """shard id of the Flows workflows table -> port of the node that holds it."""
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=5
        ) as conn:
            cur = await conn.execute(
                "SELECT shardid, nodeport FROM citus_shards WHERE table_name = %s::regclass",
                (f"{SCHEMA}.workflows",),
            )
            return {int(a): int(b) for a, b in await cur.fetchall()}

    # -- faults --

    async def restart_node(self, node: int) -> None:
        mode = "fast" if node == 0 else "immediate"
        port = self.cluster.ports[node]
        async with self.node_lock:
            try:
                held = await self.placements()
            except psycopg.Error:
                held = {}
            restart = NodeRestart(node, port, mode, down_at=time.time())
            restart.keys_on_node = sorted(
                k for k, shard in self.key_shard.items() if node == 0 or held.get(shard) == port
            )
            name = "coordinator" if node == 0 else f"worker node {node}"
            self.log(f"{name} (port {port}): stop -m {mode}; its keys {restart.keys_on_node}")
            await asyncio.to_thread(self.pg_ctl, node, "-m", mode, "stop")
            await asyncio.sleep(self.rng.uniform(*self.cfg.down_time))
            await asyncio.to_thread(self.pg_ctl, node, "start")
            restart.up_at = time.time()
        self.node_restarts.append(restart)
        kind = "coordinator restart" if node == 0 else "worker node restart"
        self.stats.faults[kind] += 1
        self.stats.timeline.append((restart.down_at, "restart", restart.up_at))
        self.log(f"{name}: up again after {restart.up_at - restart.down_at:.2f}s")

    async def terminate_on_nodes(self) -> None:
        """Every client backend on the worker nodes (the coordinator's connections)."""
        killed = 0
        for node in range(1, len(self.cluster.ports)):
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.node_dsn(node), autocommit=True, connect_timeout=3
                ) as conn:
                    cur = await conn.execute(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                        "pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid()"
                    )
                    row = await cur.fetchone()
                    killed += int(row[0]) if row else 0
            except psycopg.OperationalError as exc:
                self.log(f"pg_terminate_backend on node {node} skipped: {exc!r}")
        self.stats.faults["pg_terminate_backend on worker nodes"] += 1
        self.stats.faults["node backends terminated"] += killed
        pids = [i.pid for i in self.slots.values()]
        self.stats.timeline.append((time.time(), "terminate", pids))
        self.log(f"pg_terminate_backend on the worker nodes: {killed} backends")

    async def inject(self) -> None:
        cfg, rng, now = self.cfg, self.rng, time.time
        start = self.t0 + 1.5
        end = self.t0 + cfg.start_window
        n = cfg.node_restarts + cfg.coordinator_restarts
        nodes = [1 + j % 2 for j in range(cfg.node_restarts)] + [0] * cfg.coordinator_restarts
        rng.shuffle(nodes)
        restarts = [
            (self.t0 + cfg.start_window * (j + 1) / (n + 1), node) for j, node in enumerate(nodes)
        ]
        next_kill = start + rng.uniform(*cfg.kill_every)
        next_term = start + rng.uniform(*cfg.terminate_every)
        helpers = [asyncio.ensure_future(self.mover(end)), asyncio.ensure_future(self.probe(end))]
        try:
            while not self.done.is_set():
                due = min([next_kill, next_term, *(at for at, _ in restarts[:1])])
                if due > end and not restarts:
                    break
                await asyncio.sleep(max(0.0, due - now()))
                if self.done.is_set():
                    break
                async with self.fault_lock:
                    if self.quiet:
                        await asyncio.sleep(0.1)
                        continue
                    if restarts and due == restarts[0][0]:
                        await self.restart_node(restarts.pop(0)[1])
                    elif due == next_kill:
                        next_kill = now() + rng.uniform(*cfg.kill_every)
                        if due <= end:
                            await self.kill_worker()
                    else:
                        next_term = now() + rng.uniform(*cfg.terminate_every)
                        if due <= end:
                            if rng.random() < 0.5:
                                await self.terminate_backends()
                            else:
                                await self.terminate_on_nodes()
        finally:
            await asyncio.gather(*helpers, return_exceptions=True)

    async def mover(self, end: float) -> None:
        """Move a random shard group of the Flows tables to the other worker node, again
        and again, until ``end`` (through every other fault)."""
        ports = self.cluster.ports
        workers = ports[1:3]
        while time.time() < end and not self.done.is_set():
            await asyncio.sleep(self.rng.uniform(*self.cfg.move_every))
            if self.quiet:  # the heartbeating workflow's window: no fault of any kind
                continue
            began = time.time()
            shard = source = target = 0
            try:
                held = await self.placements()
                shard = self.rng.choice(sorted(held))
                source = held[shard]
                target = next(p for p in workers if p != source)
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo("chaos-mover"), autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(
                        "SELECT citus_move_shard_placement(%s, '127.0.0.1', %s, '127.0.0.1', %s,"
                        " shard_transfer_mode => %s)",
                        (shard, source, target, MOVE_MODE),
                    )
                self.moves.append(Move(shard, source, target, began, time.time() - began))
                self.stats.faults["shard moves (block_writes)"] += 1
            except (psycopg.Error, OSError) as exc:
                error = str(exc).splitlines()[0][:120]
                self.moves.append(Move(shard, source, target, began, time.time() - began, error))
                self.stats.faults["shard moves failed (a node was down)"] += 1
                self.log(f"move of shard {shard} failed: {error}")

    async def probe(self, end: float) -> None:
        """A write to each Flows shard key every 0.1 s; successes timed per key."""

        async def one(key: str) -> None:
            ok = self.probe_ok.setdefault(key, [])
            conn: psycopg.AsyncConnection[Any] | None = None
            statement = sql.SQL("UPDATE {}.{} SET n = n + 1 WHERE shard_key = %s").format(
                sql.Identifier(SCHEMA), sql.Identifier(PROBE_TABLE)
            )
            while time.time() < end + 5.0 and not self.done.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.conninfo("chaos-probe"), autocommit=True, connect_timeout=2
                        )
                    await conn.execute(statement, (key,))
                    ok.append(time.time())
                except (psycopg.Error, OSError):
                    if conn is not None:
                        await conn.close()
                    conn = None
                await asyncio.sleep(0.1)
            if conn is not None:
                await conn.close()

        await asyncio.gather(*(one(k) for k in self.key_shard))

    # -- after the run --

    def stall(self, key: str, down: float, up: float) -> float:
        """The longest time without a probe write to ``key`` around [down, up]."""
        times = self.probe_ok.get(key, [])
        worst = 0.0
        for a, b in itertools.pairwise(times):
            if a <= up and b >= down:
                worst = max(worst, b - a)
        return worst

    async def verify(self) -> None:
        await super().verify()
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT shard_key, extract(epoch FROM created_at)::float8, "
                    "extract(epoch FROM updated_at)::float8 FROM {}.workflows"
                ).format(sql.Identifier(SCHEMA))
            )
            rows = [(str(k), float(a), float(b)) for k, a, b in await cur.fetchall()]
        logs = {inc.pid: self.read_log(inc) for inc in self.incarnations}
        for r in self.node_restarts:
            on = [self.stall(k, r.down_at, r.up_at) for k in r.keys_on_node]
            off = [
                self.stall(k, r.down_at, r.up_at) for k in self.key_shard if k not in r.keys_on_node
            ]
            r.stall_on = max(on) if on else None
            r.stall_off = max(off) if off else None
            hit = [
                b - a for k, a, b in rows if k in r.keys_on_node and a <= r.up_at and b >= r.down_at
            ]
            r.in_flight = len(hit)
            r.in_flight_max_latency = max(hit) if hit else None
            firsts = [first_write_after(events, r.up_at) for events in logs.values()]
            r.first = min((t - r.up_at for t in firsts if t is not None), default=None)
            for inc in self.incarnations:
                events = logs[inc.pid]
                ready = next((e["t"] for e in events if e["ev"] == "ready"), None)
                gone = inc.killed or inc.exited or time.time()
                if ready is None or ready > r.down_at or gone < r.up_at + 5.0:
                    continue
                if r.up_at > self.t0 + self.cfg.start_window - 5.0:
                    continue
                r.survivors += 1
                write = first_write_after(events, r.up_at)
                if write is None or write > gone:
                    self.stats.fail(
                        f"restart of node {r.node}: worker {inc.slot} (pid {inc.pid}) lived "
                        f"through it but never wrote again (log {inc.log})"
                    )
                    continue
                r.recovered += 1
                delay = max(0.0, write - r.up_at)
                r.slowest = delay if r.slowest is None else max(r.slowest, delay)
        self.stats.sections.append(self.restart_table())
        self.stats.sections.append(self.move_table())
        if not any(not m.error for m in self.moves):
            self.stats.fail("no shard move succeeded")

    def restart_table(self) -> str:
        lines = [
            "Citus restarts       at (s)  down (s)  probe: max s without a write, its keys / "
            "other keys   in-flight wfs on its keys (max latency s)   first write after up (s)"
            "   survivors wrote again (slowest s after up)"
        ]

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        for r in self.node_restarts:
            name = "coordinator" if r.node == 0 else f"worker node {r.node}"
            keys = "all" if r.node == 0 else f"{len(r.keys_on_node)}/{len(self.key_shard)} keys"
            lines.append(
                f"  {name:<18}{r.down_at - self.t0:>7.1f}{r.up_at - r.down_at:>10.2f}  "
                f"{fmt(r.stall_on):>8} / {fmt(r.stall_off):<8} ({keys}, stop -m {r.mode})"
                f"{r.in_flight:>12} ({fmt(r.in_flight_max_latency)})"
                f"{fmt(r.first):>12}"
                f"{r.recovered:>14}/{r.survivors} ({fmt(r.slowest)})"
            )
        return "\n".join(lines)

    def move_table(self) -> str:
        ok = [m for m in self.moves if not m.error]
        failed = [m for m in self.moves if m.error]
        secs = sorted(m.seconds for m in ok)
        lines = [f"Shard moves ({MOVE_MODE}): {len(ok)} done, {len(failed)} failed"]
        if secs:
            lines.append(f"  duration: median {secs[len(secs) // 2]:.2f}s, max {secs[-1]:.2f}s")
        reasons: dict[str, int] = {}
        for m in failed:
            reasons[m.error[:80]] = reasons.get(m.error[:80], 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda x: -x[1])[:6]:
            lines.append(f"  failed {n}x: {reason}")
        return "\n".join(lines)


def run_citus(cfg: CitusConfig) -> Stats:
    """Run it, bounded: a run that outlives its window and drain by two minutes is
    cancelled (the cluster is stopped all the same) and reported as failed."""
    return asyncio.run(bounded(CitusChaos(cfg)))


async def bounded(chaos: Chaos) -> Stats:
    """``chaos.run()``, cancelled after its window and drain plus two minutes, or on
    SIGTERM (so its servers are stopped either way, not left running)."""
    limit = chaos.cfg.start_window + chaos.cfg.drain_timeout + 120.0
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await asyncio.wait_for(chaos.run(), limit)
    except TimeoutError:
        chaos.stats.fail(f"the run did not end within {limit:.0f}s (hung)")
        return chaos.stats
