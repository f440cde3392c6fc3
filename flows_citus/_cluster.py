"""A throwaway local Citus cluster (one coordinator, N workers) for tests and development.

::

    from flows_citus._cluster import LocalCitusCluster, find_citus_pg_bin

    pg_bin = find_citus_pg_bin()          # None: no PostgreSQL here has Citus installed
    with LocalCitusCluster(Path("/tmp/my-citus"), pg_bin) as cluster:
        dsn = cluster.dsn                 # postgresql://postgres@127.0.0.1:<port>/postgres
        host, port = cluster.add_worker()  # one more node, Citus created, NOT yet added:
        # on the coordinator: SELECT citus_add_node(host, port); SELECT citus_rebalance_start()

Every node is a separate PostgreSQL server in ``base_dir/n<i>`` (node 0 is the
coordinator) on a free TCP port on 127.0.0.1, with trust authentication, started with
``pg_ctl``. PostgreSQL refuses to run as root: as root, the servers run as the
``postgres`` OS user and own ``base_dir`` (which must then be reachable by that user,
e.g. a directory under /tmp). The servers outlive the Python process unless stopped:
call ``stop()``, use the cluster as a context manager, or rely on the ``atexit`` hook
that ``start()`` registers (not run on SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "CitusClusterError",
    "LocalCitusCluster",
    "citus_installed",
    "find_citus_pg_bin",
    "pg_bin_candidates",
]

SERVER_USER = "postgres"
"""The OS user the servers run as when the caller is root."""

_PG_CTL_TIMEOUT = 60
_CMD_TIMEOUT = 120
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

_NODE_CONF = """
# --- flows_citus local test cluster ---
shared_preload_libraries = 'citus'
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sock}'
max_connections = 200
max_prepared_transactions = 200
wal_level = logical
fsync = off
synchronous_commit = off
full_page_writes = off
citus.enable_statistics_collection = off
"""


class CitusClusterError(RuntimeError):
    """A cluster command failed; the message names it and ends with its log's tail."""


# --- detection --------------------------------------------------------------------------


def _pg_config(pg_config: Path, *args: str) -> list[str] | None:
    """The output lines of ``pg_config args...``, or None if it cannot be run."""
    try:
        out = subprocess.run(
            [str(pg_config), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.splitlines()
    return lines if len(lines) == len(args) else None


def _major_key(path: Path) -> tuple[int, ...]:
    """Sort key of a /usr/lib/postgresql/<major>/bin dir: its version, numerically."""
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (-1,)


def pg_bin_candidates() -> list[Path]:
    """PostgreSQL bin dirs to look at, in order: ``$FLOWS_CITUS_PGBIN``, the ``pg_config``
    on PATH (its own dir, then its ``--bindir``), /usr/lib/postgresql/*/bin newest first."""
    found: list[Path] = []
    env = os.environ.get("FLOWS_CITUS_PGBIN")
    if env:
        found.append(Path(env).expanduser())
    on_path = shutil.which("pg_config")
    if on_path:
        found.append(Path(on_path).resolve().parent)
        bindir = _pg_config(Path(on_path), "--bindir")
        if bindir:
            found.append(Path(bindir[0]))
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_key, reverse=True))
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def _citus_files(pg_bin: Path) -> list[tuple[Path, Path]]:
    """Candidate (citus.so, citus.control) locations for the PostgreSQL in ``pg_bin``."""
    pg_config = pg_bin / "pg_config"
    if pg_config.is_file():
        dirs = _pg_config(pg_config, "--pkglibdir", "--sharedir")
        if dirs:
            return [(Path(dirs[0]) / "citus.so", Path(dirs[1]) / "extension" / "citus.control")]
    root = pg_bin.parent
    places = [(root / "lib" / "citus.so", root / "share" / "extension" / "citus.control")]
    if root.parent == Path("/usr/lib/postgresql"):  # Debian: /usr/lib/postgresql/<major>/bin
        share = Path("/usr/share/postgresql") / root.name / "extension" / "citus.control"
        places.append((root / "lib" / "citus.so", share))
    return places


def citus_installed(pg_bin: Path) -> bool:
    """Whether ``pg_bin`` holds a PostgreSQL server with the Citus extension installed."""
    if not all(os.access(pg_bin / name, os.X_OK) for name in _SERVER_BINARIES):
        return False
    return any(lib.is_file() and control.is_file() for lib, control in _citus_files(pg_bin))


def find_citus_pg_bin() -> Path | None:
    """The first PostgreSQL bin dir (see ``pg_bin_candidates``) that has Citus installed."""
    for pg_bin in pg_bin_candidates():
        if citus_installed(pg_bin):
            return pg_bin
    return None


# --- helpers ----------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _conf_value(value: str) -> str:
    """``value`` as a quoted postgresql.conf string."""
    escaped = str(value).replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log {path})"


def _traversal_problem(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first ancestor of ``path`` the user ``uid`` cannot enter, if any."""
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except OSError:
            return parent
        mode = st.st_mode
        if st.st_uid == uid:
            ok = bool(mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            return parent
    return None


class _Node:
    """One PostgreSQL server of the cluster."""

    def __init__(self, base_dir: Path, index: int, port: int) -> None:
        self.index = index
        self.port = port
        self.data = base_dir / f"n{index}"
        self.log = base_dir / f"n{index}.log"

    @property
    def name(self) -> str:
        return "coordinator" if self.index == 0 else f"worker {self.index}"

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


# --- the cluster ------------------------------------------------------------------------


class LocalCitusCluster:
    """A coordinator and ``workers`` worker nodes under ``base_dir``, run from ``pg_bin``.

    ``settings`` (name -> value) are added to every node's postgresql.conf, after the
    cluster's own, e.g. ``{"wal_retrieve_retry_interval": "200ms"}``.
    """

    def __init__(
        self,
        base_dir: Path,
        pg_bin: Path,
        workers: int = 2,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError("workers must be >= 0")
        self.base_dir = Path(base_dir).absolute()
        self.pg_bin = Path(pg_bin)
        self.workers = workers
        self.settings = dict(settings or {})
        for name, value in self.settings.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) or "\n" in str(value):
                raise ValueError(f"not a postgresql.conf setting: {name!r} = {value!r}")
        self._nodes: list[_Node] = []
        self._started = False
        self._user: pwd.struct_passwd | None = None
        self.start_seconds: float | None = None
        """How long the last ``start()`` took."""

    # public API

    @property
    def dsn(self) -> str:
        """The coordinator's DSN (``postgresql://postgres@127.0.0.1:<port>/postgres``)."""
        if not self._started:
            raise CitusClusterError("the Citus cluster is not started")
        return self._nodes[0].dsn()

    @property
    def ports(self) -> list[int]:
        """The nodes' ports, coordinator first (then the workers, added ones last)."""
        return [node.port for node in self._nodes]

    @property
    def node_dsns(self) -> list[str]:
        """Each node's own DSN, in the order of ``ports``."""
        return [node.dsn() for node in self._nodes]

    def add_worker(self) -> tuple[str, int]:
        """initdb and start one more node, configured like the others, with the citus
        extension created; return ``(host, port)`` where it listens.

        The node is NOT added to the cluster: that is the caller's step, as it would be
        in production (on the coordinator, ``SELECT citus_add_node(host, port)``, then
        ``SELECT citus_rebalance_start()`` to move shards onto it). ``stop()`` stops it
        with the others. On failure the new node is stopped and ``CitusClusterError``
        raised; the cluster itself is left as it was.
        """
        if not self._started:
            raise CitusClusterError("the Citus cluster is not started")
        taken = set(self.ports)
        port = next(p for p in _free_ports(len(taken) + 1) if p not in taken)
        index = max(node.index for node in self._nodes) + 1
        while (self.base_dir / f"n{index}").exists():  # left by a failed add_worker()
            index += 1
        node = _Node(self.base_dir, index, port)
        self._nodes.append(node)
        try:
            self._initdb([node])
            self._start_servers([node])
            self._run_sql(node, "CREATE EXTENSION IF NOT EXISTS citus")
        except BaseException:
            self._stop_nodes(quiet=True, nodes=[node])
            self._nodes.remove(node)
            raise
        return "127.0.0.1", node.port

    def start(self) -> str:
        """initdb, start and wire up every node; return the coordinator DSN.

        On failure the nodes already started are stopped (their files kept, for the logs)
        and a ``CitusClusterError`` is raised.
        """
        if self._started:
            return self.dsn
        t0 = time.monotonic()
        if not citus_installed(self.pg_bin):
            raise CitusClusterError(f"no PostgreSQL server with Citus installed in {self.pg_bin}")
        self._prepare_base_dir()
        self._nodes = [
            _Node(self.base_dir, i, port) for i, port in enumerate(_free_ports(self.workers + 1))
        ]
        atexit.register(self._atexit)
        try:
            self._initdb()
            self._start_servers()
            self._setup_citus()
        except BaseException:
            self._stop_nodes(quiet=True)
            atexit.unregister(self._atexit)
            raise
        self._started = True
        self.start_seconds = time.monotonic() - t0
        return self.dsn

    def stop(self, delete: bool = True) -> None:
        """Stop every node (fast shutdown); ``delete`` also removes ``base_dir``.

        ``base_dir`` is kept if a node could not be stopped (the error says which).
        """
        atexit.unregister(self._atexit)
        self._started = False
        errors = self._stop_nodes(quiet=False)
        if errors:
            raise CitusClusterError("; ".join(errors))
        if delete:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalCitusCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"LocalCitusCluster({str(self.base_dir)!r}, ports={self.ports}, {state})"

    # steps

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        try:
            self._user = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise CitusClusterError(
                f"running as root, but there is no {SERVER_USER!r} OS user to run PostgreSQL"
                " as (PostgreSQL refuses to run as root): create it, e.g."
                f" `useradd --system {SERVER_USER}`"
            ) from None
        user = self._user
        gids = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
        blocked = _traversal_problem(self.base_dir, user.pw_uid, gids)
        if blocked is not None:
            raise CitusClusterError(
                f"{blocked} is not traversable by the {SERVER_USER!r} user, so it cannot use"
                f" {self.base_dir}: put the cluster under /tmp"
            )
        os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        os.chmod(self.base_dir, 0o700)

    def _initdb(self, nodes: list[_Node] | None = None) -> None:
        nodes = self._nodes if nodes is None else nodes
        procs = []
        for node in nodes:
            cmd = [
                str(self.pg_bin / "initdb"),
                "-D", str(node.data),
                "-U", "postgres",
                "-A", "trust",
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
            ]  # fmt: skip
            log = self.base_dir / f"initdb-n{node.index}.log"
            procs.append((cmd, [log], self._spawn(cmd, log)))
        self._wait_all(procs)
        for node in nodes:
            conf = _NODE_CONF.format(port=node.port, sock=self.base_dir)
            conf += "".join(f"{name} = {_conf_value(v)}\n" for name, v in self.settings.items())
            with (node.data / "postgresql.conf").open("a") as f:
                f.write(conf)

    def _start_servers(self, nodes: list[_Node] | None = None) -> None:
        """pg_ctl start every node (of ``nodes``, default all); a node whose port was
        taken meanwhile gets another."""
        pending = list(self._nodes if nodes is None else nodes)
        for attempt in range(3):
            procs = []
            log_sizes = {}
            for node in pending:
                log_sizes[node.index] = node.log.stat().st_size if node.log.exists() else 0
                cmd = self._pg_ctl(node, "start", "-l", str(node.log))
                out = self.base_dir / f"pg_ctl-n{node.index}.log"
                procs.append((cmd, [out, node.log], self._spawn(cmd, out)))
            failures = self._wait(procs)
            if not failures:
                return
            retry = []
            for i, message in failures:
                node = pending[i]
                fresh_log = ""
                with contextlib.suppress(OSError), node.log.open("rb") as f:
                    f.seek(log_sizes[node.index])
                    fresh_log = f.read().decode(errors="replace")
                if attempt == 2 or "Address already in use" not in fresh_log:
                    raise CitusClusterError(message)
                retry.append(node)
            taken = set(self.ports)
            fresh = [p for p in _free_ports(len(retry) + len(taken)) if p not in taken]
            for node, port in zip(retry, fresh, strict=False):
                node.port = port
                with (node.data / "postgresql.conf").open("a") as f:
                    f.write(f"port = {port}\n")
            pending = retry

    def _run_sql(self, node: _Node, *statements: str) -> None:
        """Run ``statements`` on ``node`` (autocommit); CitusClusterError if one fails."""
        import psycopg

        try:
            with psycopg.connect(node.dsn(), autocommit=True, connect_timeout=30) as conn:
                for statement in statements:
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise CitusClusterError(
                f"{node.name} on port {node.port}: {statements!r} failed: {exc}\n"
                f"--- {node.log}:\n{_tail(node.log)}"
            ) from exc

    def _setup_citus(self) -> None:
        run = self._run_sql

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self._nodes)) as pool:
            futures = [
                pool.submit(run, n, "CREATE EXTENSION IF NOT EXISTS citus") for n in self._nodes
            ]
            for future in futures:
                future.result()
        coordinator = self._nodes[0]
        run(
            coordinator,
            f"SELECT citus_set_coordinator_host('127.0.0.1', {coordinator.port})",
            *(f"SELECT citus_add_node('127.0.0.1', {n.port})" for n in self._nodes[1:]),
        )

    def _stop_nodes(self, *, quiet: bool, nodes: list[_Node] | None = None) -> list[str]:
        """pg_ctl stop (fast, then immediate) every node (of ``nodes``, default all) that
        has a postmaster.pid."""
        errors: list[str] = []
        for node in self._nodes if nodes is None else nodes:
            if not (node.data / "postmaster.pid").exists():
                continue
            log = self.base_dir / f"pg_ctl-stop-n{node.index}.log"
            for mode in ("fast", "immediate"):
                cmd = self._pg_ctl(node, "stop", "-m", mode)
                try:
                    rc = self._spawn(cmd, log).wait(timeout=_PG_CTL_TIMEOUT + 10)
                except subprocess.TimeoutExpired:
                    rc = -1
                if rc == 0 or not self._running(node):
                    break
            else:
                errors.append(
                    f"could not stop the {node.name} ({node.data}): {' '.join(cmd)}\n"
                    f"--- {log}:\n{_tail(log)}"
                )
        if quiet:
            return []
        return errors

    def _running(self, node: _Node) -> bool:
        """Whether ``pg_ctl status`` sees a server on ``node`` (exit code 3: none)."""
        if not (node.data / "postmaster.pid").exists():
            return False
        cmd = [str(self.pg_bin / "pg_ctl"), "-D", str(node.data), "status"]
        log = self.base_dir / f"pg_ctl-status-n{node.index}.log"
        try:
            return self._spawn(cmd, log).wait(timeout=30) != 3
        except subprocess.TimeoutExpired:
            return True

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(delete=True)

    # process plumbing

    def _pg_ctl(self, node: _Node, action: str, *args: str) -> list[str]:
        return [
            str(self.pg_bin / "pg_ctl"),
            "-D", str(node.data),
            "-w", "-t", str(_PG_CTL_TIMEOUT),
            *args,
            action,
        ]  # fmt: skip

    def _spawn(self, cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``cmd`` (as the server user when root), its output appended to ``log``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
            env.update(HOME=self._user.pw_dir, USER=self._user.pw_name, LOGNAME=self._user.pw_name)
        out: IO[bytes] = log.open("ab")
        try:
            if self._user is not None:
                os.chown(log, self._user.pw_uid, self._user.pw_gid)
            return subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=env,
                **kwargs,
            )
        except OSError as exc:
            raise CitusClusterError(f"could not run {' '.join(cmd)}: {exc}") from exc
        finally:
            out.close()

    def _wait_all(self, procs: list[tuple[list[str], list[Path], subprocess.Popen[bytes]]]) -> None:
        """Wait for every process; raise for the first that failed, naming it and its logs."""
        failures = self._wait(procs)
        if failures:
            raise CitusClusterError(failures[0][1])

    def _wait(
        self, procs: list[tuple[list[str], list[Path], subprocess.Popen[bytes]]]
    ) -> list[tuple[int, str]]:
        """Wait for every process; (position, message with its logs' tails) of the failed."""
        failures: list[tuple[int, str]] = []
        for i, (cmd, logs, proc) in enumerate(procs):
            try:
                rc = proc.wait(timeout=_CMD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
            if rc != 0:
                what = "timed out" if rc is None else f"exited with {rc}"
                tails = "".join(f"\n--- {log}:\n{_tail(log)}" for log in logs)
                failures.append((i, f"{' '.join(cmd)} {what}{tails}"))
        return failures
