"""The read-only statements of the consistency scans (``flows_core.store.FsckScan``).

``fsck_statements(sharded=False)`` gives PostgresStore's: each reads the whole table.
``sharded=True`` gives CitusStore's (``flows_citus._fsck_sql``): each also filters every
table on one shard key, ``%(sk)s``, so Citus plans it as a router query. ``{S}`` stands
for the quoted schema. Nothing here decides what is damage: flows_core does.
"""

from __future__ import annotations

from typing import Final

from ._base import RECORD


def _same(alias: str, key: str) -> str:
    """``alias`` belongs to the workflow row ``w`` (whose shard key is ``key``)."""
    return (
        f"{alias}.shard_key = {key} AND {alias}.tenant_id = w.tenant_id "
        f"AND {alias}.workflow_id = w.workflow_id"
    )


def _workflows(key: str, where: str) -> str:
    return f"""
SELECT {RECORD},
  tc.workflow_tasks, tc.activity_tasks, tc.timer_tasks,
  (SELECT count(*) FROM {{S}}.inbox i WHERE {_same("i", key)}) AS inbox_rows,
  hc.history_rows, hc.history_last
FROM {{S}}.workflows w
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE t.kind = 'workflow') AS workflow_tasks,
         count(*) FILTER (WHERE t.kind = 'activity') AS activity_tasks,
         count(*) FILTER (WHERE t.kind = 'timer') AS timer_tasks
  FROM {{S}}.tasks t WHERE {_same("t", key)}
) tc
CROSS JOIN LATERAL (
  SELECT count(*) AS history_rows, coalesce(max(h.position), 0) AS history_last
  FROM {{S}}.history h WHERE {_same("h", key)}
) hc
WHERE {where}(%(tid)s::text IS NULL OR w.tenant_id = %(tid)s)
  AND (%(first)s OR (w.shard_key, w.tenant_id, w.workflow_id)
                    > (%(after_sk)s, %(after_tid)s, %(after_wid)s))
ORDER BY w.shard_key, w.tenant_id, w.workflow_id
LIMIT %(limit)s
"""


def _orphans(table: str, kind: str, where: str, key: str) -> str:
    return f"""
SELECT '{kind}' AS kind, o.tenant_id, o.workflow_id, o.shard_key, count(*) AS rows
FROM {{S}}.{table} o
WHERE {where}(%(tid)s::text IS NULL OR o.tenant_id = %(tid)s)
  AND NOT EXISTS (SELECT 1 FROM {{S}}.workflows w
                  WHERE w.shard_key = {key} AND w.tenant_id = o.tenant_id
                    AND w.workflow_id = o.workflow_id)
GROUP BY o.tenant_id, o.workflow_id, o.shard_key
ORDER BY o.tenant_id, o.workflow_id, o.shard_key
LIMIT %(limit)s
"""


def _expired(where: str) -> str:
    # While a task is leased its visible_at holds the lease's expiry; release, retries
    # and commits clear lease_token, so a token whose visible_at is long past is a lease
    # that expired and was never claimed again.
    return f"""
SELECT t.tenant_id, t.workflow_id, t.shard_key, t.task_id::text AS task_id, t.kind, t.seq,
       t.lease_owner AS owner, t.visible_at AS expired_at
FROM {{S}}.tasks t
WHERE {where}t.lease_token IS NOT NULL AND t.visible_at < now() - %(age)s
  AND (%(tid)s::text IS NULL OR t.tenant_id = %(tid)s)
ORDER BY t.visible_at, t.task_id
LIMIT %(limit)s
"""


def fsck_statements(*, sharded: bool) -> dict[str, str]:
    """The scans by name: FSCK_WORKFLOWS, FSCK_ORPHAN_INBOX, FSCK_ORPHAN_TASKS,
    FSCK_EXPIRED_LEASES (``sharded``: each on the one shard key ``%(sk)s``)."""
    if sharded:
        return {
            "FSCK_WORKFLOWS": _workflows("%(sk)s", "w.shard_key = %(sk)s AND "),
            "FSCK_ORPHAN_INBOX": _orphans("inbox", "inbox", "o.shard_key = %(sk)s AND ", "%(sk)s"),
            "FSCK_ORPHAN_TASKS": _orphans("tasks", "task", "o.shard_key = %(sk)s AND ", "%(sk)s"),
            "FSCK_EXPIRED_LEASES": _expired("t.shard_key = %(sk)s AND "),
        }
    return {
        "FSCK_WORKFLOWS": _workflows("w.shard_key", ""),
        "FSCK_ORPHAN_INBOX": _orphans("inbox", "inbox", "", "o.shard_key"),
        "FSCK_ORPHAN_TASKS": _orphans("tasks", "task", "", "o.shard_key"),
        "FSCK_EXPIRED_LEASES": _expired(""),
    }


_PG: Final = fsck_statements(sharded=False)
FSCK_WORKFLOWS: Final = _PG["FSCK_WORKFLOWS"]
FSCK_ORPHAN_INBOX: Final = _PG["FSCK_ORPHAN_INBOX"]
FSCK_ORPHAN_TASKS: Final = _PG["FSCK_ORPHAN_TASKS"]
FSCK_EXPIRED_LEASES: Final = _PG["FSCK_EXPIRED_LEASES"]
