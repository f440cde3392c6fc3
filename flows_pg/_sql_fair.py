"""The tenant-fair claim of PostgreSQL (``PostgresStore(..., fair_tenants=True)``).

``flows_pg._sql.CLAIM`` leases the oldest visible tasks: a tenant with 100,000 queued
tasks delays everybody else's behind them. ``FAIR_CLAIM`` is the same statement whose
candidates (``c``) are taken in turns: the oldest claimable task of every tenant that
has one first, then the second of each, and so on, up to the claim's limit, so a quiet
tenant's new task is in the next claim batch whatever the backlog of the others.

The tenants with claimable work are found with a skip scan (a recursive CTE walking
``tasks_tenant_claim_idx`` (tenant_id, visible_at) from one tenant to the next): its
cost grows with the number of tenants that have work, not with the backlog (each
tenant's tasks are read from the same index: the row comparison on (tenant_id,
visible_at) is an index condition there only, so the planner does not walk
tasks_visible_idx through the other tenants' backlog instead). A tenant
whose tasks are all leased or not yet due is walked through entry by entry (they sort
after its claimable ones), and every tenant with work is visited by every claim: fit
for up to some thousands of busy tenants per schema.
"""

from __future__ import annotations

from typing import Final

from . import _sql

_FIFO_CANDIDATES: Final = """WITH c AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.task_id, t.workflow_id, t.kind, t.visible_at
  FROM {S}.tasks t
  WHERE t.queue = ANY(%(queues)s::text[]) AND t.visible_at <= now() {shards}
    AND (NOT %(fresh_only)s OR t.kind <> 'workflow' OR t.attempt <= 1)
  ORDER BY t.visible_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)"""

_CLAIMABLE: Final = """t.queue IS NOT NULL AND t.queue = ANY(%(queues)s::text[])
      AND t.visible_at <= now() {shards}"""

_FAIR_CANDIDATES: Final = f"""WITH RECURSIVE tn AS (
  (SELECT t.tenant_id FROM {{S}}.tasks t
   WHERE {_CLAIMABLE}
   ORDER BY t.tenant_id LIMIT 1)
  UNION ALL
  SELECT nx.tenant_id FROM tn CROSS JOIN LATERAL (
    SELECT t.tenant_id FROM {{S}}.tasks t
    WHERE t.tenant_id > tn.tenant_id AND {_CLAIMABLE}
    ORDER BY t.tenant_id LIMIT 1) nx
), ranked AS MATERIALIZED (
  SELECT x.shard_key, x.tenant_id, x.task_id, x.visible_at,
         row_number() OVER (PARTITION BY x.tenant_id ORDER BY x.visible_at, x.task_id) AS turn
  FROM tn CROSS JOIN LATERAL (
    SELECT t.shard_key, t.tenant_id, t.task_id, t.visible_at FROM {{S}}.tasks t
    WHERE t.tenant_id = tn.tenant_id AND (t.tenant_id, t.visible_at) <= (tn.tenant_id, now())
      AND {_CLAIMABLE}
      AND (NOT %(fresh_only)s OR t.kind <> 'workflow' OR t.attempt <= 1)
    ORDER BY t.tenant_id, t.visible_at LIMIT %(limit)s) x
), pick AS MATERIALIZED (
  SELECT r.shard_key, r.tenant_id, r.task_id FROM ranked r
  ORDER BY r.turn, r.visible_at, r.task_id LIMIT %(limit)s
), c AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.task_id, t.workflow_id, t.kind, t.visible_at
  FROM pick
  JOIN {{S}}.tasks t
    ON t.shard_key = pick.shard_key AND t.tenant_id = pick.tenant_id
   AND t.task_id = pick.task_id
  WHERE t.visible_at <= now() AND t.queue = ANY(%(queues)s::text[])
  FOR UPDATE OF t SKIP LOCKED
)"""


def fair_claim() -> str:
    """``_sql.CLAIM`` with its candidates taken in turns per tenant."""
    if _FIFO_CANDIDATES not in _sql.CLAIM:
        raise RuntimeError(
            "flows_pg._sql.CLAIM no longer starts with the candidates flows_pg._sql_fair "
            "replaces: update _FIFO_CANDIDATES there"
        )
    return _sql.CLAIM.replace(_FIFO_CANDIDATES, _FAIR_CANDIDATES, 1)


FAIR_CLAIM: Final = fair_claim()
