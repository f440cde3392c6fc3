"""The statements of runs (continue-as-new) and the published status, for PostgresStore
and (with the shard key in every lookup) CitusStore. ``{S}`` stands for the quoted schema.

They are extra statements in the transaction of a workflow-task commit, around the
commit's own statement(s), which stay as they are:

* before it, ``COMMIT_STATUS`` (the row's status_value) and ``COMMIT_RUN_END`` (the ended
  run's ``runs`` row), both fenced exactly as the commit is (lease token, next_seq,
  history_length). The first locks the workflow row, so the commit that follows in the
  same transaction finds the row as they did: either all of them write or none does;
* after it, ``COMMIT_RUN_COPY`` and ``COMMIT_RUN_CLEAR`` (the run's history moves to
  run_history), ``COMMIT_RUN_START`` (the next run's first events),
  ``COMMIT_RUN_DROP_STEPS`` and ``COMMIT_RUN_TASK`` (the ended run's tasks dropped, the
  workflow task pending) and ``COMMIT_RUN_RESET`` (the row of the next run), which act
  only if this transaction wrote the ``runs`` row of the row's current run: the mark
  ``COMMIT_RUN_END`` leaves, since the commit's own fence has changed by then. Small
  statements, each a plain router query on Citus (no INSERT from a data-modifying CTE).

Every statement names one workflow by its shard key (a router query on Citus).
"""

from __future__ import annotations

from typing import Any, Final

import uuid6

from flows_core.store import WorkflowStatus, WorkflowTaskCommit, stored_event

from ._base import Statements, Step
from ._records import text

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
    "commit_steps",
    "reads",
]

_PK: Final = "{a}.shard_key = %(sk)s AND {a}.tenant_id = %(tid)s AND {a}.workflow_id = %(wid)s"


def _pk(alias: str) -> str:
    return _PK.replace("{a}", alias)


def _same(alias: str, other: str) -> str:
    return (
        f"{alias}.shard_key = {other}.shard_key AND {alias}.tenant_id = {other}.tenant_id "
        f"AND {alias}.workflow_id = {other}.workflow_id"
    )


# The workflow-task commit's fence, on the workflows row ``w``.
_FENCED: Final = (
    _pk("w")
    + """
  AND w.next_seq = %(expected)s AND w.history_length = %(claimed)s
  AND EXISTS (SELECT 1 FROM {S}.tasks ft
    WHERE ft.shard_key = %(sk)s AND ft.tenant_id = %(tid)s AND ft.task_id = %(task_id)s
      AND ft.lease_token = %(token)s AND ft.workflow_id = %(wid)s AND ft.kind = 'workflow')"""
)

COMMIT_STATUS: Final = f"""
UPDATE {{S}}.workflows w
SET status_value = coalesce(%(status_value)s::json, w.status_value)
WHERE {_FENCED}
"""

COMMIT_RUN_END: Final = f"""
INSERT INTO {{S}}.runs (shard_key, tenant_id, workflow_id, run_number, input, started_at,
                      history_length)
SELECT w.shard_key, w.tenant_id, w.workflow_id, w.run_number, w.input,
       coalesce(w.run_started_at, w.created_at), w.history_length + %(n_events)s
FROM {{S}}.workflows w
WHERE {_FENCED}
"""

# The mark of this transaction's COMMIT_RUN_END: the ``runs`` row of the row's run.
_ENDED: Final = f"""EXISTS (SELECT 1 FROM {{S}}.runs r
    WHERE {_same("r", "w")} AND r.run_number = w.run_number)"""

_ENDED_HERE: Final = _pk("w") + " AND " + _ENDED

COMMIT_RUN_COPY: Final = f"""
INSERT INTO {{S}}.run_history (shard_key, tenant_id, workflow_id, run_number, position, event)
SELECT h.shard_key, h.tenant_id, h.workflow_id, w.run_number, h.position, h.event
FROM {{S}}.workflows w
JOIN {{S}}.history h ON {_same("h", "w")}
WHERE {_ENDED_HERE}
"""

COMMIT_RUN_CLEAR: Final = f"""
DELETE FROM {{S}}.history h
USING {{S}}.workflows w
WHERE {_ENDED_HERE} AND {_same("h", "w")}
"""

COMMIT_RUN_START: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, e.ord, e.ev::json
FROM {{S}}.workflows w, unnest(%(run_events)s::text[]) WITH ORDINALITY AS e(ev, ord)
WHERE {_ENDED_HERE}
"""

# Every task of the ended run, its workflow task too (COMMIT_RUN_TASK makes a new one).
COMMIT_RUN_DROP_STEPS: Final = f"""
DELETE FROM {{S}}.tasks t
USING {{S}}.workflows w
WHERE {_ENDED_HERE} AND {_same("t", "w")}
"""

# The next run's workflow task: pending now, unleased, attempt 1.
COMMIT_RUN_TASK: Final = f"""
INSERT INTO {{S}}.tasks
  (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
SELECT w.shard_key, w.tenant_id, %(wf_task_id)s, w.workflow_id, 'workflow',
       'w:' || w.name || ':' || w.version, w.name, now()
FROM {{S}}.workflows w
WHERE {_ENDED_HERE}
ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING
"""

# Last (it moves run_number on, which ends the mark): the row of the next run, and the
# results of the ended run's steps (inbox events with a seq) dropped from the inbox.
COMMIT_RUN_RESET: Final = f"""
WITH dropped AS (
  DELETE FROM {{S}}.inbox i
  USING {{S}}.workflows w
  WHERE {_ENDED_HERE} AND {_same("i", "w")} AND i.event ->> 'seq' IS NOT NULL
  RETURNING 1
)
UPDATE {{S}}.workflows w
SET run_number = w.run_number + 1, run_started_at = now(), input = %(run_input)s::json,
    history_length = %(run_length)s, next_seq = 1, status = 'running', output = NULL,
    error = NULL, updated_at = now(),
    inbox_length = w.inbox_length - (SELECT count(*) FROM dropped)
WHERE {_ENDED_HERE}
RETURNING w.run_number
"""

_AFTER: Final = (
    COMMIT_RUN_COPY,
    COMMIT_RUN_CLEAR,
    COMMIT_RUN_START,
    COMMIT_RUN_DROP_STEPS,
    COMMIT_RUN_TASK,
    COMMIT_RUN_RESET,
)

# -- reads: the archived runs of a workflow, found by {key} (tenant and id on
# PostgreSQL; the shard key too on Citus) --

_LIST_RUNS: Final = """
SELECT w.workflow_id AS found, r.run_number, r.status, r.input::text AS input, r.started_at,
       r.ended_at, r.history_length
FROM {S}.workflows w
LEFT JOIN {S}.runs r ON {same_r}
WHERE {key}
ORDER BY r.run_number
"""

_RUN_HISTORY: Final = """
SELECT (
  SELECT json_agg(h.event ORDER BY h.position)::text
  FROM {S}.run_history h
  WHERE {same_h} AND h.run_number = %(run_number)s
) AS history
FROM {S}.workflows w
WHERE {key}
"""

_BY_ID: Final = "w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s"


def reads(key: str, shard: str) -> tuple[str, str]:
    """(LIST_RUNS, RUN_HISTORY) finding the workflow row ``w`` by ``key``, and its runs
    under the shard key ``shard``."""

    def same(alias: str) -> str:
        return (
            f"{alias}.shard_key = {shard} AND {alias}.tenant_id = w.tenant_id "
            f"AND {alias}.workflow_id = w.workflow_id"
        )

    return (
        _LIST_RUNS.replace("{key}", key).replace("{same_r}", same("r")),
        _RUN_HISTORY.replace("{key}", key).replace("{same_h}", same("h")),
    )


LIST_RUNS, RUN_HISTORY = reads(_BY_ID, "w.shard_key")


def commit_steps(
    statements: Statements, commit: WorkflowTaskCommit, params: dict[str, Any]
) -> tuple[list[Step], list[Step]]:
    """The statements to run before and after a commit's own, in its transaction, for
    its published status and its continue-as-new ([] and [] when it has neither);
    ``params`` (the commit's) gets their parameters."""
    following = commit.continue_as_new
    if commit.status_value is None and following is None:
        return [], []
    params["status_value"] = text(commit.status_value, "workflow status")
    before = [Step(statements(COMMIT_STATUS), params)]
    if following is None:
        return before, []
    if commit.status != WorkflowStatus.RUNNING or commit.keep_lease is not None:
        raise ValueError("continue_as_new takes a RUNNING status and no keep_lease")
    started = following.started
    params.update(
        run_events=[stored_event(started), *(stored_event(e) for e in following.carried)],
        run_input=text(getattr(started, "input", None), "input of the next run"),
        run_length=1 + len(following.carried),
        wf_task_id=uuid6.uuid7(),
    )
    before.append(Step(statements(COMMIT_RUN_END), params))
    after = [Step(statements(statement), params) for statement in _AFTER]
    return before, after
