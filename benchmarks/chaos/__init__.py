"""Chaos suite: ``python -m benchmarks.chaos`` (``--reduced`` for the CI size).

Runs about a thousand workflows of mixed shapes on three worker processes while
SIGKILLing workers, terminating their connections and restarting PostgreSQL, then
checks every outcome and history. See ``driver.py`` for what is injected and asserted,
``app.py`` for the workload.
"""

from .driver import Config, report, run, summary

__all__ = ["Config", "report", "run", "summary"]
