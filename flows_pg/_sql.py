"""The statements of PostgresStore. ``{S}`` stands for the quoted schema.

Every store method is one statement (data-modifying CTEs), so it is one transaction and,
on an autocommit pool connection, one round trip. Writes that touch a workflow lock its
``workflows`` row first and its task rows second (timer firing uses SKIP LOCKED on both),
so concurrent writers of one workflow queue up instead of deadlocking. Claims lock only
task rows, with SKIP LOCKED. All times come from the database (``now()``).
"""

from __future__ import annotations

__all__ = [
    "CANCEL",
    "CLAIM",
    "COMMIT",
    "COMMIT_GROWN",
    "COMPLETE_ACTIVITY",
    "FIRE_DUE_TIMERS",
    "GET_HISTORY",
    "GET_WORKFLOW",
    "HEARTBEAT",
    "LIST_WORKERS",
    "LOCK_LEASED",
    "NEXT_DUE",
    "PARK",
    "REGISTER_WORKER",
    "RELEASE",
    "RETRY_ACTIVITY",
    "SIGNAL",
    "START",
    "TERMINAL_SQL",
    "UNREGISTER_WORKER",
    "list_workflows_sql",
]

TERMINAL_SQL = "('completed', 'failed', 'cancelled')"

_RECORD = """w.tenant_id, w.workflow_id, w.name, w.version, w.shard_key, w.status,
    w.input::text, w.output::text, w.error::text, w.created_at, w.updated_at,
    w.history_length, w.next_seq, w.cancel_requested"""

_PENDING = """EXISTS (SELECT 1 FROM {S}.tasks t
    WHERE t.shard_key = w.shard_key AND t.tenant_id = w.tenant_id
      AND t.workflow_id = w.workflow_id AND t.kind = 'workflow' AND t.visible_at <= now())"""

# The workflow task that "ensure a workflow task" inserts; coalesces with an existing one
# (leased, pending or parked) through the partial unique index.
_ENSURE_WORKFLOW_TASK = """INSERT INTO {S}.tasks
    (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
  SELECT x.shard_key, x.tenant_id, %(wf_task_id)s, x.workflow_id, 'workflow',
         'w:' || x.name || ':' || x.version, x.name, now()
  FROM {src} x
  ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING"""

START = (
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
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM wf
)
SELECT (SELECT count(*) FROM wf), (SELECT count(*) FROM n)
"""
)

# Append one external event (signal / cancel request) to a running or parked workflow.
_APPEND_EXTERNAL = (
    """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.status,
         w.history_length, w.cancel_requested
  FROM {S}.workflows w
  WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
), ok AS (
  SELECT * FROM wl WHERE wl.status NOT IN """
    + TERMINAL_SQL
    + """ {extra}
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT ok.shard_key, ok.tenant_id, ok.workflow_id, ok.history_length + 1, %(event)s::json
  FROM ok
), u AS (
  UPDATE {S}.workflows w
  SET history_length = ok.history_length + 1, updated_at = now() {set_extra}
  FROM ok
  WHERE w.shard_key = ok.shard_key AND w.tenant_id = ok.tenant_id
    AND w.workflow_id = ok.workflow_id
), t AS (
  """
    + _ENSURE_WORKFLOW_TASK.replace("{src}", "ok")
    + """
), n AS (
  SELECT pg_notify(%(ch_work)s, ''), pg_notify(%(ch_wf)s, %(wf_key)s) FROM ok
)
SELECT wl.status, wl.cancel_requested, (SELECT count(*) FROM n) FROM wl
"""
)

SIGNAL = _APPEND_EXTERNAL.replace("{extra}", "").replace("{set_extra}", "")
CANCEL = _APPEND_EXTERNAL.replace("{extra}", "AND NOT wl.cancel_requested").replace(
    "{set_extra}", ", cancel_requested = true"
)

GET_WORKFLOW = f"""
SELECT {_RECORD}, {_PENDING}
FROM {{S}}.workflows w
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
"""

GET_HISTORY = """
SELECT (
  SELECT json_agg(h.event ORDER BY h.position)::text
  FROM {S}.history h
  WHERE h.shard_key = w.shard_key AND h.tenant_id = w.tenant_id
    AND h.workflow_id = w.workflow_id AND h.position > %(after)s
)
FROM {S}.workflows w
WHERE w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
"""


def list_workflows_sql(*, tenant: bool, status: bool, name: bool) -> str:
    where = []
    if tenant:
        where.append("w.tenant_id = %(tid)s")
    if status:
        where.append("w.status = %(status)s")
    if name:
        where.append("w.name = %(name)s")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return f"""
SELECT {_RECORD}, {_PENDING}
FROM {{S}}.workflows w
{clause}
ORDER BY w.created_at DESC, w.workflow_id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""


# Lease up to ``limit`` visible tasks of the given queues, oldest first. The lease token
# of the n-th claimed row is %(tokens)s[n]; its visible_at becomes the lease expiry.
# Workflow tasks come back with their workflow row and full history (one json_agg).
CLAIM = f"""
WITH c AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.task_id
  FROM {{S}}.tasks t
  WHERE t.queue = ANY(%(queues)s::text[]) AND t.visible_at <= now() {{shards}}
  ORDER BY t.visible_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), n AS (
  SELECT c.*, row_number() OVER () AS rn FROM c
), u AS (
  UPDATE {{S}}.tasks t
  SET lease_token = (%(tokens)s::uuid[])[n.rn], lease_owner = %(owner)s,
      visible_at = now() + %(lease)s::interval
  FROM n
  WHERE t.shard_key = n.shard_key AND t.tenant_id = n.tenant_id AND t.task_id = n.task_id
  RETURNING t.shard_key, t.tenant_id, t.workflow_id, t.task_id, t.kind, t.lease_token,
            t.visible_at, t.seq, t.name, t.input::text AS input, t.attempt, n.rn
)
SELECT u.kind, u.task_id, u.lease_token, u.visible_at, u.seq, u.name, u.input, u.attempt,
  {_RECORD},
  CASE WHEN u.kind = 'workflow' THEN (
    SELECT json_agg(h.event ORDER BY h.position)::text
    FROM {{S}}.history h
    WHERE h.shard_key = w.shard_key AND h.tenant_id = w.tenant_id
      AND h.workflow_id = w.workflow_id
  ) END
FROM u
JOIN {{S}}.workflows w
  ON w.shard_key = u.shard_key AND w.tenant_id = u.tenant_id AND w.workflow_id = u.workflow_id
ORDER BY u.rn
"""

# Lock the workflow row, then (only then: the InitPlan runs first) the leased task row.
_FENCE = """
WITH wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.history_length,
         w.next_seq, w.cancel_requested
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

_WF_PK = """w.shard_key = f.shard_key AND w.tenant_id = f.tenant_id
    AND w.workflow_id = f.workflow_id"""

# The commit's events go at claimed_history_length + 1... (see WorkflowTaskCommit).
# Fast path (COMMIT): the history did not grow while the task ran, so they are appended.
# If it grew, COMMIT writes nothing and returns grown = true; the store then runs
# COMMIT_GROWN in a transaction that has locked the workflow row first, so its snapshot
# holds every event (a statement that waited for the lock would not see the rows the
# lock holder appended). COMMIT_GROWN rewrites positions claimed+1.. as commit events
# followed by the events that arrived meanwhile, then appends the overflow: keys never
# collide, so no deferrable key is needed.
_COMMIT = (
    _FENCE
    + """, f AS (
  SELECT wl.*, (wl.history_length <> %(claimed)s) AS grew
  FROM wl, tl
  WHERE tl.kind = 'workflow' AND wl.next_seq = %(expected)s {history_guard}
){history}, u AS (
  UPDATE {S}.workflows w
  SET history_length = f.history_length + %(n_events)s, next_seq = %(next_seq)s,
      status = %(status)s, output = %(output)s::json, error = %(error)s::json,
      updated_at = now()
  FROM f
  WHERE """
    + _WF_PK
    + """
), d AS (
  DELETE FROM {S}.tasks t
  USING f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id
    AND t.workflow_id = f.workflow_id
    AND (%(terminal)s
         OR (t.kind = 'workflow' AND NOT f.grew)
         OR (t.kind <> 'workflow' AND t.seq = ANY(%(drop_seqs)s::int[])))
), r AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = now()
  FROM f
  WHERE t.shard_key = f.shard_key AND t.tenant_id = f.tenant_id AND t.task_id = %(task_id)s
    AND f.grew AND NOT %(terminal)s
), a AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, seq,
                         input, attempt, last_error, visible_at)
  SELECT f.shard_key, f.tenant_id, x.id, f.workflow_id, 'activity', 'a:' || x.name, x.name,
         x.seq, x.input::json, x.attempt, x.err::json, coalesce(x.vis, now())
  FROM f, unnest(%(a_ids)s::uuid[], %(a_seqs)s::int[], %(a_names)s::text[],
                 %(a_inputs)s::text[], %(a_attempts)s::int[], %(a_errors)s::text[],
                 %(a_visible)s::timestamptz[]) AS x(id, seq, name, input, attempt, err, vis)
  WHERE NOT %(terminal)s
  ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
), tm AS (
  INSERT INTO {S}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, seq,
                         visible_at)
  SELECT f.shard_key, f.tenant_id, x.id, f.workflow_id, 'timer', NULL, x.seq, x.fire_at
  FROM f, unnest(%(t_ids)s::uuid[], %(t_seqs)s::int[], %(t_fire)s::timestamptz[])
          AS x(id, seq, fire_at)
  WHERE NOT %(terminal)s
  ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
), nw AS (
  SELECT pg_notify(%(ch_work)s, '') FROM f WHERE f.grew OR %(new_work)s
), nf AS (
  SELECT pg_notify(%(ch_wf)s, %(wf_key)s) FROM f
)
SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM wl), (SELECT count(*) FROM tl),
       (SELECT next_seq FROM wl), (SELECT history_length FROM wl),
       (SELECT count(*) FROM nw) + (SELECT count(*) FROM nf)
"""
)

COMMIT = _COMMIT.replace("{history_guard}", "AND wl.history_length = %(claimed)s").replace(
    "{history}",
    """, h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, %(claimed)s + e.ord, e.ev::json
  FROM f, unnest(%(events)s::text[]) WITH ORDINALITY AS e(ev, ord)
)""",
)

COMMIT_GROWN = _COMMIT.replace("{history_guard}", "AND wl.history_length >= %(claimed)s").replace(
    "{history}",
    """, grown AS MATERIALIZED (
  SELECT h.position, h.event
  FROM {S}.history h, f
  WHERE h.shard_key = f.shard_key AND h.tenant_id = f.tenant_id
    AND h.workflow_id = f.workflow_id AND h.position > %(claimed)s
), seqd AS MATERIALIZED (
  SELECT e.ord AS i, e.ev::json AS event
  FROM unnest(%(events)s::text[]) WITH ORDINALITY AS e(ev, ord)
  UNION ALL
  SELECT %(n_events)s + (grown.position - %(claimed)s), grown.event FROM grown
), hu AS (
  UPDATE {S}.history h
  SET event = s.event
  FROM f, seqd s
  WHERE h.shard_key = f.shard_key AND h.tenant_id = f.tenant_id
    AND h.workflow_id = f.workflow_id AND h.position = %(claimed)s + s.i
    AND %(claimed)s + s.i <= f.history_length
), hi AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, %(claimed)s + s.i, s.event
  FROM f, seqd s
  WHERE %(claimed)s + s.i > f.history_length
)""",
)

# Lock the workflow row, then its leased task (first statement of COMMIT_GROWN's transaction).
LOCK_LEASED = """
WITH wl AS MATERIALIZED (
  SELECT w.history_length FROM {S}.workflows w
  WHERE w.shard_key = %(sk)s AND w.tenant_id = %(tid)s AND w.workflow_id = %(wid)s
  FOR UPDATE
)
SELECT t.task_id
FROM {S}.tasks t
WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
  AND t.lease_token = %(token)s AND t.workflow_id = %(wid)s
  AND (SELECT count(*) FROM wl) > 0
FOR UPDATE
"""

PARK = (
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
SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM nf)
"""
)

COMPLETE_ACTIVITY = (
    _FENCE
    + """, f AS (
  SELECT wl.* FROM wl, tl WHERE tl.kind = 'activity'
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT f.shard_key, f.tenant_id, f.workflow_id, f.history_length + 1, %(event)s::json
  FROM f
), u AS (
  UPDATE {S}.workflows w
  SET history_length = f.history_length + 1, updated_at = now()
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
SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM n)
"""
)

RETRY_ACTIVITY = """
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
SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)
"""

HEARTBEAT = """
WITH u AS (
  UPDATE {S}.tasks t
  SET visible_at = now() + %(extend)s::interval
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s
  RETURNING t.shard_key, t.tenant_id, t.workflow_id, t.visible_at
)
SELECT u.visible_at, coalesce(w.cancel_requested, false)
FROM u
LEFT JOIN {S}.workflows w
  ON w.shard_key = u.shard_key AND w.tenant_id = u.tenant_id AND w.workflow_id = u.workflow_id
"""

RELEASE = """
WITH u AS (
  UPDATE {S}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = now()
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s
  RETURNING 1
), n AS (
  SELECT pg_notify(%(ch_work)s, '') FROM u
)
SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)
"""

# Fire due timers. Candidates are read without locks, then their workflow rows are
# locked (SKIP LOCKED: a workflow being written to is fired on a later call), then the
# timer rows (SKIP LOCKED), re-checked against the latest versions.
FIRE_DUE_TIMERS = (
    """
WITH due AS MATERIALIZED (
  SELECT t.shard_key, t.tenant_id, t.workflow_id
  FROM {S}.tasks t
  WHERE t.kind = 'timer' AND t.visible_at <= now() {shards}
  ORDER BY t.visible_at
  LIMIT %(limit)s
), wl AS MATERIALIZED (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version, w.history_length
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
         wl.history_length + row_number() OVER (
           PARTITION BY tl.shard_key, tl.tenant_id, tl.workflow_id
           ORDER BY tl.visible_at, tl.seq) AS position
  FROM tl
  JOIN wl ON wl.shard_key = tl.shard_key AND wl.tenant_id = tl.tenant_id
         AND wl.workflow_id = tl.workflow_id
), fired AS MATERIALIZED (
  SELECT wl.shard_key, wl.tenant_id, wl.workflow_id, wl.name, wl.version,
         max(ev.position) AS history_length, row_number() OVER () AS rn
  FROM wl
  JOIN ev ON ev.shard_key = wl.shard_key AND ev.tenant_id = wl.tenant_id
         AND ev.workflow_id = wl.workflow_id
  GROUP BY wl.shard_key, wl.tenant_id, wl.workflow_id, wl.name, wl.version
), h AS (
  INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
  SELECT ev.shard_key, ev.tenant_id, ev.workflow_id, ev.position,
         json_build_object(
           'type', 'timer_fired',
           'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'seq', ev.seq)
  FROM ev
), u AS (
  UPDATE {S}.workflows w
  SET history_length = f.history_length, updated_at = now()
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
SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM nw) + (SELECT count(*) FROM nf)
"""
)

NEXT_DUE = """
SELECT min(t.visible_at)
FROM {S}.tasks t
WHERE t.visible_at > now() AND t.visible_at < 'infinity' {shards}
"""

REGISTER_WORKER = """
INSERT INTO {S}.workers (shard_key, tenant_id, worker_id, workflow_types, activity_names,
                         host, pid, heartbeat_at)
VALUES ('', '', %(worker_id)s, %(types)s::jsonb, %(names)s::jsonb, %(host)s, %(pid)s, %(at)s)
ON CONFLICT (shard_key, tenant_id, worker_id) DO UPDATE
SET workflow_types = excluded.workflow_types, activity_names = excluded.activity_names,
    host = excluded.host, pid = excluded.pid, heartbeat_at = excluded.heartbeat_at
"""

UNREGISTER_WORKER = """
DELETE FROM {S}.workers WHERE shard_key = '' AND tenant_id = '' AND worker_id = %(worker_id)s
"""

LIST_WORKERS = """
SELECT worker_id, workflow_types::text, activity_names::text, heartbeat_at, host, pid
FROM {S}.workers
WHERE shard_key = '' AND tenant_id = ''
ORDER BY worker_id
"""
