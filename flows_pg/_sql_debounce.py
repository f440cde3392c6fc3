"""The statements of debounced starts (``flows_core.store.DebounceStore``, migration 013).

Every statement about one key names its shard key ``%(sk)s`` (on Citus a router query;
tests/citus/test_router_plans.py EXPLAINs each). ``debounce_statements(sharded=False)``
are PostgresStore's: a claim looks at every shard key or at a list (``{shards}``);
``sharded=True`` gives CitusStore's: a claim looks at one shard key.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PENDING_COLUMNS", "debounce_statements"]

PENDING_COLUMNS: Final = """p.shard_key, p.tenant_id, p.workflow_name, p.debounce_key,
    p.workflow_id, p.workflow_version, p.input::text AS input, p.fires_at, p.starts"""
"""The columns ``flows_pg._debounce.pending_from_row`` reads (table aliased ``p``)."""

_KEY: Final = """p.shard_key = %(sk)s AND p.tenant_id = %(tid)s AND p.workflow_name = %(name)s
  AND p.debounce_key = %(key)s"""

_CLAIMABLE: Final = (
    "p.fires_at <= now() AND (p.lease_expires_at IS NULL OR p.lease_expires_at <= now())"
)


def debounce_statements(*, sharded: bool) -> dict[str, str]:
    """The statements by name; ``sharded``: a scan names its one shard key ``%(sk)s``."""
    keys = "AND p.shard_key = %(sk)s" if sharded else "{shards}"
    one = "p.shard_key = %(sk)s AND " if sharded else ""
    return {
        # A start first closes the key's open window if its time has come (it fires as
        # it is), then opens one or replaces the open one's input (same transaction).
        "DEBOUNCE_CLOSE_DUE": f"""
UPDATE {{S}}.pending_starts p
SET closed = true, updated_at = now()
WHERE {_KEY} AND NOT p.closed AND p.fires_at <= now()
""",
        "DEBOUNCE_UPSERT": f"""
INSERT INTO {{S}}.pending_starts AS p (shard_key, tenant_id, workflow_name, debounce_key,
    workflow_id, workflow_version, input, fires_at)
VALUES (%(sk)s, %(tid)s, %(name)s, %(key)s, %(wid)s, %(version)s, %(input)s::json,
    now() + %(window)s::interval)
ON CONFLICT (shard_key, tenant_id, workflow_name, debounce_key) WHERE NOT closed
DO UPDATE SET input = EXCLUDED.input, workflow_version = EXCLUDED.workflow_version,
    starts = p.starts + 1
RETURNING {PENDING_COLUMNS}
""",
        # The open window, else the oldest closed one not yet finished.
        "DEBOUNCE_GET": f"""
SELECT {PENDING_COLUMNS}
FROM {{S}}.pending_starts p
WHERE {_KEY}
ORDER BY p.closed, p.fires_at
LIMIT 1
""",
        # Close and lease due rows, earliest first; rows locked by another are skipped.
        "DEBOUNCE_CLAIM": f"""
WITH c AS MATERIALIZED (
  SELECT p.shard_key, p.tenant_id, p.workflow_name, p.debounce_key, p.workflow_id
  FROM {{S}}.pending_starts p
  WHERE {_CLAIMABLE} {keys}
  ORDER BY p.fires_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {{S}}.pending_starts p
SET closed = true, lease_token = %(token)s, lease_expires_at = now() + %(lease)s::interval
FROM c
WHERE {one}p.shard_key = c.shard_key AND p.tenant_id = c.tenant_id
  AND p.workflow_name = c.workflow_name AND p.debounce_key = c.debounce_key
  AND p.workflow_id = c.workflow_id
RETURNING {PENDING_COLUMNS}, p.lease_expires_at
""",
        "DEBOUNCE_FINISH": f"""
DELETE FROM {{S}}.pending_starts p
WHERE {_KEY} AND p.workflow_id = %(wid)s AND p.lease_token = %(token)s
RETURNING true AS done
""",
        "DEBOUNCE_PROBE": f"""
SELECT EXISTS (SELECT 1 FROM {{S}}.pending_starts p WHERE {_CLAIMABLE} {keys}) AS found
""",
        # The first window to close (an index scan by fires_at), or a claim's lease to
        # run out (claimed rows are few: they are deleted once fired).
        "DEBOUNCE_NEXT_DUE": f"""
SELECT least(
  (SELECT p.fires_at FROM {{S}}.pending_starts p
   WHERE p.lease_token IS NULL {keys} ORDER BY p.fires_at LIMIT 1),
  (SELECT min(p.lease_expires_at) FROM {{S}}.pending_starts p
   WHERE p.lease_token IS NOT NULL {keys})) AS due
""",
    }
