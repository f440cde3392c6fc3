"""Statements of flow control (``flows_core.store.FlowLimits``), the same on PostgreSQL
and Citus: every statement on the limit tables filters on one ``bucket`` (the Citus
distribution column of those tables) and every statement on tasks or workflows on one
``shard_key``, so each is a router query; each runs in a transaction of its own.

Slots: ``ACQUIRE_*`` take a free slot below the capacity (rows made on first use by
``ensure_slots_sql``) with SKIP LOCKED, or find the holder holding one already; they
remember the holder's task as a waiter otherwise. A slot held past its expiry is
checked by the caller against its holder (``TASK_ALIVE`` / ``WORKFLOW_ALIVE``, on the
holder's shard) and then extended or freed (``EXTEND_SLOT`` / ``FREE_SLOT``, both
conditional on the holder being unchanged). ``RELEASE`` frees the holder's slots and
``POP_WAITER`` takes the oldest waiter, which ``WAKE`` makes visible if it still waits
where ``DEFER`` left it.
"""

from __future__ import annotations

from typing import Final

_LIMIT: Final = "bucket = %(bucket)s AND limit_key = %(lk)s"

_HOLDER: Final = "holder_id = %(hid)s"

# ACQUIRE_TAKE, ACQUIRE_UNWAIT, ACQUIRE_WAIT and HELD run in one transaction (one
# pipeline): each a single router statement (Citus splits a statement with several
# data-modifying CTEs into subplans), each seeing what the ones before it wrote.
ACQUIRE_TAKE: Final = f"""
WITH mine AS MATERIALIZED (
  SELECT slot FROM {{S}}.limit_slots WHERE {_LIMIT} AND {_HOLDER}
), pick AS MATERIALIZED (
  SELECT slot FROM {{S}}.limit_slots
  WHERE {_LIMIT} AND slot < %(cap)s AND holder_kind IS NULL
    AND NOT EXISTS (SELECT 1 FROM mine)
  ORDER BY slot LIMIT 1
  FOR UPDATE SKIP LOCKED
)
UPDATE {{S}}.limit_slots s
SET holder_kind = %(kind)s, holder_id = %(hid)s, holder_tenant = %(tid)s, holder_shard = %(sk)s,
    holder_workflow = %(wid)s, holder_task = %(task)s, holder_token = %(token)s,
    acquired_at = now(), expires_at = %(expires)s
FROM pick
WHERE s.bucket = %(bucket)s AND s.limit_key = %(lk)s AND s.slot = pick.slot
"""

_HELD: Final = f"SELECT 1 FROM {{S}}.limit_slots h WHERE h.{_LIMIT} AND h.{_HOLDER}"

ACQUIRE_UNWAIT: Final = f"""
DELETE FROM {{S}}.limit_waiters
WHERE {_LIMIT} AND task_id = %(task)s AND EXISTS ({_HELD})
"""

# (an INSERT .. SELECT from the colocated limit_slots, distribution column to
# distribution column: pushed down to the one shard)
ACQUIRE_WAIT: Final = f"""
INSERT INTO {{S}}.limit_waiters (bucket, limit_key, task_id, tenant_id, shard_key)
SELECT s.bucket, s.limit_key, %(task)s, %(tid)s, %(sk)s
FROM {{S}}.limit_slots s
WHERE s.bucket = %(bucket)s AND s.limit_key = %(lk)s AND s.slot = 0
  AND NOT EXISTS ({_HELD})
ON CONFLICT DO NOTHING
"""

HELD: Final = f"SELECT EXISTS ({_HELD}) AS acquired"

SLOTS: Final = f"""
SELECT slot, holder_kind, holder_id, holder_tenant, holder_shard, holder_workflow,
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
  AND holder_id IS NOT DISTINCT FROM %(hid)s"""

EXTEND_SLOT: Final = f"""
UPDATE {{S}}.limit_slots SET expires_at = %(until)s WHERE {_SAME_HOLDER} RETURNING slot
"""

FREE_SLOT: Final = f"""
UPDATE {{S}}.limit_slots
SET holder_kind = NULL, holder_id = NULL, holder_tenant = NULL, holder_shard = NULL,
    holder_workflow = NULL, holder_task = NULL, holder_token = NULL, acquired_at = NULL,
    expires_at = NULL
WHERE {_SAME_HOLDER}
RETURNING slot
"""

RELEASE: Final = f"""
WITH freed AS (
  UPDATE {{S}}.limit_slots
  SET holder_kind = NULL, holder_id = NULL, holder_tenant = NULL, holder_shard = NULL,
      holder_workflow = NULL, holder_task = NULL, holder_token = NULL, acquired_at = NULL,
      expires_at = NULL
  WHERE {_LIMIT} AND {_HOLDER}
  RETURNING slot
)
SELECT count(*) AS freed FROM freed
"""

WAITERS: Final = f"""
SELECT EXISTS (
  SELECT 1 FROM {{S}}.limit_waiters WHERE {_LIMIT} AND ready_at IS NULL) AS waiting
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

# Rate tokens. Token times are seconds since the epoch: Citus refuses now() in ON
# CONFLICT DO UPDATE and stable operators (timestamptz + interval) on columns in an
# UPDATE. RESERVED reads a task's reservation; USE_RESERVED deletes it once due; a new
# token is RATE_ROW (made on first use) then RATE_TAKE (moves the next token's time on,
# unless it is beyond the horizon) and RATE_LOOK (the database's time), in one
# transaction; RESERVE notes the
# token for the task that will come back for it.
_NOW_S: Final = "extract(epoch FROM now())::float8"

RESERVED: Final = f"""
SELECT ready_at, now() AS now FROM {{S}}.limit_waiters
WHERE {_LIMIT} AND task_id = %(task)s AND ready_at IS NOT NULL
"""

USE_RESERVED: Final = f"""
DELETE FROM {{S}}.limit_waiters
WHERE {_LIMIT} AND task_id = %(task)s AND ready_at IS NOT NULL AND ready_at <= now()
"""

RATE_ROW: Final = f"""
INSERT INTO {{S}}.limit_rates (bucket, limit_key, tat) VALUES (%(bucket)s, %(lk)s, {_NOW_S})
ON CONFLICT DO NOTHING
"""

RATE_TAKE: Final = f"""
UPDATE {{S}}.limit_rates
SET tat = greatest(tat, {_NOW_S}) + %(interval)s, every = %(interval)s
WHERE {_LIMIT} AND greatest(tat, {_NOW_S}) <= {_NOW_S} + %(horizon)s
RETURNING tat - %(interval)s AS start
"""

RATE_LOOK: Final = f"""
SELECT greatest(tat, {_NOW_S}) - %(horizon)s AS look_again, {_NOW_S} AS now
FROM {{S}}.limit_rates WHERE {_LIMIT}
"""

RESERVE: Final = """
INSERT INTO {S}.limit_waiters (bucket, limit_key, task_id, tenant_id, shard_key, ready_at)
VALUES (%(bucket)s, %(lk)s, %(task)s, '', '', %(start)s)
ON CONFLICT DO NOTHING
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

# A start with a priority: its just-inserted workflow task (by id: nothing if the id was
# taken) goes ahead in the claim order, in the start's transaction. (least(), not
# visible_at - interval: Citus refuses a stable operator on a column in an UPDATE; the
# caller passes its clock's now minus the priority's offset.)
START_AHEAD: Final = """
UPDATE {S}.tasks t SET visible_at = least(t.visible_at, %(visible_at)s)
WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(wf_task_id)s
"""

USAGE_SLOTS: Final = """
SELECT limit_key, count(*) FILTER (WHERE holder_kind IS NOT NULL) AS held, count(*) AS slots
FROM {S}.limit_slots WHERE bucket = %(bucket)s GROUP BY limit_key
"""

USAGE_WAITERS: Final = """
SELECT limit_key, count(*) AS waiting
FROM {S}.limit_waiters WHERE bucket = %(bucket)s GROUP BY limit_key
"""

USAGE_RATES: Final = """
SELECT limit_key, to_timestamp(tat) AS tat, every FROM {S}.limit_rates WHERE bucket = %(bucket)s
"""


def ensure_slots_sql(capacity: int) -> str:
    """Make slot rows 0..capacity-1 of a limit (one VALUES list: a router INSERT)."""
    rows = ", ".join(f"(%(bucket)s, %(lk)s, {n})" for n in range(capacity))
    return f"""INSERT INTO {{S}}.limit_slots (bucket, limit_key, slot) VALUES {rows}
ON CONFLICT DO NOTHING"""


ROUTER_STATEMENTS: Final = {
    "START_AHEAD": START_AHEAD,
    "ACQUIRE_TAKE": ACQUIRE_TAKE,
    "ACQUIRE_UNWAIT": ACQUIRE_UNWAIT,
    "ACQUIRE_WAIT": ACQUIRE_WAIT,
    "HELD": HELD,
    "ENSURE_SLOTS (capacity 1)": ensure_slots_sql(1),
    "SLOTS": SLOTS,
    "TASK_ALIVE": TASK_ALIVE,
    "WORKFLOW_ALIVE": WORKFLOW_ALIVE,
    "EXTEND_SLOT": EXTEND_SLOT,
    "FREE_SLOT": FREE_SLOT,
    "RELEASE": RELEASE,
    "WAITERS": WAITERS,
    "POP_WAITER": POP_WAITER,
    "WAKE": WAKE,
    "RESERVED": RESERVED,
    "USE_RESERVED": USE_RESERVED,
    "RATE_ROW": RATE_ROW,
    "RATE_TAKE": RATE_TAKE,
    "RATE_LOOK": RATE_LOOK,
    "RESERVE": RESERVE,
    "DEFER": DEFER,
    "WAITING_REASON": WAITING_REASON.replace("{shard}", WAITING_SHARD),
    "USAGE_SLOTS": USAGE_SLOTS,
    "USAGE_WAITERS": USAGE_WAITERS,
    "USAGE_RATES": USAGE_RATES,
}
"""Every statement as Citus runs it (tests/citus/test_router_plans.py EXPLAINs them)."""
