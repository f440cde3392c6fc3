"""The statements of durable schedules (``flows_core.store.ScheduleStore``, migration 009).

``schedule_statements(sharded=False)`` are PostgresStore's: a schedule is found by
(tenant, id) through a unique index, and claims look at every shard key or at a list
(``%(shards)s``). ``sharded=True`` gives CitusStore's: every statement filters on one
shard key ``%(sk)s`` (a router query; tests/citus/test_router_plans.py EXPLAINs each).
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEDULE_COLUMNS", "schedule_statements"]

SCHEDULE_COLUMNS: Final = """s.shard_key, s.tenant_id, s.schedule_id, s.workflow_name,
    s.workflow_version, s.input::text AS input, s.spec::text AS spec, s.paused,
    s.next_tick_at, s.due_at, s.trigger_at, s.last_tick_at, s.last_workflow_id,
    s.buffered_tick_at, s.revision, s.created_at, s.updated_at"""
"""The columns ``flows_pg._schedules.schedule_from_row`` reads (table aliased ``s``)."""

_FIRES: Final = "(NOT s.paused OR s.trigger_at IS NOT NULL)"


def schedule_statements(*, sharded: bool) -> dict[str, str]:
    """The statements by name; ``sharded``: each names its shard key ``%(sk)s``."""
    one = "s.shard_key = %(sk)s AND " if sharded else ""
    keys = "AND s.shard_key = %(sk)s" if sharded else "{shards}"
    return {
        "SCHEDULE_INSERT": """
INSERT INTO {S}.schedules AS s (shard_key, tenant_id, schedule_id, workflow_name,
    workflow_version, input, spec, paused, next_tick_at, due_at, trigger_at)
VALUES (%(sk)s, %(tid)s, %(sid)s, %(name)s, %(version)s, %(input)s::json, %(spec)s::json,
    %(paused)s, %(next_tick)s, %(due)s, %(trigger)s)
ON CONFLICT DO NOTHING
RETURNING true AS done
""",
        "SCHEDULE_UPDATE": f"""
UPDATE {{S}}.schedules s
SET workflow_name = %(name)s, workflow_version = %(version)s, input = %(input)s::json,
    spec = %(spec)s::json, paused = %(paused)s, next_tick_at = %(next_tick)s,
    due_at = %(due)s, trigger_at = %(trigger)s, revision = s.revision + 1,
    updated_at = now()
WHERE {one}s.tenant_id = %(tid)s AND s.schedule_id = %(sid)s AND s.revision = %(revision)s
RETURNING true AS done
""",
        "SCHEDULE_GET": f"""
SELECT {SCHEDULE_COLUMNS}
FROM {{S}}.schedules s
WHERE {one}s.tenant_id = %(tid)s AND s.schedule_id = %(sid)s
""",
        "SCHEDULE_LIST": f"""
SELECT {SCHEDULE_COLUMNS}
FROM {{S}}.schedules s
WHERE {one}(%(tid)s::text IS NULL OR s.tenant_id = %(tid)s)
  AND (%(first)s OR (s.schedule_id COLLATE "C", s.tenant_id COLLATE "C")
                    > (%(after_sid)s::text COLLATE "C", %(after_tid)s::text COLLATE "C"))
ORDER BY s.schedule_id COLLATE "C", s.tenant_id COLLATE "C"
LIMIT %(limit)s
""",
        "SCHEDULE_DELETE": f"""
DELETE FROM {{S}}.schedules s
WHERE {one}s.tenant_id = %(tid)s AND s.schedule_id = %(sid)s
RETURNING true AS done
""",
        # Lease due rows, earliest first; rows locked by another claimant are skipped.
        "SCHEDULE_CLAIM": f"""
WITH c AS MATERIALIZED (
  SELECT s.shard_key, s.tenant_id, s.schedule_id
  FROM {{S}}.schedules s
  WHERE {_FIRES} AND s.due_at <= now()
    AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now()) {keys}
  ORDER BY s.due_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {{S}}.schedules s
SET lease_token = %(token)s, lease_expires_at = now() + %(lease)s::interval
FROM c
WHERE {one}s.shard_key = c.shard_key AND s.tenant_id = c.tenant_id
  AND s.schedule_id = c.schedule_id
RETURNING {SCHEDULE_COLUMNS}, s.lease_expires_at
""",
        # The scheduler's own fields always; the plan only if no client wrote meanwhile.
        "SCHEDULE_ADVANCE": """
UPDATE {S}.schedules s
SET last_tick_at = %(last_tick)s, last_workflow_id = %(last_workflow)s,
    buffered_tick_at = %(buffered)s,
    next_tick_at = CASE WHEN s.revision = %(revision)s THEN %(next_tick)s::timestamptz
                        ELSE s.next_tick_at END,
    due_at = CASE WHEN s.revision = %(revision)s THEN %(due)s::timestamptz ELSE s.due_at END,
    trigger_at = CASE WHEN s.revision = %(revision)s THEN %(trigger)s::timestamptz
                      ELSE s.trigger_at END,
    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
WHERE s.shard_key = %(sk)s AND s.tenant_id = %(tid)s AND s.schedule_id = %(sid)s
  AND s.lease_token = %(token)s
RETURNING true AS done
""",
        "SCHEDULE_PROBE": f"""
SELECT EXISTS (
  SELECT 1 FROM {{S}}.schedules s
  WHERE {_FIRES} AND s.due_at <= now()
    AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now()) {keys}) AS found
""",
        "SCHEDULE_NEXT_DUE": f"""
SELECT min(CASE WHEN s.lease_expires_at > s.due_at THEN s.lease_expires_at
                ELSE s.due_at END) AS due
FROM {{S}}.schedules s
WHERE {_FIRES} AND s.due_at IS NOT NULL {keys}
""",
    }
