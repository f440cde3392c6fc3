"""Shared helpers: statistics, PostgreSQL server and database plumbing, machine info."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# Databases the harness creates (and drops again when it made the server itself).
DATABASES = {"flows": "flowsbench_flows", "dbos": "flowsbench_dbos", "absurd": "flowsbench_absurd"}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank-with-interpolation percentile (p in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One measured number."""

    scenario: str
    adapter: str
    case: str
    metric: str
    value: float
    unit: str
    peer: str = ""
    peer_value: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.peer_value is None or not self.peer_value:
            return None
        return self.value / self.peer_value


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- PostgreSQL --


def with_dbname(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=dbname)


def sqlalchemy_url(dsn: str) -> str:
    """A SQLAlchemy URL (psycopg 3 driver) for a libpq conninfo or URI."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    user = quote(str(params.pop("user", "postgres")), safe="")
    password = params.pop("password", None)
    dbname = params.pop("dbname", "postgres")
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    auth = user + (f":{quote(str(password), safe='')}" if password else "")
    netloc = ""
    query: dict[str, str] = {k: str(v) for k, v in params.items()}
    if host.startswith("/") or not host:
        if host:
            query["host"] = host
        if port:
            query["port"] = str(port)
    else:
        netloc = host + (f":{port}" if port else "")
    q = ("?" + urlencode(query)) if query else ""
    return f"postgresql+psycopg://{auth}@{netloc}/{dbname}{q}"


class PgServer:
    """The PostgreSQL server the benchmarks use: given by --dsn, or an embedded one."""

    def __init__(self, dsn: str | None) -> None:
        self.given = dsn
        self.dsn = dsn or ""
        self.embedded_dir: Path | None = None
        self.kind = "given DSN" if dsn else "embedded (unix socket)"

    def start(self) -> str:
        if self.given:
            return self.dsn
        from flows_pg import embedded

        base = Path(tempfile.mkdtemp(prefix="flows-bench-pg-"))
        os.chmod(base, 0o755)  # the embedded server may run as its own system user
        self.embedded_dir = base / "data"
        log(f"starting embedded PostgreSQL in {self.embedded_dir}")
        self.dsn = embedded.ensure_started(self.embedded_dir)
        return self.dsn

    def stop(self) -> None:
        if self.embedded_dir is None:
            return
        from flows_pg import embedded

        with contextlib.suppress(Exception):
            embedded.stop(self.embedded_dir)
        shutil.rmtree(self.embedded_dir.parent, ignore_errors=True)
        self.embedded_dir = None

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(with_dbname(self.dsn, "postgres"), autocommit=True)

    def recreate_database(self, name: str) -> str:
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return with_dbname(self.dsn, name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def info(self) -> dict[str, str]:
        names = [
            "server_version",
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "wal_level",
            "max_connections",
            "work_mem",
            "checkpoint_timeout",
            "max_wal_size",
        ]
        out: dict[str, str] = {"server": self.kind}
        with self.admin() as conn:
            for n in names:
                out[n] = str(conn.execute(f"SHOW {n}").fetchone()[0])  # type: ignore[index]
        return out


def xact_commits(server: PgServer, dbname: str, settle: float = 0.25, limit: float = 6.0) -> int:
    """pg_stat_database.xact_commit of ``dbname`` once it stops moving.

    Statistics are flushed asynchronously (PG >= 15: by each backend at most once a
    second, and at exit). The harness measures around subprocesses, whose backends exit
    and flush; this reads (from the ``postgres`` database, so the reads themselves are
    not counted) until two reads ``settle`` seconds apart agree.
    """
    q = "SELECT xact_commit FROM pg_stat_database WHERE datname = %s"
    deadline = time.monotonic() + limit
    with server.admin() as conn:
        with contextlib.suppress(Exception):
            conn.execute("SELECT pg_stat_force_next_flush()")
        last: int | None = None
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(q, (dbname,)).fetchone()
            value = int(row[0]) if row else 0
            if value == last or time.monotonic() > deadline:
                return value
            last = value
            time.sleep(settle)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


def machine_info(server: PgServer | None) -> dict[str, str]:
    info: dict[str, str] = {
        "cpus": str(os.cpu_count()),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["flows_commit"] = head + ("+dirty" if dirty else "")
    from importlib import metadata

    for dist in ("psycopg", "dbos", "absurd-sdk", "msgspec"):
        with contextlib.suppress(Exception):
            info[dist] = metadata.version(dist)
    if server is not None:
        with contextlib.suppress(Exception):
            for k, v in server.info().items():
                info[f"pg.{k}"] = v
    return info
