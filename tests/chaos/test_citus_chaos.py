"""The Citus chaos run at CI size (``python -m benchmarks.chaos --citus --reduced``): 120
workflows of mixed shapes on three worker processes against a local 3-node Citus
cluster of its own, while worker nodes and the coordinator restart, backends are
terminated on the coordinator and on the nodes, workers are SIGKILLed, and shard groups
move between the worker nodes (block_writes) throughout. About a minute and a half.
Skips without a local PostgreSQL that has Citus (fails then under FLOWS_CITUS_REQUIRE=1)."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.citus, pytest.mark.slow]


def test_citus_chaos_reduced() -> None:
    from conftest_citus import local_citus_pg_bin

    found = local_citus_pg_bin()
    if isinstance(found, str):
        if os.environ.get("FLOWS_CITUS_REQUIRE") == "1":
            pytest.fail(f"FLOWS_CITUS_REQUIRE=1 but no local Citus: {found}", pytrace=False)
        pytest.skip(f"the Citus chaos run starts its own local cluster: {found}")
    from benchmarks.chaos import report
    from benchmarks.chaos.citus import CitusConfig, run_citus

    cfg = CitusConfig.reduced(verbose=False)
    stats = run_citus(cfg)
    text = report(cfg, stats)
    print(text)
    if stats.failures:
        pytest.fail(text, pytrace=False)
    assert stats.faults["worker node restart"] == cfg.node_restarts, text
    assert stats.faults["coordinator restart"] == cfg.coordinator_restarts, text
    assert stats.faults["shard moves (block_writes)"] >= 3, text
    assert stats.faults["worker SIGKILL"] >= 2, text
    assert stats.numbers["tasks left"] == 0, text
