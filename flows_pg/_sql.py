"""The statements of PostgresStore. ``{S}`` stands for the quoted schema.

Every store method is one statement (data-modifying CTEs), so it is one transaction and,
on an autocommit pool connection, one round trip. All times come from the database
(``now()``). Every result column has a name (rows are read as dicts). A statement that
does what a Citus one does has the same name as in ``flows_citus._sql``; ``SqlStore``
runs GET_HISTORY, HEARTBEAT, RELEASE, RETRY_ACTIVITY and FAIL_WORKFLOW_TASK by name on
either variant.

Locking. Writes that touch a workflow lock its ``workflows`` row first and its task rows
second, so concurrent writers of one workflow queue up instead of deadlocking. Claims
and timer firing never wait: they lock with SKIP LOCKED (claims: task rows, then the
workflow rows of claimed workflow tasks), so a workflow being written to is left for a
later call.

Snapshots. A statement that waited for a row lock sees the latest version of that row
but reads every other table as of its start (READ COMMITTED). So every decision that
depends on what happened meanwhile is taken from the locked ``workflows`` row:
history_length and next_seq (commit fencing), inbox_length (does the workflow task stay
pending?) and inbox_seq (the next inbox position). Inbox inserts happen under that lock,
so committed inbox rows always form a prefix of the inbox in inbox_seq order: a
statement that moves the inbox into the history moves exactly the rows it can see, which
are the oldest ones, and the rest (if any) stay queued in order.
"""

from __future__ import annotations

from typing import Any, Final

from flows_core.store import ListQuery

from ._base import RECORD, TERMINAL_SQL

_PENDING: Final = """EXISTS (SELECT 1 FROM {S}.tasks t
    WHERE t.shard_key = w.shard_key AND t.tenant_id = w.tenant_id
      AND t.workflow_id = w.workflow_id AND t.kind = 'workflow' AND t.visible_at <= now())
    AS pending"""

# The workflow task that "ensure a workflow task" inserts; coalesces with an existing one
# (leased, pending or parked) through the partial unique index.
_ENSURE_WORKFLOW_TASK: Final = """INSERT INTO {S}.tasks
    (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
  SELECT x.shard_key, x.tenant_id, %(wf_task_id)s, x.workflow_id, 'workflow',
         'w:' || x.name || ':' || x.version, x.name, now()
  FROM {src} x
  ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING"""

# A start notifies only the work channel: nobody waits for a workflow that did not
# exist. START notifies always; START_QUIET (used by a store that wakes the workers it
# runs itself in-process: SqlStore.own_workers) only when a live worker (registered
# within %(horizon)s) other than those (%(local)s) runs the workflow's type. A worker
# registers before its first claim, so one not registered yet still finds the task by
# claiming. (START_QUIET reads the workers table, which a store that registers workers
# may do; an application role under row-level security may not.)
_START: Final = (
    """
WITH wf AS (
  INSERT INTO {S}.workflows AS w
    (shard_key, tenant_id, workflow_id, name, version, status, input, history_length, next_seq)
  VALUES (%(sk)s, %(tid)s, %(wid)s, %(name)s, %(version)s, 'running', %(input)s::json, 1, 1)
  ON CONFLICT DO NOTHING
  RETURNING w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT wf.shard_key, wf.tenant_id, wf.workflow_id, 1, %(event)s::json FROM wf
), t AS (
  """
    + _ENSURE_WORKFLOW_TASK.replace("{src}", "wf")
    + """
), n AS (
  SELECT pg_notify(%(ch_work)s, '') FROM wf {who}
)
SELECT (SELECT count(*) FROM n) AS notified FROM wf
"""
)

START: Final = _START.replace("{who}", "")
START_QUIET: Final = _START.replace(
    "{who}",
    """
  WHERE EXISTS (
    SELECT 1 FROM {S}.workers k
    WHERE k.shard_key = '' AND k.tenant_id = '' AND k.worker_id <> ALL(%(local)s::text[])
      AND k.heartbeat_at > now() - %(horizon)s::interval
      AND k.workflow_types @> jsonb_build_array(jsonb_build_array(wf.name, wf.version)))""",
)

# Eager start (flows_core.store.EagerStart): START with the workflow task inserted
# leased to %(owner)s until now() + %(lease)s, as a claim would leave it (attempt 2 is
# the number the next claim gets). Nothing is claimable, so nothing is notified; and
# nobody waits for a workflow that did not exist.
START_LEASED: Final = """
WITH wf AS (
  INSERT INTO {S}.workflows AS w
    (shard_key, tenant_id, workflow_id, name, version, status, input, history_length, next_seq)
  VALUES (%(sk)s, %(tid)s, %(wid)s, %(name)s, %(version)s, 'running', %(input)s::json, 1, 1)
  ON CONFLICT DO NOTHING
  RETURNING w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.created_at,
            w.updated_at
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT wf.shard_key, wf.tenant_id, wf.workflow_id, 1, %(event)s::json FROM wf
), t AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, name,
                         attempt, visible_at, lease_token, lease_owner)
  SELECT wf.shard_key, wf.tenant_id, %(wf_task_id)s, wf.workflow_id, 'workflow',
         'w:' || wf.name || ':' || wf.version, wf.name, 2, now() + %(lease)s::interval,
         %(token)s, %(owner)s
  FROM wf
  RETURNING visible_at
)
SELECT wf.created_at, wf.updated_at, (SELECT visible_at FROM t) AS lease_expires FROM wf
"""

# The workflow row of (%(tid)s, %(wid)s), locked: every client write decides on it.
_LOCK: Final = """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.status,
         w.inbox_seq, w.cancel_requested, w.history_length
  FROM {S}.workflows w
  WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
)"""

# Put one external event (signal / cancel request) in the inbox of the workflows in
# ``ok``, ensure their workflow task. The inbox position comes from the locked row.
_TO_INBOX: Final = (
    """, i AS (
  INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
  SELECT ok.shard_key, ok.tenant_id, ok.workflow_id, ok.inbox_seq + 1, %(event)s::json
  FROM ok
), u AS (
  UPDATE {S}.workflows w
  SET inbox_seq = ok.inbox_seq + 1, inbox_length = w.inbox_length + 1,
      updated_at = now() {set_extra}
  FROM ok
  WHERE w.shard_key = ok.shard_key AND w.tenant_id = ok.tenant_id
    AND w.workflow_id = ok.workflow_id
), t AS (
  """
    + _ENSURE_WORKFLOW_TASK.replace("{src}", "ok")
    + """
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM ok
)"""
)

# End the workflows in ``{src}`` now (terminate; cancel of a parked workflow; the
# statuses that end are %(end_from)s, see ClientOps.end_params): the events
# %(end_events)s appended after the history, status %(end_status)s with error
# %(end_error)s, every task and inbox row deleted, waiters woken.
_END_NOW: Final = """, eh AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT {src}.shard_key, {src}.tenant_id, {src}.workflow_id, {src}.history_length + e.ord,
         e.ev::json
  FROM {src}, unnest(%(end_events)s::text[]) WITH ORDINALITY AS e(ev, ord)
), eu AS (
  UPDATE {S}.workflows w
  SET status = %(end_status)s, error = %(end_error)s::json, output = NULL,
      history_length = {src}.history_length + cardinality(%(end_events)s::text[]),
      inbox_length = 0, cancel_requested = w.cancel_requested OR %(cancel)s,
      updated_at = now()
  FROM {src}
  WHERE w.shard_key = {src}.shard_key AND w.tenant_id = {src}.tenant_id
    AND w.workflow_id = {src}.workflow_id
), et AS (
  DELETE FROM {S}.tasks t USING {src}
  WHERE t.shard_key = {src}.shard_key AND t.tenant_id = {src}.tenant_id
    AND t.workflow_id = {src}.workflow_id
), ei AS (
  DELETE FROM {S}.inbox i USING {src}
  WHERE i.shard_key = {src}.shard_key AND i.tenant_id = {src}.tenant_id
    AND i.workflow_id = {src}.workflow_id
), en AS (
  SELECT pg_notify(%(ch_wf)s, %(wf_key)s) FROM {src}
)"""


def _before(*notified: str) -> str:
    """What a client write returns: the locked row as it was (no row: not found). It
    names the NOTIFY CTEs ``notified``, which would not run if nothing referred to them."""
    counts = " + ".join(f"(SELECT count(*) FROM {n})" for n in notified)
    return f"""
SELECT wl.status, wl.cancel_requested, {counts} AS notified FROM wl
"""


SIGNAL: Final = (
    _LOCK
    + """, ok AS (
  SELECT * FROM wl WHERE wl.status NOT IN """
    + TERMINAL_SQL
    + """
)"""
    + _TO_INBOX.replace("{set_extra}", "")
    + _before("n")
)

# A running workflow gets the request in its inbox (once); a parked one (%(end_from)s)
# ends cancelled.
CANCEL: Final = (
    _LOCK
    + """, ok AS (
  SELECT * FROM wl WHERE wl.status = 'running' AND NOT wl.cancel_requested
)"""
    + _TO_INBOX.replace("{set_extra}", ", cancel_requested = true")
    + """, pk AS (
  SELECT * FROM wl WHERE wl.status = ANY(%(end_from)s::text[])
)"""
    + _END_NOW.replace("{src}", "pk")
    + _before("n", "en")
)

TERMINATE: Final = (
    _LOCK
    + """, ok AS (
  SELECT * FROM wl WHERE wl.status = ANY(%(end_from)s::text[])
)"""
    + _END_NOW.replace("{src}", "ok")
    + _before("en")
)

GET_WORKFLOW: Final = f"""
SELECT {RECORD}, {_PENDING}
FROM {{S}}.workflows w
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
"""

GET_HISTORY: Final = """
SELECT (
  SELECT json_agg(h.event ORDER BY h.position)::text
  FROM {S}.history h
  WHERE h.shard_key = w.shard_key AND h.tenant_id = w.tenant_id
    AND h.workflow_id = w.workflow_id AND h.position > %(after)s
) AS history
FROM {S}.workflows w
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
"""


# Listing order (flows_core.store.ListQuery): newest first, ids compared by code point
# (COLLATE "C", as the indexes of migration 004 keep them), so that a keyset cursor
# continues exactly where the last page ended, on every adapter.
LIST_ORDER: Final = 'ORDER BY w.created_at DESC, w.workflow_id COLLATE "C" DESC'


def list_filters(query: ListQuery) -> list[str]:
    """The WHERE conditions of a listing (on ``w``) for the filters and cursor that
    ``query`` sets (parameters: ``list_params``)."""
    where = []
    if query.tenant_id is not None:
        where.append("w.tenant_id = %(tid)s")
    if query.status is not None:
        where.append("w.status = %(status)s")
    if query.name is not None:
        where.append("w.name = %(name)s")
    if query.id_prefix is not None:
        where.append("starts_with(w.workflow_id, %(id_prefix)s)")
    if query.created_from is not None:
        where.append("w.created_at >= %(created_from)s")
    if query.created_to is not None:
        where.append("w.created_at < %(created_to)s")
    if query.after is not None:
        # rows after (at, id) in the order: the first condition bounds the index scan
        where.append(
            "w.created_at <= %(after_at)s AND (w.created_at < %(after_at)s"
            ' OR w.workflow_id COLLATE "C" < %(after_id)s)'
        )
    return where


def list_params(query: ListQuery) -> dict[str, Any]:
    """The parameters of ``list_filters(query)``."""
    after_at, after_id = query.after if query.after is not None else (None, None)
    return {
        "tid": query.tenant_id,
        "status": None if query.status is None else str(query.status),
        "name": query.name,
        "id_prefix": query.id_prefix,
        "created_from": query.created_from,
        "created_to": query.created_to,
        "after_at": after_at,
        "after_id": after_id,
    }


def list_workflows_sql(query: ListQuery) -> str:
    """The listing of ``query``: its filters, then %(limit)s rows after %(offset)s."""
    where = list_filters(query)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return f"""
SELECT {RECORD}, {_PENDING}
FROM {{S}}.workflows w
{clause}
{LIST_ORDER}
LIMIT %(limit)s OFFSET %(offset)s
"""


_WF_KEY: Final = """{a}.shard_key = {b}.shard_key AND {a}.tenant_id = {b}.tenant_id
    AND {a}.workflow_id = {b}.workflow_id"""


def _same_wf(a: str, b: str) -> str:
    return _WF_KEY.replace("{a}", a).replace("{b}", b)


# Lease up to ``limit`` visible tasks of the given queues, oldest first; the lease token
# of the n-th claimed row is %(tokens)s[n] and its visible_at becomes the lease expiry.
#
# c:  the task rows, locked with SKIP LOCKED (concurrent claimers pass each other by).
# w0: the snapshot version of the workflow rows of the workflow tasks among them.
# wl: the same rows, locked with SKIP LOCKED (a workflow being written to is skipped, and
#     the claim never waits, so its task-then-workflow lock order cannot deadlock with the
#     writers' workflow-then-task order). Locking returns the latest version.
# cw: the workflows claimed: running, and unchanged since the snapshot (same history and
#     inbox), so the history and inbox rows this statement reads are complete.
# Claimed workflow tasks move their inbox to the end of the history (mv/mp/hi/uw) and
# come back with the row as of after the move and the whole history, or only its events
# after ``history_from`` when the claimant holds the history up to there (sc: an entry
# of ClaimRequest.cached that the history continues, see flows_core.store.continued_length;
# ck first keeps only the entries of the claimed workflows, without sorting them all).
# Attempts: a workflow task's ``attempt`` is the number its next claim gets (returned
# minus one); an activity task's is the number of its current or last claim, counted on
# here when the task still holds a lease token, i.e. its previous claimant's lease ran
# out without a completion, retry or release (a crashed or cut attempt).
CLAIM: Final = (
    """
WITH c AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.task_id, t.workflow_id, t.kind, t.visible_at
  FROM {S}.tasks t
  WHERE t.queue = ANY(%(queues)s::text[]) AND t.visible_at <= now() {shards}
    AND (NOT %(fresh_only)s OR t.kind <> 'workflow' OR t.attempt <= 1)
  ORDER BY t.visible_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), w0 AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.history_length, w.inbox_seq
  FROM {S}.workflows w
  WHERE (w.shard_key, w.tenant_id, w.workflow_id) IN
        (SELECT c.shard_key, c.tenant_id, c.workflow_id FROM c WHERE c.kind = 'workflow')
), wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.status, w.input,
         w.output, w.error, w.created_at, w.updated_at, w.history_length, w.next_seq,
         w.cancel_requested, w.inbox_length, w.inbox_seq, w.run_number, w.status_value
  FROM {S}.workflows w
  WHERE (w.shard_key, w.tenant_id, w.workflow_id) IN
        (SELECT w0.shard_key, w0.tenant_id, w0.workflow_id FROM w0)
    AND w.status = 'running'
  FOR UPDATE SKIP LOCKED
), cw AS MATERIALIZED (
  SELECT wl.*
  FROM wl
  JOIN w0 ON """
    + _same_wf("w0", "wl")
    + """
  WHERE wl.history_length = w0.history_length AND wl.inbox_seq = w0.inbox_seq
), ok AS MATERIALIZED (
  SELECT c.shard_key, c.tenant_id, c.task_id,
         row_number() OVER (ORDER BY c.visible_at, c.task_id) AS rn
  FROM c
  WHERE c.kind <> 'workflow' OR EXISTS (SELECT 1 FROM cw WHERE """
    + _same_wf("cw", "c")
    + """)
), u AS (
  UPDATE {S}.tasks t
  SET lease_token = (%(tokens)s::uuid[])[ok.rn], lease_owner = %(owner)s,
      visible_at = now() + %(lease)s::interval,
      attempt = CASE WHEN t.kind = 'workflow' OR t.lease_token IS NOT NULL
                   THEN t.attempt + 1 ELSE t.attempt END
  FROM ok
  WHERE t.shard_key = ok.shard_key AND t.tenant_id = ok.tenant_id AND t.task_id = ok.task_id
  RETURNING t.shard_key, t.tenant_id, t.workflow_id, t.task_id, t.kind, t.lease_token,
            t.visible_at, t.seq, t.name, t.input::text AS input,
            CASE WHEN t.kind = 'workflow' THEN t.attempt - 1 ELSE t.attempt END AS attempt,
            ok.rn, t.scheduled_at
), mv AS (
  DELETE FROM {S}.inbox i
  USING cw
  WHERE """
    + _same_wf("i", "cw")
    + """
  RETURNING i.shard_key, i.tenant_id, i.workflow_id, i.inbox_seq, i.event
), mp AS MATERIALIZED (
  SELECT mv.shard_key, mv.tenant_id, mv.workflow_id, mv.event,
         (cw.history_length + row_number() OVER (
            PARTITION BY mv.shard_key, mv.tenant_id, mv.workflow_id
            ORDER BY mv.inbox_seq))::integer AS position
  FROM mv
  JOIN cw ON """
    + _same_wf("cw", "mv")
    + """
), hi AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT mp.shard_key, mp.tenant_id, mp.workflow_id, mp.position, mp.event FROM mp
), mc AS MATERIALIZED (
  SELECT mp.shard_key, mp.tenant_id, mp.workflow_id, count(*)::integer AS n
  FROM mp
  GROUP BY mp.shard_key, mp.tenant_id, mp.workflow_id
), uw AS (
  UPDATE {S}.workflows w
  SET history_length = w.history_length + mc.n, inbox_length = w.inbox_length - mc.n
  FROM mc
  WHERE """
    + _same_wf("w", "mc")
    + """
), ck AS MATERIALIZED (
  SELECT k.tenant_id, k.workflow_id, k.history_length, k.seed
  FROM unnest(%(c_tenants)s::text[], %(c_ids)s::text[], %(c_lengths)s::integer[],
              %(c_seeds)s::bigint[]) AS k(tenant_id, workflow_id, history_length, seed)
  WHERE k.workflow_id = ANY (ARRAY(SELECT cw.workflow_id FROM cw))
), sc AS MATERIALIZED (
  SELECT cw.shard_key, cw.tenant_id, cw.workflow_id, k.history_length AS history_from
  FROM cw
  JOIN ck k ON k.tenant_id = cw.tenant_id AND k.workflow_id = cw.workflow_id
  LEFT JOIN mc ON """
    + _same_wf("mc", "cw")
    + """
  WHERE k.history_length >= 1 AND k.history_length <= cw.history_length + coalesce(mc.n, 0)
    AND (SELECT (h.event ->> 'seed')::bigint FROM {S}.history h
         WHERE """
    + _same_wf("h", "cw")
    + """ AND h.position = 1
           AND h.event ->> 'type' = 'workflow_started') = k.seed
)
SELECT u.kind AS task_kind, u.task_id, u.lease_token, u.visible_at AS lease_expires,
  u.seq AS task_seq, u.name AS task_name, u.input AS task_input, u.attempt AS task_attempt,
  r.*,
  CASE WHEN u.kind = 'workflow' THEN (
    SELECT json_agg(x.event ORDER BY x.position)::text
    FROM (
      SELECT h.position, h.event
      FROM {S}.history h
      WHERE """
    + _same_wf("h", "u")
    + """ AND h.position > coalesce(sf.history_from, 0)
      UNION ALL
      SELECT mp.position, mp.event FROM mp WHERE """
    + _same_wf("mp", "u")
    + """ AND mp.position > coalesce(sf.history_from, 0)
    ) x
  ) END AS history,
  coalesce(sf.history_from, 0) AS history_from,
  u.scheduled_at
FROM u
CROSS JOIN LATERAL (
  SELECT cw.tenant_id, cw.workflow_id, cw.name, cw.version, cw.shard_key, cw.status,
         cw.input::text AS input, cw.output::text AS output, cw.error::text AS error,
         cw.created_at, cw.updated_at, cw.history_length + coalesce(mc.n, 0) AS history_length,
         cw.next_seq, cw.cancel_requested, cw.inbox_length - coalesce(mc.n, 0) AS inbox_length,
         cw.run_number, cw.status_value::text AS status_value
  FROM cw
  LEFT JOIN mc ON """
    + _same_wf("mc", "cw")
    + """
  WHERE u.kind = 'workflow' AND """
    + _same_wf("cw", "u")
    + """
  UNION ALL
  SELECT """
    + RECORD
    + """
  FROM {S}.workflows w
  WHERE u.kind <> 'workflow' AND """
    + _same_wf("w", "u")
    + """
) r
LEFT JOIN sc sf ON """
    + _same_wf("sf", "u")
    + """
ORDER BY u.rn
"""
)

# Lock the workflow row, then (only then: the InitPlan runs first) the leased task row.
_FENCE: Final = """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.history_length,
         w.next_seq, w.cancel_requested, w.inbox_length, w.inbox_seq
  FROM {S}.workflows w
  WHERE w.shard_key = %(sk)s AND w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
), tl AS MATERIALIZED (
  SELECT t.task_id, t.kind, t.seq
  FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s AND t.workflow_id = %(wid)s
    AND (SELECT count(*) FROM wl) > 0
  FOR UPDATE
)"""

_WF_PK: Final = _same_wf("w", "f")

# Apply a workflow task's outcome (see WorkflowTaskCommit). Fenced by the lease token,
# next_seq and history_length of the locked row; the events go at claimed + 1...
# The workflow task is then deleted, or released (visible now) if the inbox is not
# empty, or, with keep_lease, stays leased for keep_lease while the inbox moves into the
# history after the events (mv/hm) and comes back to the caller. A terminal status
# deletes every task of the workflow (inbox rows stay).
#
# ``commit_sql`` writes the variant a commit needs: the parts for new activity tasks,
# timers, dropped steps and the kept lease only when the commit has them, so that the
# common commit (an inline step: events only) plans and runs little, dumps few
# parameters and stays under psycopg's 4 KiB parse cache.
_COMMIT_HEAD: Final = (
    _FENCE
    + """, f AS (
  SELECT wl.*
  FROM wl, tl
  WHERE tl.kind = 'workflow' AND wl.next_seq = %(expected)s
    AND wl.history_length = %(claimed)s
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, %(claimed)s + e.ord, e.ev::json
  FROM f, unnest(%(events)s::text[]) WITH ORDINALITY AS e(ev, ord)
)"""
)

# keep: the inbox moves into the history after the events and comes back (mp). The
# row's indexed columns (updated_at, status) and the task's visible_at (while more than
# half of keep_lease is left) stay as they are, so both updates are heap-only (HOT):
# a step's commit then writes no index entries for them.
_COMMIT_KEEP: Final = (
    """, mv AS (
  DELETE FROM {S}.inbox i
  USING f
  WHERE """
    + _same_wf("i", "f")
    + """
  RETURNING i.inbox_seq, i.event
), mp AS MATERIALIZED (
  SELECT mv.event, mv.inbox_seq,
         (%(claimed)s + %(n_events)s + row_number() OVER (ORDER BY mv.inbox_seq))::integer
           AS position
  FROM mv
), hm AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, mp.position, mp.event
  FROM f, mp
), u AS (
  UPDATE {S}.workflows w
  SET history_length = f.history_length + %(n_events)s + (SELECT count(*) FROM mp),
      inbox_length = f.inbox_length - (SELECT count(*) FROM mp),
      next_seq = %(next_seq)s
  FROM f
  WHERE """
    + _WF_PK
    + """
), r AS (
  UPDATE {S}.tasks t
  SET visible_at = CASE WHEN t.visible_at < now() + %(keep_lease)s::interval / 2
                        THEN now() + %(keep_lease)s::interval ELSE t.visible_at END,
      attempt = 1
  FROM f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id AND t.task_id = %(task_id)s
    AND (t.attempt <> 1 OR t.visible_at < now() + %(keep_lease)s::interval / 2)
)"""
)

# not keep: the workflow task is deleted, or released if the inbox is not empty; a
# terminal status deletes every task of the workflow.
_COMMIT_END: Final = (
    """, u AS (
  UPDATE {S}.workflows w
  SET history_length = f.history_length + %(n_events)s,
      next_seq = %(next_seq)s, status = %(status)s, output = %(output)s::json,
      error = %(error)s::json, updated_at = now()
  FROM f
  WHERE """
    + _WF_PK
    + """
), d AS (
  DELETE FROM {S}.tasks t
  USING f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id
    AND t.workflow_id = f.workflow_id
    AND (%(terminal)s OR (t.kind = 'workflow' AND f.inbox_length = 0){drop})
), r AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = now(), attempt = 1
  FROM f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id AND t.task_id = %(task_id)s
    AND NOT %(terminal)s AND f.inbox_length > 0
)"""
)

_COMMIT_DROP: Final = """, d AS (
  DELETE FROM {S}.tasks t
  USING f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id
    AND t.workflow_id = f.workflow_id{drop}
)"""

_DROP_SEQS: Final = " OR (t.kind <> 'workflow' AND t.seq = ANY(%(drop_seqs)s::int[]))"

_COMMIT_ACTIVITIES: Final = """, a AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, seq,
                         input, attempt, last_error, visible_at, scheduled_at)
  SELECT f.shard_key, f.tenant_id, x.id, f.workflow_id, 'activity', 'a:' || x.name, x.name,
         x.seq, x.input::json, x.attempt, x.err::json, coalesce(x.vis, now()), x.sched
  FROM f, unnest(%(a_ids)s::uuid[], %(a_seqs)s::int[], %(a_names)s::text[],
                 %(a_inputs)s::text[], %(a_attempts)s::int[], %(a_errors)s::text[],
                 %(a_visible)s::timestamptz[], %(a_scheduled)s::timestamptz[])
          AS x(id, seq, name, input, attempt, err, vis, sched)
  WHERE NOT %(terminal)s
  ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
)"""

_COMMIT_TIMERS: Final = """, tm AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, seq,
                         visible_at)
  SELECT f.shard_key, f.tenant_id, x.id, f.workflow_id, 'timer', NULL, x.seq, x.fire_at
  FROM f, unnest(%(t_ids)s::uuid[], %(t_seqs)s::int[], %(t_fire)s::timestamptz[])
          AS x(id, seq, fire_at)
  WHERE NOT %(terminal)s
  ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
)"""


def commit_sql(*, keep: bool, activities: bool, timers: bool, drops: bool) -> str:
    """The commit statement for a commit that keeps its lease (or not) and has new
    activity tasks, timers, steps to drop (or not)."""
    parts = [_COMMIT_HEAD]
    drop = _DROP_SEQS if drops else ""
    if keep:
        parts.append(_COMMIT_KEEP)
        if drops:
            parts.append(_COMMIT_DROP.replace("{drop}", " AND (false" + drop + ")"))
    else:
        parts.append(_COMMIT_END.replace("{drop}", drop))
    if activities:
        parts.append(_COMMIT_ACTIVITIES)
    if timers:
        parts.append(_COMMIT_TIMERS)
    # Work to announce: new tasks, or (no kept lease) an inbox that filled meanwhile.
    # Waiters (wait_for_result) care about the end of a workflow task, not each kept step.
    work = []
    if activities or timers:
        work.append("true")
    if not keep:
        work.append("(NOT %(terminal)s AND f.inbox_length > 0)")
    notify = []
    if work:
        notify.append(
            ", nw AS (\n  SELECT pg_notify(%(ch_work)s, '') FROM f WHERE "
            + " OR ".join(work)
            + "\n)"
        )
    if not keep:
        notify.append(", nf AS (\n  SELECT pg_notify(%(ch_wf)s, %(wf_key)s) FROM f\n)")
    parts += notify
    moved = "(SELECT json_agg(mp.event ORDER BY mp.position)::text FROM mp)" if keep else "NULL"
    counts = [f"(SELECT count(*) FROM {n})" for n in ("nw", "nf") if f", {n} AS" in "".join(notify)]
    parts.append(
        """
SELECT (SELECT count(*) FROM f) AS done, (SELECT count(*) FROM wl) AS wf_found,
       (SELECT count(*) FROM tl) AS task_found, (SELECT next_seq FROM wl) AS next_seq,
       (SELECT history_length FROM wl) AS history_length, """
        + moved
        + " AS moved, "
        + (" + ".join(counts) or "0")
        + " AS notified\n"
    )
    return "".join(parts)


PARK: Final = (
    _FENCE
    + """, f AS (
  SELECT wl.* FROM wl, tl WHERE tl.kind = 'workflow'
), u AS (
  UPDATE {S}.workflows w
  SET status = 'parked', error = %(error)s::json, updated_at = now()
  FROM f
  WHERE """
    + _WF_PK
    + """
), r AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = 'infinity'
  FROM f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id AND t.task_id = %(task_id)s
), nf AS (
  SELECT pg_notify(%(ch_wf)s, %(wf_key)s) FROM f
)
SELECT (SELECT count(*) FROM f) AS done, (SELECT count(*) FROM nf) AS notified
"""
)

# The activity's final event into the inbox, its task deleted, a workflow task ensured.
COMPLETE_ACTIVITY: Final = (
    _FENCE
    + """, f AS (
  SELECT wl.* FROM wl, tl WHERE tl.kind = 'activity'
), i AS (
  INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, f.inbox_seq + 1, %(event)s::json
  FROM f
), u AS (
  UPDATE {S}.workflows w
  SET inbox_seq = f.inbox_seq + 1, inbox_length = f.inbox_length + 1, updated_at = now()
  FROM f
  WHERE """
    + _WF_PK
    + """
), d AS (
  DELETE FROM {S}.tasks t
  USING f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id AND t.task_id = %(task_id)s
), t AS (
  """
    + _ENSURE_WORKFLOW_TASK.replace("{src}", "f")
    + """
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM f
)
SELECT (SELECT count(*) FROM f) AS done, (SELECT count(*) FROM n) AS notified
"""
)

RETRY_ACTIVITY: Final = """
WITH u AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, attempt = %(attempt)s,
      visible_at = %(visible_at)s, last_error = %(error)s::json
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s
  RETURNING 1
), n AS (
  SELECT pg_notify(%(ch_work)s, '') FROM u
)
SELECT (SELECT count(*) FROM u) AS done, (SELECT count(*) FROM n) AS notified
"""

HEARTBEAT: Final = """
WITH u AS (
  UPDATE {S}.tasks t
  SET visible_at = now() + %(extend)s::interval
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s
  RETURNING t.shard_key, t.tenant_id, t.workflow_id, t.visible_at
)
SELECT u.visible_at AS expires_at, coalesce(w.cancel_requested, false) AS cancel_requested
FROM u
LEFT JOIN {S}.workflows w
  ON w.shard_key = u.shard_key AND w.tenant_id = u.tenant_id AND w.workflow_id = u.workflow_id
"""

RELEASE: Final = """
WITH u AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = now(),
      attempt = CASE WHEN t.kind = 'workflow' THEN greatest(t.attempt - 1, 1) ELSE t.attempt END
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s
  RETURNING 1
), n AS (
  SELECT pg_notify(%(ch_work)s, '') FROM u
)
SELECT (SELECT count(*) FROM u) AS done, (SELECT count(*) FROM n) AS notified
"""

# Fire due timers: TimerFired into the inbox, timer task deleted, workflow task ensured.
# Candidates are read without locks, then their workflow rows are locked (SKIP LOCKED: a
# workflow being written to is fired on a later call), then the timer rows (SKIP
# LOCKED), re-checked against the latest versions. A workflow's timers enter its inbox
# in (fire time, seq) order, after the inbox_seq of its locked row.
FIRE_DUE_TIMERS: Final = (
    """
WITH due AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.workflow_id
  FROM {S}.tasks t
  WHERE t.kind = 'timer' AND t.visible_at <= now() {shards}
  ORDER BY t.visible_at
  LIMIT %(limit)s
), wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.inbox_seq
  FROM {S}.workflows w
  WHERE (w.shard_key, w.tenant_id, w.workflow_id) IN
        (SELECT due.shard_key, due.tenant_id, due.workflow_id FROM due)
  FOR UPDATE SKIP LOCKED
), tl AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.workflow_id, t.task_id, t.seq, t.visible_at
  FROM {S}.tasks t
  WHERE (t.shard_key, t.tenant_id, t.workflow_id) IN
        (SELECT wl.shard_key, wl.tenant_id, wl.workflow_id FROM wl)
    AND t.kind = 'timer' AND t.visible_at <= now()
    AND (SELECT count(*) FROM wl) > 0
  ORDER BY t.visible_at, t.seq
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), ev AS MATERIALIZED (
  SELECT tl.shard_key, tl.tenant_id, tl.workflow_id, tl.task_id, tl.seq,
         wl.inbox_seq + row_number() OVER (
           PARTITION BY tl.shard_key, tl.tenant_id, tl.workflow_id
           ORDER BY tl.visible_at, tl.seq) AS inbox_seq
  FROM tl
  JOIN wl ON """
    + _same_wf("wl", "tl")
    + """
), fired AS MATERIALIZED (
  SELECT wl.shard_key, wl.tenant_id, wl.workflow_id, wl.name, wl.version,
         max(ev.inbox_seq) AS inbox_seq, count(*)::integer AS n, row_number() OVER () AS rn
  FROM wl
  JOIN ev ON """
    + _same_wf("ev", "wl")
    + """
  GROUP BY wl.shard_key, wl.tenant_id, wl.workflow_id, wl.name, wl.version
), i AS (
  INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
  SELECT ev.shard_key, ev.tenant_id, ev.workflow_id, ev.inbox_seq,
         json_build_object(
           'type', 'timer_fired',
           'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'seq', ev.seq)
  FROM ev
), u AS (
  UPDATE {S}.workflows w
  SET inbox_seq = f.inbox_seq, inbox_length = w.inbox_length + f.n, updated_at = now()
  FROM fired f
  WHERE """
    + _WF_PK
    + """
), d AS (
  DELETE FROM {S}.tasks t
  USING ev
  WHERE t.shard_key = ev.shard_key AND t.tenant_id = ev.tenant_id AND t.task_id = ev.task_id
), t AS (
  INSERT INTO {S}.tasks
    (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
  SELECT f.shard_key, f.tenant_id, (%(task_ids)s::uuid[])[f.rn], f.workflow_id, 'workflow',
         'w:' || f.name || ':' || f.version, f.name, now()
  FROM fired f
  ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING
), nw AS (
  SELECT pg_notify(%(ch_work)s, '') WHERE EXISTS (SELECT 1 FROM fired)
), nf AS (
  SELECT pg_notify(%(ch_wf)s, json_build_array(f.tenant_id, f.workflow_id)::text)
  FROM fired f
)
SELECT (SELECT count(*) FROM ev) AS fired,
       (SELECT count(*) FROM nw) + (SELECT count(*) FROM nf) AS notified
"""
)

# When the next task comes due: a timer due already (it fires at once, however late,
# so zero-length and past timers never wait for a poll interval), or any task whose
# visibility (retry backoff, lease expiry) ends in the future. Unleased claimable
# tasks are not counted: a worker that does not serve their queue must not spin on them.
NEXT_DUE: Final = """
SELECT least(
  (SELECT min(t.visible_at) FROM {S}.tasks t WHERE t.kind = 'timer' {shards}),
  (SELECT min(t.visible_at) FROM {S}.tasks t
   WHERE t.visible_at > now() AND t.visible_at < 'infinity' {shards})) AS due
"""

# -- dead letters (a parked workflow is a dead letter) --

# A workflow task attempt failed (unexpected worker error): released until %(visible_at)s,
# attempt count kept (claim counts on from it), error kept in last_error.
FAIL_WORKFLOW_TASK: Final = """
WITH u AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = %(visible_at)s,
      last_error = %(error)s::json
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s AND t.kind = 'workflow'
  RETURNING 1
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM u
)
SELECT (SELECT count(*) FROM u) AS done, (SELECT count(*) FROM n) AS notified
"""

# A parked workflow back to running: error cleared; its workflow task (inserted if
# missing) claimable now, unleased, attempt count reset. The locked row decides.
RETRY_WORKFLOW: Final = """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.status
  FROM {S}.workflows w
  WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
), ok AS (
  SELECT * FROM wl WHERE wl.status = 'parked'
), u AS (
  UPDATE {S}.workflows w
  SET status = 'running', error = NULL, updated_at = now()
  FROM ok
  WHERE w.shard_key = ok.shard_key AND w.tenant_id = ok.tenant_id
    AND w.workflow_id = ok.workflow_id
), t AS (
  INSERT INTO {S}.tasks
    (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
  SELECT ok.shard_key, ok.tenant_id, %(wf_task_id)s, ok.workflow_id, 'workflow',
         'w:' || ok.name || ':' || ok.version, ok.name, now()
  FROM ok
  ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO UPDATE
  SET lease_token = NULL, lease_owner = NULL, visible_at = now(), attempt = 1,
      last_error = NULL
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM ok
)
SELECT wl.status, (SELECT count(*) FROM n) AS notified FROM wl
"""


# -- operations: retention and stats --

# Delete up to %(limit)s finished workflows last updated before now() - %(age)s, oldest
# first, with their history, inbox and tasks. Rows being written to are skipped (SKIP
# LOCKED) and left for the next batch; a finished workflow takes no more writes anyway.
PRUNE: Final = (
    """
WITH v AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id
  FROM {S}.workflows w
  WHERE w.status IN """
    + TERMINAL_SQL
    + """ AND w.updated_at < now() - %(age)s::interval
  ORDER BY w.updated_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), h AS (
  DELETE FROM {S}.history h USING v WHERE """
    + _same_wf("h", "v")
    + """
), i AS (
  DELETE FROM {S}.inbox i USING v WHERE """
    + _same_wf("i", "v")
    + """
), t AS (
  DELETE FROM {S}.tasks t USING v WHERE """
    + _same_wf("t", "v")
    + """
), rh AS (
  DELETE FROM {S}.run_history h USING v WHERE """
    + _same_wf("h", "v")
    + """
), rn AS (
  DELETE FROM {S}.runs r USING v WHERE """
    + _same_wf("r", "v")
    + """
), d AS (
  DELETE FROM {S}.workflows w USING v WHERE """
    + _same_wf("w", "v")
    + """
  RETURNING 1
)
SELECT count(*) AS pruned FROM d
"""
)

# One tenant's workflows per status (an index-only scan of workflows_list_status_idx).
COUNT_WORKFLOWS: Final = """
SELECT coalesce(json_object_agg(s.status, s.n), '{}')::text AS statuses
FROM (SELECT w.status, count(*) AS n FROM {S}.workflows w
      WHERE w.tenant_id = %(tid)s GROUP BY w.status) s
"""

# Queue depth per shard (claimable now), age of the oldest claimable task, leased tasks,
# and workflows per status. {tshards}/{wshards}: optional shard filters.
STATS: Final = """
SELECT
  (SELECT coalesce(json_object_agg(q.shard_key, q.n), '{}')::text
   FROM (SELECT t.shard_key, count(*) AS n FROM {S}.tasks t
         WHERE t.queue IS NOT NULL AND t.visible_at <= now() {tshards}
         GROUP BY t.shard_key) q) AS depth,
  (SELECT now() - min(t.visible_at) FROM {S}.tasks t
   WHERE t.queue IS NOT NULL AND t.visible_at <= now() {tshards}) AS oldest,
  (SELECT count(*) FROM {S}.tasks t
   WHERE t.lease_token IS NOT NULL AND t.visible_at > now() {tshards}) AS in_flight,
  (SELECT coalesce(json_object_agg(s.status, s.n), '{}')::text
   FROM (SELECT w.status, count(*) AS n FROM {S}.workflows w
         WHERE true {wshards} GROUP BY w.status) s) AS statuses
"""
