"""Statements of flow control (``flows_core.store.FlowLimits``), the same on PostgreSQL
and Citus: every statement on the limit tables filters on one ``bucket`` (the Citus
distribution column of those tables) and every statement on tasks or workflows on one
``shard_key``, so each is a router query; each runs in a transaction of its own.

Slots: ``ACQUIRE`` takes a free slot below the capacity (rows made on first use) with
SKIP LOCKED, or says the holder holds one already; it remembers the holder's task as a
waiter otherwise. A slot held past its expiry is checked by the caller against its
holder (``TASK_ALIVE`` / ``WORKFLOW_ALIVE``, on the holder's shard) and then extended
or freed (``EXTEND_SLOT`` / ``FREE_SLOT``, both conditional on the holder being
unchanged). ``RELEASE`` frees the holder's slots and pops the oldest waiter, which
``WAKE`` makes visible if it still waits where ``DEFER`` left it.
"""

from __future__ import annotations

from typing import Final

_LIMIT: Final = "bucket = %(bucket)s AND limit_key = %(lk)s"

_HOLDER: Final = """holder_kind = %(kind)s AND CASE WHEN %(kind)s = 'workflow'
    THEN holder_tenant = %(tid)s AND holder_workflow = %(wid)s
    ELSE holder_task = %(task)s AND holder_token = %(token)s END"""

ACQUIRE: Final = f"""
WITH mine AS (
  SELECT slot FROM {{S}}.limit_slots WHERE {_LIMIT} AND {_HOLDER}
), ensure AS (
  INSERT INTO {{S}}.limit_slots (bucket, limit_key, slot)
  SELECT %(bucket)s, %(lk)s, n FROM generate_series(0, %(cap)s - 1) AS n
  ON CONFLICT DO NOTHING
), pick AS (
  SELECT slot FROM {{S}}.limit_slots
  WHERE {_LIMIT} AND slot < %(cap)s AND holder_kind IS NULL
    AND NOT EXISTS (SELECT 1 FROM mine)
  ORDER BY slot LIMIT 1
  FOR UPDATE SKIP LOCKED
), took AS (
  UPDATE {{S}}.limit_slots s
  SET holder_kind = %(kind)s, holder_tenant = %(tid)s, holder_shard = %(sk)s,
      holder_workflow = %(wid)s, holder_task = %(task)s, holder_token = %(token)s,
      acquired_at = now(), expires_at = %(expires)s
  FROM pick
  WHERE s.bucket = %(bucket)s AND s.limit_key = %(lk)s AND s.slot = pick.slot
  RETURNING s.slot
), unwait AS (
  DELETE FROM {{S}}.limit_waiters
  WHERE {_LIMIT} AND task_id = %(task)s
    AND (EXISTS (SELECT 1 FROM mine) OR EXISTS (SELECT 1 FROM took))
  RETURNING 1
), wait AS (
  INSERT INTO {{S}}.limit_waiters (bucket, limit_key, task_id, tenant_id, shard_key)
  SELECT %(bucket)s, %(lk)s, %(task)s, %(tid)s, %(sk)s
  WHERE NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM took)
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM mine) + (SELECT count(*) FROM took) AS acquired,
       (SELECT count(*) FROM unwait) + (SELECT count(*) FROM wait) AS waiters_changed
"""

SLOTS: Final = f"""
SELECT slot, holder_kind, holder_tenant, holder_shard, holder_workflow,
       holder_task::text AS holder_task, holder_token::text AS holder_token, expires_at,
       expires_at <= now() AS expired
FROM {{S}}.limit_slots
WHERE {_LIMIT} AND slot < %(cap)s
"""

TASK_ALIVE: Final = """
SELECT visible_at AS until FROM {S}.tasks
WHERE shard_key = %(sk)s AND tenant_id = %(tid)s AND task_id = %(task)s
  AND lease_token = %(token)s AND visible_at > now()
"""

WORKFLOW_ALIVE: Final = """
SELECT now() + %(check)s::interval AS until FROM {S}.workflows
WHERE shard_key = %(sk)s AND tenant_id = %(tid)s AND workflow_id = %(wid)s
  AND status IN ('running', 'parked')
"""

_SAME_HOLDER: Final = f"""{_LIMIT} AND slot = %(slot)s AND expires_at = %(old_expires)s
  AND holder_kind IS NOT DISTINCT FROM %(kind)s
  AND holder_workflow IS NOT DISTINCT FROM %(wid)s
  AND holder_token IS NOT DISTINCT FROM %(token)s"""

EXTEND_SLOT: Final = f"""
UPDATE {{S}}.limit_slots SET expires_at = %(until)s WHERE {_SAME_HOLDER} RETURNING slot
"""

FREE_SLOT: Final = f"""
UPDATE {{S}}.limit_slots
SET holder_kind = NULL, holder_tenant = NULL, holder_shard = NULL, holder_workflow = NULL,
    holder_task = NULL, holder_token = NULL, acquired_at = NULL, expires_at = NULL
WHERE {_SAME_HOLDER}
RETURNING slot
"""

RELEASE: Final = f"""
WITH freed AS (
  UPDATE {{S}}.limit_slots
  SET holder_kind = NULL, holder_tenant = NULL, holder_shard = NULL, holder_workflow = NULL,
      holder_task = NULL, holder_token = NULL, acquired_at = NULL, expires_at = NULL
  WHERE {_LIMIT} AND {_HOLDER}
  RETURNING slot
)
SELECT count(*) AS freed FROM freed
"""

POP_WAITER: Final = f"""
DELETE FROM {{S}}.limit_waiters w
WHERE w.bucket = %(bucket)s AND w.limit_key = %(lk)s AND w.task_id = (
  SELECT task_id FROM {{S}}.limit_waiters
  WHERE {_LIMIT} AND ready_at IS NULL
  ORDER BY since, task_id LIMIT 1
  FOR UPDATE SKIP LOCKED)
RETURNING w.tenant_id, w.shard_key, w.task_id::text AS task_id
"""

WAKE: Final = """
UPDATE {S}.tasks
SET visible_at = now(), waiting = NULL, waiting_until = NULL
WHERE shard_key = %(sk)s AND tenant_id = %(tid)s AND task_id = %(task)s
  AND lease_token IS NULL AND waiting_until = visible_at AND visible_at > now()
RETURNING true AS done
"""

NOTIFY_WORK: Final = "SELECT pg_notify(%(ch_work)s, %(sk)s)"

TAKE_TOKEN: Final = f"""
WITH res AS (
  SELECT ready_at FROM {{S}}.limit_waiters
  WHERE {_LIMIT} AND task_id = %(task)s AND ready_at IS NOT NULL
), used AS (
  DELETE FROM {{S}}.limit_waiters
  WHERE {_LIMIT} AND task_id = %(task)s AND ready_at IS NOT NULL AND ready_at <= now()
  RETURNING 1
), rate AS (
  INSERT INTO {{S}}.limit_rates AS r (bucket, limit_key, tat)
  SELECT %(bucket)s, %(lk)s, now() + %(interval)s::interval
  WHERE NOT EXISTS (SELECT 1 FROM res)
  ON CONFLICT (bucket, limit_key) DO UPDATE
  SET tat = greatest(r.tat, now()) + %(interval)s::interval
  WHERE greatest(r.tat, now()) <= now() + %(horizon)s::interval
  RETURNING r.tat - %(interval)s::interval AS start
), reserve AS (
  INSERT INTO {{S}}.limit_waiters (bucket, limit_key, task_id, tenant_id, shard_key, ready_at)
  SELECT %(bucket)s, %(lk)s, %(task)s, '', '', rate.start FROM rate WHERE rate.start > now()
  RETURNING 1
)
SELECT (SELECT ready_at FROM res) AS reserved, (SELECT count(*) FROM used) AS used,
       (SELECT start FROM rate) AS start, (SELECT count(*) FROM reserve) AS reserved_now,
       (SELECT greatest(tat, now()) - %(horizon)s::interval FROM {{S}}.limit_rates
        WHERE {_LIMIT}) AS look_again,
       now() AS now
"""

DEFER: Final = """
UPDATE {S}.tasks t
SET lease_token = NULL, lease_owner = NULL, visible_at = %(visible_at)s,
    waiting = %(reason)s, waiting_until = %(visible_at)s,
    attempt = CASE WHEN t.kind = 'workflow' THEN greatest(t.attempt - 1, 1) ELSE t.attempt END
WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
  AND t.lease_token = %(token)s
RETURNING true AS done
"""

WAITING_REASON: Final = """
SELECT t.waiting FROM {S}.workflows w
JOIN {S}.tasks t
  ON t.shard_key = w.shard_key AND t.tenant_id = w.tenant_id AND t.workflow_id = w.workflow_id
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s {shard}
  AND t.lease_token IS NULL AND t.waiting_until = t.visible_at AND t.visible_at > now()
ORDER BY t.visible_at LIMIT 1
"""

WAITING_SHARD: Final = "AND w.shard_key = %(sk)s AND t.shard_key = %(sk)s"

USAGE_SLOTS: Final = """
SELECT limit_key, count(*) FILTER (WHERE holder_kind IS NOT NULL) AS held
FROM {S}.limit_slots WHERE bucket = %(bucket)s GROUP BY limit_key
"""

USAGE_WAITERS: Final = """
SELECT limit_key, count(*) AS waiting
FROM {S}.limit_waiters WHERE bucket = %(bucket)s GROUP BY limit_key
"""

USAGE_RATES: Final = """
SELECT limit_key, tat FROM {S}.limit_rates WHERE bucket = %(bucket)s
"""

ROUTER_STATEMENTS: Final = {
    "ACQUIRE": ACQUIRE,
    "SLOTS": SLOTS,
    "TASK_ALIVE": TASK_ALIVE,
    "WORKFLOW_ALIVE": WORKFLOW_ALIVE,
    "EXTEND_SLOT": EXTEND_SLOT,
    "FREE_SLOT": FREE_SLOT,
    "RELEASE": RELEASE,
    "POP_WAITER": POP_WAITER,
    "WAKE": WAKE,
    "TAKE_TOKEN": TAKE_TOKEN,
    "DEFER": DEFER,
    "WAITING_REASON": WAITING_REASON.replace("{shard}", WAITING_SHARD),
    "USAGE_SLOTS": USAGE_SLOTS,
    "USAGE_WAITERS": USAGE_WAITERS,
    "USAGE_RATES": USAGE_RATES,
}
"""Every statement as Citus runs it (tests/citus/test_router_plans.py EXPLAINs them)."""
