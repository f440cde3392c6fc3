"""The Citus statements of child workflows and once-only delivery (migrations 005 and
006): each names one shard key on every table it touches, a router query (checked by
tests/citus/test_router_plans.py). The outbox is written under the SENDER's key in the
sender's commit transaction; deliveries write under the TARGET's key in the target's
own transaction; never both in one."""

from __future__ import annotations

from typing import Final

from ._sql import (
    _COMMIT_OK,
    _ENSURE_WORKFLOW_TASK,
    _INBOX_INSERT,
    _INBOX_UPDATE,
    _SIGNAL_GUARD,
    _pk,
)

__all__ = [
    "CLAIM_OUTBOX",
    "COMMIT_OUTBOX",
    "DELETE_OUTBOX",
    "DELIVER_INSERT",
    "DELIVER_KEY",
    "DELIVER_SEEN",
    "DELIVER_TASK",
    "DELIVER_UPDATE",
    "OUTBOX_PROBE",
    "PRUNE_KEYS",
]

# A commit's messages: after FENCE_LOCK, before the finishing statement, under the same
# guard as the commit's other inserts (written if and only if the commit is).
COMMIT_OUTBOX: Final = f"""
INSERT INTO {{S}}.outbox (shard_key, tenant_id, message_id, workflow_id, body, visible_at)
SELECT w.shard_key, w.tenant_id, m.id, w.workflow_id, m.body::json, now() + m.delay
FROM {{S}}.workflows w,
     unnest(%(o_ids)s::uuid[], %(o_bodies)s::text[], %(o_delays)s::interval[]) AS m(id, body, delay)
WHERE {_pk("w")} AND {_COMMIT_OK}
"""

OUTBOX_PROBE: Final = """
SELECT EXISTS (
  SELECT 1 FROM {S}.outbox o WHERE o.shard_key = %(sk)s AND o.visible_at <= now()) AS found
"""

CLAIM_OUTBOX: Final = """
WITH c AS MATERIALIZED (
  SELECT o.tenant_id, o.message_id
  FROM {S}.outbox o
  WHERE o.shard_key = %(sk)s AND o.visible_at <= now()
  ORDER BY o.visible_at, o.message_id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {S}.outbox o
SET visible_at = now() + %(lease)s::interval
FROM c
WHERE o.shard_key = %(sk)s AND o.tenant_id = c.tenant_id AND o.message_id = c.message_id
RETURNING o.shard_key, o.tenant_id, o.workflow_id, o.message_id, o.body::text AS body
"""

DELETE_OUTBOX: Final = """
DELETE FROM {S}.outbox o
USING unnest(%(o_tenants)s::text[], %(o_ids)s::uuid[]) AS d(tid, id)
WHERE o.shard_key = %(sk)s AND o.tenant_id = d.tid AND o.message_id = d.id
"""

# deliver_once, after INBOX_LOCK: whether the key was seen; the event into the inbox,
# the workflow task, the row (guarded: running and the key not seen); the key last.
_KEY_SEEN: Final = """EXISTS (SELECT 1 FROM {S}.delivery_keys k
    WHERE k.shard_key = %(sk)s AND k.tenant_id = %(tid)s AND k.workflow_id = %(wid)s
      AND k.key = %(key)s)"""
_DELIVER_GUARD: Final = f"{_SIGNAL_GUARD} AND NOT {_KEY_SEEN}"

DELIVER_SEEN: Final = f"SELECT {_KEY_SEEN} AS seen"
DELIVER_INSERT: Final = _INBOX_INSERT.replace("{guard}", _DELIVER_GUARD)
DELIVER_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _DELIVER_GUARD)
DELIVER_UPDATE: Final = _INBOX_UPDATE.replace("{guard}", _DELIVER_GUARD).replace("{set_extra}", "")
DELIVER_KEY: Final = f"""
INSERT INTO {{S}}.delivery_keys (shard_key, tenant_id, workflow_id, key)
SELECT w.shard_key, w.tenant_id, w.workflow_id, %(key)s
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {_SIGNAL_GUARD}
ON CONFLICT DO NOTHING
"""

PRUNE_KEYS: Final = """
DELETE FROM {S}.delivery_keys k
WHERE k.shard_key = %(sk)s AND k.created_at < now() - %(age)s::interval
"""
