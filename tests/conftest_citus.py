"""Citus fixtures and helpers, shared by tests/citus and the contract suite.

* ``citus_dsn`` (session): a Citus coordinator DSN, found in this order:

  1. ``$FLOWS_CITUS_DSN`` (must be reachable and have the citus extension, else skip);
  2. a ``citusdata/citus`` coordinator and two workers in Docker (testcontainers), when a
     Docker engine answers (image: ``$FLOWS_CITUS_IMAGE``, default ``citusdata/citus:13.0.3``);
  3. a local 3-node cluster (``flows_citus._cluster.LocalCitusCluster``) in a temporary
     directory under /tmp, from the first PostgreSQL with Citus installed
     (``$FLOWS_CITUS_PGBIN``, ``pg_config`` on PATH, /usr/lib/postgresql/*/bin);

  otherwise the Citus tests skip, saying how to enable them. ``FLOWS_CITUS_DISABLE=1``
  skips them outright; ``FLOWS_CITUS_REQUIRE=1`` (set by .ci/run when Citus is installed)
  turns every such skip into a failure. The DSN carries ``options=-c citus.shard_count=4``
  (see ``citus_test_dsn``).
* ``make_citus_store(dsn)``: an opened ``CitusStore`` on a fresh, migrated schema (close it,
  and drop the schema, with ``drop_citus_store``).

Use from a conftest: ``from conftest_citus import make_citus_store  # noqa: F401``;
``citus_dsn`` itself is exported once, from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest_pg import fresh_schema

__all__ = [
    "CITUS_SHARD_COUNT",
    "citus_dsn",
    "citus_test_dsn",
    "drop_citus_store",
    "local_citus_pg_bin",
    "make_citus_store",
]

CITUS_SHARD_COUNT = 4
"""``citus.shard_count`` for test sessions: small (fast DDL) yet spread over both workers."""

DEFAULT_IMAGE = "citusdata/citus:13.0.3"

HOW_TO_ENABLE = (
    "to run the Citus tests: set FLOWS_CITUS_DSN to a Citus coordinator, or run a Docker engine"
    " (testcontainers starts citusdata/citus), or install the citus extension into a local"
    " PostgreSQL (FLOWS_CITUS_PGBIN=<its bin dir> if it is not found on PATH or in"
    " /usr/lib/postgresql/*/bin)"
)


def citus_test_dsn(dsn: str) -> str:
    """``dsn`` with ``-c citus.shard_count=4`` added to its ``options`` (kept if present)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    extra = f"-c citus.shard_count={CITUS_SHARD_COUNT}"
    options = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{options} {extra}" if options else extra)


def _check_citus(dsn: str) -> str:
    """``citus_version()`` of the server at ``dsn`` (raises if unreachable or no Citus)."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
        if row is None:
            raise RuntimeError("the citus extension is not created in that database")
        version = conn.execute("SELECT citus_version()").fetchone()
        return str(version[0]) if version else str(row[0])


def _skip(reason: str) -> None:
    if os.environ.get("FLOWS_CITUS_REQUIRE") == "1":
        pytest.fail(f"FLOWS_CITUS_REQUIRE=1 but no Citus cluster: {reason}", pytrace=False)
    pytest.skip(reason)


# --- Docker ------------------------------------------------------------------------------


def _docker_endpoint_answers(timeout: float = 1.0) -> bool:
    """A quick look for a Docker engine: DOCKER_HOST, else the usual Unix sockets."""
    host = os.environ.get("DOCKER_HOST", "")
    candidates: list[tuple[int, Any]] = []
    if host.startswith(("tcp://", "http://", "https://")):
        url = urlparse(host)
        candidates.append((socket.AF_INET, (url.hostname or "127.0.0.1", url.port or 2375)))
    elif host.startswith("unix://"):
        candidates.append((socket.AF_UNIX, host[len("unix://") :]))
    elif host:
        return False  # ssh:// or npipe://: not worth a slow probe here
    else:
        home = Path.home()
        for path in (
            Path("/var/run/docker.sock"),
            home / ".docker/run/docker.sock",
            home / ".docker/desktop/docker.sock",
            Path(f"/run/user/{os.getuid()}/docker.sock"),
        ):
            if path.exists():
                candidates.append((socket.AF_UNIX, str(path)))
    for family, address in candidates:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            return True
    return False


def _docker_available() -> bool:
    """testcontainers is installed and a Docker engine answers a ping within seconds."""
    import importlib.util

    if importlib.util.find_spec("testcontainers") is None or not _docker_endpoint_answers():
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _docker_cluster() -> Iterator[str]:
    """A citusdata/citus coordinator plus two workers on a private Docker network."""
    import psycopg
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    image = os.environ.get("FLOWS_CITUS_IMAGE", DEFAULT_IMAGE)
    names = ["citus-coordinator", "citus-worker-1", "citus-worker-2"]
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(Network())
        containers = []
        for name in names:
            container = (
                DockerContainer(image)
                .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
                .with_env("POSTGRES_PASSWORD", "postgres")
                .with_command(
                    "-c fsync=off -c full_page_writes=off -c max_prepared_transactions=200"
                )
                .with_exposed_ports(5432)
                .with_network(network)
                .with_network_aliases(name)
            )
            containers.append(stack.enter_context(container))
        dsns = [
            f"postgresql://postgres@{c.get_container_host_ip()}:{c.get_exposed_port(5432)}/postgres"
            for c in containers
        ]
        # The image's entrypoint runs a temporary server first: wait for the real one.
        deadline = time.monotonic() + 120
        for dsn in dsns:
            while True:
                try:
                    _check_citus(dsn)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        with psycopg.connect(dsns[0], autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host(%s, 5432)", [names[0]])
            for name in names[1:]:
                conn.execute("SELECT citus_add_node(%s, 5432)", [name])
        yield dsns[0]


# --- the fixture ------------------------------------------------------------------------


def local_citus_pg_bin() -> Path | str:
    """The bin dir of the local PostgreSQL with Citus to use, or why there is none."""
    if os.environ.get("FLOWS_CITUS_DISABLE") == "1":
        return "Citus tests disabled by FLOWS_CITUS_DISABLE=1"
    try:
        from flows_citus._cluster import citus_installed, find_citus_pg_bin
    except ImportError as exc:
        return f"flows_citus._cluster cannot be imported ({exc})"
    env = os.environ.get("FLOWS_CITUS_PGBIN")
    if env and not citus_installed(Path(env).expanduser()):
        # Asked for this one: do not quietly run another PostgreSQL instead.
        return f"FLOWS_CITUS_PGBIN={env} holds no PostgreSQL server with Citus installed"
    pg_bin = find_citus_pg_bin()
    if pg_bin is None:
        return "no local PostgreSQL with the citus extension installed was found"
    return pg_bin


def _local_cluster() -> tuple[str, Callable[[], None]] | str:
    """(DSN, stop) of a local cluster, or the reason why there is none."""
    pg_bin = local_citus_pg_bin()
    if isinstance(pg_bin, str):
        return pg_bin
    from flows_citus._cluster import LocalCitusCluster

    tmp = "/tmp" if Path("/tmp").is_dir() else None  # reachable by the postgres user
    base = Path(tempfile.mkdtemp(prefix="flows-citus-", dir=tmp))
    cluster = LocalCitusCluster(base, pg_bin, workers=2)
    try:
        dsn = cluster.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            cluster.stop(delete=True)
        return f"a local Citus cluster from {pg_bin} did not start: {exc}"
    return dsn, cluster.stop


@pytest.fixture(scope="session")
def citus_dsn() -> Iterator[str]:
    """A Citus coordinator DSN (with ``citus.shard_count=4``) for the whole session."""
    if os.environ.get("FLOWS_CITUS_DISABLE") == "1":
        pytest.skip("Citus tests disabled by FLOWS_CITUS_DISABLE=1")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip("psycopg is not installed (pip install 'flows[citus]')")
    env = os.environ.get("FLOWS_CITUS_DSN")
    if env:
        try:
            _check_citus(env)
        except Exception as exc:
            _skip(f"FLOWS_CITUS_DSN is set but is not a usable Citus coordinator: {exc}")
        yield citus_test_dsn(env)
        return
    with contextlib.ExitStack() as stack:
        dsn: str | None = None
        reasons: list[str] = []
        if _docker_available():
            try:
                dsn = stack.enter_context(_docker_cluster())
            except Exception as exc:
                reasons.append(f"Citus in Docker did not start ({exc})")
        if dsn is None:
            found = _local_cluster()
            if isinstance(found, str):
                _skip("; ".join([*reasons, found, HOW_TO_ENABLE]))
                return
            dsn, stop = found
            stack.callback(stop)
        yield citus_test_dsn(dsn)


# --- stores -----------------------------------------------------------------------------


async def make_citus_store(dsn: str, schema: str | None = None, **kwargs: Any) -> Any:
    """An opened CitusStore on a freshly migrated, distributed schema (new unless given)."""
    from flows_citus import CitusStore

    store = CitusStore(dsn, schema=schema or fresh_schema("c"), **kwargs)
    await store.open()
    try:
        await store.migrate(shards=8, sharding="tenant")
    except BaseException:
        await store.close()
        raise
    return store


async def drop_citus_store(store: Any) -> None:
    """Close ``store`` and drop its schema (with its distributed tables)."""
    import psycopg
    from psycopg import sql

    conninfo = getattr(store, "_conninfo", None) or store.pool.conninfo
    await store.close()
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store.schema))
        )
