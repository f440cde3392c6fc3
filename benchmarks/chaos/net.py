"""Chaos on a faulty network: the chaos workload with every worker's store connections
going through a TCP fault proxy (``tests/net/faultproxy.py``) to the embedded PostgreSQL.

One proxy per worker slot, so a fault can hit one worker or all of them. The driver's
own connections (starts, signals, cancels, checks) and the activities' execution
records go straight to the server: only the workers' network is faulty. Faults, at
random moments during the start window (never two at once):

* latency and jitter on every worker's link for a few seconds;
* connection resets (RST) of some or all of one worker's connections, or everyone's;
* half-open connections: some of a worker's connections stop forwarding without
  closing; after a while they are reset (the client's TCP stack giving up);
* a short black hole (nothing forwarded, anywhere) of 1-3 s;
* a partition of one worker longer than the lease: the others take its leased work;
  what it sent meanwhile is delivered afterwards, late, and must be fenced off;
* once, a black hole for everyone longer than the lease.

The end checks are the PostgreSQL chaos suite's (``driver.py``), plus: every worker
that lived through a fault wrote again after it (it recovered by itself).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .driver import REPO, Chaos, Config, Stats

FAULTS = ("latency", "reset", "half-open", "black hole", "partition")


def _proxy_class() -> Any:
    path = str(REPO / "tests")
    if path not in sys.path:
        sys.path.insert(0, path)
    from net.faultproxy import FaultProxy

    return FaultProxy


@dataclass
class NetConfig(Config):
    workflows: int = 600
    start_window: float = 60.0
    restarts: int = 0
    net_every: tuple[float, float] = (1.5, 4.0)  # gap between network faults
    kills: bool = False  # also SIGKILL workers now and then
    label: str = "faulty network"

    @classmethod
    def reduced(cls, **overrides: Any) -> NetConfig:
        base: dict[str, Any] = dict(
            workflows=150, start_window=40.0, drain_timeout=60.0, max_latency=60.0
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class NetFault:
    kind: str
    slots: list[int]  # the workers whose links it hit
    start: float
    end: float = 0.0
    detail: str = ""
    pids: list[int] = field(default_factory=list)
    recovered: int = 0
    survivors: int = 0
    slowest: float | None = None  # s from the fault's end to the slowest survivor's write
    overlapped: bool = False  # a worker wrote again only after the next fault began


class NetChaos(Chaos):
    cfg: NetConfig

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config)
        self.proxies: dict[int, Any] = {}
        self.net_faults: list[NetFault] = []
        self.kinds: list[str] = []

    async def prepare_schema(self) -> None:
        await super().prepare_schema()
        params = conninfo_to_dict(self.dsn)
        socket_path = f"{params['host']}/.s.PGSQL.{params.get('port') or 5432}"
        proxy_class = _proxy_class()
        for slot in range(self.cfg.workers):
            proxy = proxy_class(unix_path=socket_path, seed=self.cfg.seed * 100 + slot)
            await proxy.start()
            self.proxies[slot] = proxy

    def worker_dsn(self, slot: int) -> str:
        return make_conninfo(
            self.dsn,
            host="127.0.0.1",
            port=self.proxies[slot].port,
            application_name=f"chaos-worker-{slot}",
        )

    def pids_of(self, slots: list[int]) -> list[int]:
        return [inc.pid for inc in self.slots.values() if inc.slot in slots]

    # -- faults --

    async def net_fault(self, kind: str) -> None:
        cfg, rng = self.cfg, self.rng
        lease = cfg.lease
        one = [rng.choice(list(self.proxies))]
        everyone = list(self.proxies)
        if kind == "latency":
            latency, jitter = rng.uniform(0.005, 0.05), rng.uniform(0.0, 0.03)
            detail = f"+{latency * 1e3:.0f} ms, jitter {jitter * 1e3:.0f}"
            fault = self.begin(kind, everyone, detail)
            for proxy in self.proxies.values():
                proxy.set_latency(latency, jitter)
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            for proxy in self.proxies.values():
                proxy.set_latency(0.0)
        elif kind == "reset":
            slots = everyone if rng.random() < 0.3 else one
            fraction = rng.choice((0.5, 1.0))
            fault = self.begin(kind, slots)
            n = sum(self.proxies[s].reset(fraction) for s in slots)
            fault.detail = f"{n} connections"
            self.stats.faults["connections reset"] += n
        elif kind == "half-open":
            hang = rng.uniform(0.5, 2.0) * lease
            fault = self.begin(kind, one)
            n = self.proxies[one[0]].half_open(0.5, hang)
            fault.detail = f"{n} connections, reset after {hang:.1f}s"
            self.stats.faults["connections half-open"] += n
            await asyncio.sleep(hang)
        elif kind == "black hole":
            seconds = rng.uniform(1.0, 3.0)
            fault = self.begin(kind, everyone, f"{seconds:.1f}s")
            await asyncio.gather(*(p.black_hole(seconds) for p in self.proxies.values()))
        elif kind == "partition":
            seconds = rng.uniform(1.5, 2.5) * lease
            fault = self.begin(kind, one, f"{seconds:.1f}s (lease {lease}s)")
            await self.proxies[one[0]].black_hole(seconds)
        elif kind == "black hole > lease":
            seconds = 2.0 * lease + 1.0
            fault = self.begin(kind, everyone, f"{seconds:.1f}s (lease {lease}s)")
            await asyncio.gather(*(p.black_hole(seconds) for p in self.proxies.values()))
        else:
            raise ValueError(kind)
        fault.end = time.time()
        self.stats.faults[kind] += 1
        self.stats.timeline.append((fault.start, "net", fault))
        self.log(f"net fault {kind} on workers {fault.slots}: {fault.detail}")

    def begin(self, kind: str, slots: list[int], detail: str = "") -> NetFault:
        fault = NetFault(kind, slots, time.time(), detail=detail, pids=self.pids_of(slots))
        self.net_faults.append(fault)
        return fault

    def next_kind(self) -> str:
        """Every kind in turn, in a shuffled order each round (so a run sees them all)."""
        if not self.kinds:
            self.kinds = list(FAULTS)
            self.rng.shuffle(self.kinds)
        return self.kinds.pop()

    async def inject(self) -> None:
        cfg, rng = self.cfg, self.rng
        start = self.t0 + 1.5
        end = self.t0 + cfg.start_window
        # Always, whatever the dice say: half-open connections, one worker cut off for
        # longer than the lease, and everyone cut off for longer than the lease.
        fixed = [
            (self.t0 + cfg.start_window * 0.15, "half-open"),
            (self.t0 + cfg.start_window * 0.3, "partition"),
            (self.t0 + cfg.start_window * 0.55, "black hole > lease"),
        ]
        next_kill = start + rng.uniform(*cfg.kill_every) if cfg.kills else float("inf")
        next_net = start + rng.uniform(*cfg.net_every)
        while not self.done.is_set():
            due = min(next_kill, next_net, *(at for at, _ in fixed[:1]))
            if due > end and not fixed:
                break
            await asyncio.sleep(max(0.0, due - time.time()))
            if self.done.is_set():
                break
            async with self.fault_lock:
                if self.quiet:
                    await asyncio.sleep(0.1)
                    continue
                if fixed and due == fixed[0][0]:
                    await self.net_fault(fixed.pop(0)[1])
                    next_net = max(next_net, time.time() + rng.uniform(*cfg.net_every))
                elif due == next_kill:
                    if due <= end:
                        await self.kill_worker()
                    next_kill = time.time() + rng.uniform(*cfg.kill_every)
                else:
                    if due <= end:
                        await self.net_fault(self.next_kind())
                    next_net = time.time() + rng.uniform(*cfg.net_every)

    def cause_of_rerun(self, pid: int, at: float) -> str:
        cause = super().cause_of_rerun(pid, at)
        if cause != "unexplained":
            return cause
        window = 3 * self.cfg.lease + 5.0
        for fault in self.net_faults:
            if pid in fault.pids and fault.start - window <= at <= fault.end + 0.5:
                return "terminate"  # counted with the connection faults
        return cause

    # -- recovery --

    def check_recovery(self, execs: list[tuple[str, int, str, int, int, float]]) -> None:
        super().check_recovery(execs)
        st = self.stats
        work_until = self.t0 + self.cfg.start_window  # workflows are still being started
        horizon = 3.0
        for n, fault in enumerate(self.net_faults):
            later = [f.start for f in self.net_faults[n + 1 :] if set(f.slots) & set(fault.slots)]
            next_start = min(later, default=float("inf"))
            for inc in self.incarnations:
                if inc.slot not in fault.slots:
                    continue
                events = self.read_log(inc)
                ready = next((e["t"] for e in events if e["ev"] == "ready"), None)
                gone = inc.killed or inc.exited or time.time()
                if ready is None or ready > fault.start or gone < fault.end + horizon:
                    continue
                if fault.end > work_until - horizon:
                    continue  # too little work left after it to tell
                write = first_write_after(events, fault.end)
                if write is None:
                    st.fail(
                        f"{fault.kind} at {fault.start - self.t0:.1f}s: worker {inc.slot} "
                        f"(pid {inc.pid}) never wrote again (log {inc.log})"
                    )
                    fault.survivors += 1
                    continue
                if write > next_start:
                    fault.overlapped = True  # the next fault came first: not measured
                    continue
                fault.survivors += 1
                fault.recovered += 1
                delay = max(0.0, write - fault.end)
                fault.slowest = delay if fault.slowest is None else max(fault.slowest, delay)
        st.sections.append(net_table(self.net_faults, self.t0))


def first_write_after(events: list[dict[str, Any]], when: float) -> float | None:
    """When the worker first wrote after ``when``: an ok/resume line, or else the first
    stats line (one a second) whose write count grew past the count at ``when``."""
    marks = [e["t"] for e in events if e["ev"] in ("ok", "resume") and e["t"] > when]
    stats = [e for e in events if e["ev"] == "stats"]
    before = max((int(e["writes"]) for e in stats if e["t"] <= when), default=0)
    grew = next((e["t"] for e in stats if e["t"] > when and int(e["writes"]) > before), None)
    candidates = [t for t in (*marks[:1], grew) if t is not None]
    return min(candidates) if candidates else None


def net_table(faults: list[NetFault], t0: float) -> str:
    lines = [
        "Network faults      at (s)  length (s)  workers  detail"
        "                                   recovered  slowest first write after (s)"
    ]
    for f in faults:
        slowest = "-" if f.slowest is None else f"{f.slowest:.2f}"
        recovered = f"{f.recovered}/{f.survivors}" if f.survivors else "-"
        if f.overlapped:
            recovered += "*"
        lines.append(
            f"  {f.kind:<18}{f.start - t0:>6.1f}{f.end - f.start:>12.2f}  "
            f"{','.join(map(str, f.slots)):<8} {f.detail:<40}{recovered:>9}  {slowest:>10}"
        )
    lines.append(
        "  (-: too close to the end of the workload to tell; *: some worker wrote again only "
        "after the next fault began)"
    )
    kinds = Counter(f.kind for f in faults)
    lines.append("  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return "\n".join(lines)


def run_net(cfg: NetConfig) -> Stats:
    async def go() -> Stats:
        from .citus import bounded

        chaos = NetChaos(cfg)
        try:
            return await bounded(chaos)
        finally:
            for proxy in chaos.proxies.values():
                await proxy.close()

    return asyncio.run(go())
