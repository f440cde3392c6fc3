"""The Citus statements of runs (continue-as-new) and the published status: those of
``flows_pg._sql_runs`` (every one names the workflow by its shard key, so a router
query), with the reads finding the workflow row by shard key too. Listed here so that
tests/citus/test_router_plans.py EXPLAINs each one."""

from __future__ import annotations

from typing import Final

from flows_pg import _sql_runs

__all__ = [
    "COMMIT_RUN_CLEAR",
    "COMMIT_RUN_COPY",
    "COMMIT_RUN_DROP_STEPS",
    "COMMIT_RUN_END",
    "COMMIT_RUN_RESET",
    "COMMIT_RUN_START",
    "COMMIT_RUN_TASK",
    "COMMIT_STATUS",
    "LIST_RUNS",
    "RUN_HISTORY",
]

COMMIT_STATUS: Final = _sql_runs.COMMIT_STATUS
COMMIT_RUN_END: Final = _sql_runs.COMMIT_RUN_END
COMMIT_RUN_COPY: Final = _sql_runs.COMMIT_RUN_COPY
COMMIT_RUN_CLEAR: Final = _sql_runs.COMMIT_RUN_CLEAR
COMMIT_RUN_START: Final = _sql_runs.COMMIT_RUN_START
COMMIT_RUN_DROP_STEPS: Final = _sql_runs.COMMIT_RUN_DROP_STEPS
COMMIT_RUN_TASK: Final = _sql_runs.COMMIT_RUN_TASK
COMMIT_RUN_RESET: Final = _sql_runs.COMMIT_RUN_RESET
LIST_RUNS, RUN_HISTORY = _sql_runs.reads(
    "w.shard_key = %(sk)s AND w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s", "%(sk)s"
)
