"""The PostgreSQL statements of child workflows and once-only delivery (migration 005):
the outbox written in a commit, claimed and deleted by workers, and ``deliver_once``.
``{S}`` stands for the quoted schema. Each is an extra statement beside the existing
ones (a commit with messages runs COMMIT_OUTBOX then the commit statement, in one
transaction), not a change of them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from flows_core.store import OutboxRecord, WorkflowTaskCommit, stored_payload

from ._base import TERMINAL_SQL
from ._records import uuid_of

__all__ = [
    "CLAIM_OUTBOX",
    "COMMIT_OUTBOX",
    "DELETE_OUTBOX",
    "DELIVER_LOCK",
    "DELIVER_ONCE",
    "PRUNE_KEYS",
    "delete_params",
    "outbox_params",
]

# A commit's messages, written before the commit statement in its transaction, under
# the same fence (the lease holder's task, next_seq and history_length of the locked
# row): the commit statement then finds the rows as this one left them locked, so the
# messages are written if and only if the commit is.
COMMIT_OUTBOX: Final = """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.next_seq, w.history_length
  FROM {S}.workflows w
  WHERE w.shard_key = %(sk)s AND w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
), tl AS MATERIALIZED (
  SELECT t.kind
  FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s AND t.workflow_id = %(wid)s
    AND (SELECT count(*) FROM wl) > 0
  FOR UPDATE
)
INSERT INTO {S}.outbox (shard_key, tenant_id, message_id, workflow_id, body, visible_at)
SELECT wl.shard_key, wl.tenant_id, m.id, wl.workflow_id, m.body::json, now() + m.delay
FROM wl, tl,
     unnest(%(o_ids)s::uuid[], %(o_bodies)s::text[], %(o_delays)s::interval[]) AS m(id, body, delay)
WHERE tl.kind = 'workflow' AND wl.next_seq = %(expected)s AND wl.history_length = %(claimed)s
"""

# Up to %(limit)s due messages, oldest first, hidden for %(lease)s; rows another
# transaction holds are skipped. {shards}: an optional filter on the sender's shard keys.
CLAIM_OUTBOX: Final = """
WITH c AS MATERIALIZED (
  SELECT o.shard_key, o.tenant_id, o.message_id
  FROM {S}.outbox o
  WHERE o.visible_at <= now() {shards}
  ORDER BY o.visible_at, o.message_id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {S}.outbox o
SET visible_at = now() + %(lease)s::interval
FROM c
WHERE o.shard_key = c.shard_key AND o.tenant_id = c.tenant_id AND o.message_id = c.message_id
RETURNING o.shard_key, o.tenant_id, o.workflow_id, o.message_id, o.body::text AS body
"""

DELETE_OUTBOX: Final = """
DELETE FROM {S}.outbox o
USING unnest(%(o_shards)s::text[], %(o_tenants)s::text[], %(o_ids)s::uuid[]) AS d(sk, tid, id)
WHERE o.shard_key = d.sk AND o.tenant_id = d.tid AND o.message_id = d.id
"""

# deliver_once: first the target's row locked (so that the next statement, with a
# snapshot taken after the lock, sees the keys of any delivery that held it before)...
DELIVER_LOCK: Final = """
SELECT w.status FROM {S}.workflows w
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
FOR UPDATE
"""

# ... then the event into the inbox and the key recorded, unless the key is there or the
# workflow has ended. Returns the status and whether the key was seen (no row: no such
# workflow).
DELIVER_ONCE: Final = (
    """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.status, w.inbox_seq
  FROM {S}.workflows w
  WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
), seen AS MATERIALIZED (
  SELECT 1 FROM {S}.delivery_keys k, wl
  WHERE k.shard_key = wl.shard_key AND k.tenant_id = wl.tenant_id
    AND k.workflow_id = wl.workflow_id AND k.key = %(key)s
), ok AS MATERIALIZED (
  SELECT * FROM wl WHERE wl.status NOT IN """
    + TERMINAL_SQL
    + """ AND NOT EXISTS (SELECT 1 FROM seen)
), k AS (
  INSERT INTO {S}.delivery_keys (shard_key, tenant_id, workflow_id, key)
  SELECT ok.shard_key, ok.tenant_id, ok.workflow_id, %(key)s FROM ok
), i AS (
  INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
  SELECT ok.shard_key, ok.tenant_id, ok.workflow_id, ok.inbox_seq + 1, %(event)s::json
  FROM ok
), u AS (
  UPDATE {S}.workflows w
  SET inbox_seq = ok.inbox_seq + 1, inbox_length = w.inbox_length + 1, updated_at = now()
  FROM ok
  WHERE w.shard_key = ok.shard_key AND w.tenant_id = ok.tenant_id
    AND w.workflow_id = ok.workflow_id
), t AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, name,
                         visible_at)
  SELECT ok.shard_key, ok.tenant_id, %(wf_task_id)s, ok.workflow_id, 'workflow',
         'w:' || ok.name || ':' || ok.version, ok.name, now()
  FROM ok
  ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM ok
)
SELECT wl.status, EXISTS (SELECT 1 FROM seen) AS seen, (SELECT count(*) FROM n) AS notified
FROM wl
"""
)

# Retention: keys older than the age prune deletes by (any shard).
PRUNE_KEYS: Final = """
DELETE FROM {S}.delivery_keys k
WHERE k.created_at < now() - %(age)s::interval
"""


def outbox_params(commit: WorkflowTaskCommit) -> dict[str, Any]:
    """The parameters of COMMIT_OUTBOX beyond the commit's own."""
    messages = commit.outbox
    return {
        "o_ids": [uuid_of(m.message_id, "outbox message id") for m in messages],
        "o_bodies": [stored_payload(m.body, "outbox message") for m in messages],
        "o_delays": [max(m.delay, timedelta(0)) for m in messages],
    }


def delete_params(records: list[OutboxRecord]) -> dict[str, Any]:
    return {
        "o_shards": [r.shard_key for r in records],
        "o_tenants": [r.tenant_id for r in records],
        "o_ids": [uuid_of(r.message_id, "outbox message id") for r in records],
    }
