"""The Citus test cluster itself: nodes, shard placement, router plans; and its discovery."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest_citus import CITUS_SHARD_COUNT, citus_test_dsn, local_citus_pg_bin
from conftest_pg import fresh_schema
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from flows_citus import _cluster

pytestmark = pytest.mark.citus


@pytest.fixture
def conn(citus_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(citus_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def schema(conn: psycopg.Connection) -> Iterator[str]:
    name = fresh_schema("cl")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_citus_version(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT citus_version()").fetchone()
    assert row is not None
    assert row[0].startswith("Citus ")


def test_coordinator_and_two_active_primary_workers(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT groupid, noderole::text, isactive FROM pg_dist_node ORDER BY groupid"
    ).fetchall()
    assert [r for r in rows if r[0] == 0], f"no coordinator in pg_dist_node: {rows}"
    workers = [r for r in rows if r[0] != 0 and r[1] == "primary" and r[2]]
    assert len(workers) == 2, rows


def test_session_shard_count_comes_from_the_dsn(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT current_setting('citus.shard_count')").fetchone()
    assert row == (str(CITUS_SHARD_COUNT),)


def test_distributed_table_spreads_and_routes(conn: psycopg.Connection, schema: str) -> None:
    table = sql.Identifier(schema, "items")
    qualified = f"{schema}.items"
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (tenant_id text NOT NULL, id bigint NOT NULL,"
            " PRIMARY KEY (tenant_id, id))"
        ).format(table)
    )
    conn.execute("SELECT create_distributed_table(%s, 'tenant_id', shard_count => 4)", [qualified])

    groups = conn.execute(
        "SELECT count(*), count(DISTINCT p.groupid), bool_and(p.groupid <> 0)"
        " FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)"
        " WHERE s.logicalrelid = %s::regclass",
        [qualified],
    ).fetchone()
    assert groups == (4, 2, True), "4 shards, placed on both workers and not the coordinator"

    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table),
            [(f"t{i % 10}", i) for i in range(100)],
        )
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (100,)

    plan = conn.execute(
        sql.SQL("EXPLAIN SELECT * FROM {} WHERE tenant_id = 'x'").format(table)
    ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "Task Count: 1" in text, text


# --- discovery (no cluster needed) ---------------------------------------------------------


def _fake_pg(root: Path, *, with_citus: bool) -> Path:
    """A PostgreSQL-looking tree without pg_config: bin/{initdb,pg_ctl,postgres}, lib, share."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    if with_citus:
        (root / "lib").mkdir()
        (root / "lib" / "citus.so").write_bytes(b"")
        (root / "share" / "extension").mkdir(parents=True)
        (root / "share" / "extension" / "citus.control").write_text("")
    return bin_dir


def test_detection_follows_flows_citus_pgbin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_citus = _fake_pg(tmp_path / "yes", with_citus=True)
    without = _fake_pg(tmp_path / "no", with_citus=False)
    assert _cluster.citus_installed(with_citus)
    assert not _cluster.citus_installed(without)
    assert not _cluster.citus_installed(tmp_path / "missing")
    monkeypatch.setenv("FLOWS_CITUS_PGBIN", str(with_citus))
    assert _cluster.pg_bin_candidates()[0] == with_citus
    assert _cluster.find_citus_pg_bin() == with_citus
    monkeypatch.setenv("FLOWS_CITUS_PGBIN", str(without))
    assert _cluster.find_citus_pg_bin() != without


def test_no_citus_gives_a_reason_that_says_how_to_enable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import conftest_citus

    monkeypatch.delenv("FLOWS_CITUS_PGBIN", raising=False)
    monkeypatch.delenv("FLOWS_CITUS_DISABLE", raising=False)
    monkeypatch.setattr(_cluster, "find_citus_pg_bin", lambda: None)
    reason = conftest_citus._local_cluster()
    assert isinstance(reason, str)
    assert "no local PostgreSQL with the citus extension installed" in reason
    assert "FLOWS_CITUS_DSN" in conftest_citus.HOW_TO_ENABLE
    monkeypatch.setenv("FLOWS_CITUS_PGBIN", "/nonexistent")
    reason = conftest_citus._local_cluster()
    assert isinstance(reason, str)
    assert "FLOWS_CITUS_PGBIN=/nonexistent" in reason


def test_citus_test_dsn_keeps_existing_options() -> None:
    plain = conninfo_to_dict(citus_test_dsn("postgresql://u@h:5/db"))
    assert plain["options"] == f"-c citus.shard_count={CITUS_SHARD_COUNT}"
    assert (plain["host"], plain["port"], plain["dbname"]) == ("h", "5", "db")
    both = conninfo_to_dict(citus_test_dsn("host=h options='-c work_mem=8MB'"))
    assert both["options"] == f"-c work_mem=8MB -c citus.shard_count={CITUS_SHARD_COUNT}"


def test_no_servers_of_ours_outlive_stop() -> None:
    """A second, short-lived cluster: started, then stopped and deleted."""
    pg_bin = local_citus_pg_bin()
    if isinstance(pg_bin, str):
        pytest.skip(pg_bin)
    base = Path("/tmp") / f"flows-citus-{os.getpid()}-{fresh_schema('x')}"
    with _cluster.LocalCitusCluster(base, pg_bin, workers=1) as cluster:
        with psycopg.connect(cluster.dsn) as c:
            assert c.execute("SELECT count(*) FROM pg_dist_node").fetchone() == (2,)
        pids = [int((base / f"n{i}" / "postmaster.pid").read_text().split()[0]) for i in range(2)]
    assert not base.exists()
    for pid in pids:
        assert not _alive(pid), f"postmaster {pid} still running"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")
