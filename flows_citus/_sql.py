"""The statements of CitusStore. ``{S}`` stands for the quoted schema.

Every statement names one shard key, ``%(sk)s``, on every table it touches, so Citus
plans it as a router query: one task, on the node that holds that shard (tests/citus
checks each with EXPLAIN). The PostgreSQL adapter does a whole operation in one statement
with data-modifying CTEs; Citus plans an INSERT inside a CTE as a separate distributed
step, so here one operation is a short transaction of statements, sent in one pipeline
(one round trip):

1. ``LOCK``: lock the workflow row, then the claimant's task row (the order every writer
   uses), and read what the fence and the error messages need;
2. guarded INSERT ... SELECTs: each re-checks the fence against rows this transaction
   holds locked and has not changed yet, so they all see the same state;
3. a final statement (UPDATE/DELETE CTEs, which Citus routes whole) that changes the
   fenced columns and says whether the operation took place.

Statements that do what a PostgreSQL one does have its name (see ``flows_pg._sql``);
every result column has a name (rows are read as dicts).

NOTIFY is its own statement, ``SELECT pg_notify(...)``, which touches no table and so
runs in the coordinator's session, inside the same transaction: listeners hear of a
change only once it is committed. Nothing runs NOTIFY on a worker node.
"""

from __future__ import annotations

from typing import Final

from flows_core.store import ListQuery
from flows_pg._base import RECORD, TERMINAL_SQL
from flows_pg._sql import LIST_ORDER, list_filters


def _pk(alias: str) -> str:
    return (
        f"{alias}.shard_key = %(sk)s AND {alias}.tenant_id = %(tid)s "
        f"AND {alias}.workflow_id = %(wid)s"
    )


def _same(alias: str, other: str) -> str:
    """``alias`` is in the shard and belongs to the same workflow as ``other``."""
    return (
        f"{alias}.shard_key = %(sk)s AND {alias}.tenant_id = {other}.tenant_id "
        f"AND {alias}.workflow_id = {other}.workflow_id"
    )


_PENDING: Final = f"""EXISTS (SELECT 1 FROM {{S}}.tasks t
    WHERE {_same("t", "w")} AND t.kind = 'workflow' AND t.visible_at <= now())
    AS pending"""

# The lease holder's task, unchanged: the fence every guarded statement re-checks.
_HOLDS: Final = """EXISTS (SELECT 1 FROM {S}.tasks ft
    WHERE ft.shard_key = %(sk)s AND ft.tenant_id = %(tid)s AND ft.task_id = %(task_id)s
      AND ft.lease_token = %(token)s AND ft.workflow_id = %(wid)s AND ft.kind = '{kind}')"""
_HOLDS_WORKFLOW_TASK: Final = _HOLDS.replace("{kind}", "workflow")
_HOLDS_ACTIVITY_TASK: Final = _HOLDS.replace("{kind}", "activity")

NOTIFY_WORK: Final = "SELECT pg_notify(%(ch_work)s, %(sk)s)"
NOTIFY_BOTH: Final = "SELECT pg_notify(%(ch_work)s, %(sk)s), pg_notify(%(ch_wf)s, %(wf_key)s)"

# -- reads --

GET_WORKFLOW: Final = f"SELECT {RECORD}, {_PENDING} FROM {{S}}.workflows w WHERE {_pk('w')}"

GET_HISTORY: Final = f"""
SELECT (
  SELECT json_agg(h.event ORDER BY h.position)::text
  FROM {{S}}.history h
  WHERE {_pk("h")} AND h.position > %(after)s
) AS history
FROM {{S}}.workflows w
WHERE {_pk("w")}
"""


def list_workflows_sql(query: ListQuery) -> str:
    """The first %(limit)s rows of ``query``'s listing under one shard key (its filters
    and cursor; the caller merges the keys and applies the offset)."""
    where = ["w.shard_key = %(sk)s", *list_filters(query)]
    return f"""
SELECT {RECORD}, {_PENDING}
FROM {{S}}.workflows w
WHERE {" AND ".join(where)}
{LIST_ORDER}
LIMIT %(limit)s
"""


# -- start --

START_WORKFLOW: Final = """
INSERT INTO {S}.workflows AS w
  (shard_key, tenant_id, workflow_id, name, version, status, input, history_length, next_seq)
VALUES (%(sk)s, %(tid)s, %(wid)s, %(name)s, %(version)s, 'running', %(input)s::json, 1, 1)
ON CONFLICT DO NOTHING
RETURNING created_at, updated_at
"""

# Every committed workflow has its WorkflowStarted event, so "the row has no history
# yet" means "this transaction inserted the row": a duplicate start writes nothing.
_NEW_ROW: Final = f"NOT EXISTS (SELECT 1 FROM {{S}}.history h WHERE {_pk('h')})"

_ENSURE_WORKFLOW_TASK: Final = f"""
INSERT INTO {{S}}.tasks
  (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
SELECT w.shard_key, w.tenant_id, %(wf_task_id)s, w.workflow_id, 'workflow',
       'w:' || w.name || ':' || w.version, w.name, now()
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {{guard}}
ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING
"""

START_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _NEW_ROW)

# Eager start: the workflow task inserted already leased to %(owner)s, as a claim would
# (attempt 2 means "claimed once"; see flows_core.store.EagerStart).
START_TASK_LEASED: Final = f"""
INSERT INTO {{S}}.tasks AS t (shard_key, tenant_id, task_id, workflow_id, kind, queue, name,
                            attempt, visible_at, lease_token, lease_owner)
SELECT w.shard_key, w.tenant_id, %(wf_task_id)s, w.workflow_id, 'workflow',
       'w:' || w.name || ':' || w.version, w.name, 2, now() + %(lease)s::interval,
       %(token)s, %(owner)s
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {_NEW_ROW}
RETURNING t.visible_at AS lease_expires
"""

START_HISTORY: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, 1, %(event)s::json
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {_NEW_ROW}
"""

# -- signal / cancel: an external event into the inbox --

# (a no-op UPDATE rather than SELECT .. FOR UPDATE: see FENCE_LOCK)
INBOX_LOCK: Final = f"""
UPDATE {{S}}.workflows w SET inbox_seq = w.inbox_seq WHERE {_pk("w")}
RETURNING w.status, w.cancel_requested
"""

# {guard}: the locked row accepts the event (not finished; for cancel: not yet requested)
_INBOX_INSERT: Final = f"""
INSERT INTO {{S}}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, w.inbox_seq + 1, %(event)s::json
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {{guard}}
"""

_INBOX_UPDATE: Final = f"""
UPDATE {{S}}.workflows w
SET inbox_seq = w.inbox_seq + 1, inbox_length = w.inbox_length + 1, updated_at = now()
    {{set_extra}}
WHERE {_pk("w")} AND {{guard}}
"""

# -- terminate, cancel of a parked workflow: the workflow ends now --

# Guard: the locked row's status is one of %(end_from)s. The events %(end_events)s go
# after the history, every task and inbox row is deleted, then the row changes.
_ENDS: Final = "w.status = ANY(%(end_from)s::text[])"

END_HISTORY: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, w.history_length + e.ord, e.ev::json
FROM {{S}}.workflows w, unnest(%(end_events)s::text[]) WITH ORDINALITY AS e(ev, ord)
WHERE {_pk("w")} AND {_ENDS}
"""

END_TASKS: Final = f"""
DELETE FROM {{S}}.tasks t
USING {{S}}.workflows w
WHERE {_pk("w")} AND {_ENDS} AND {_same("t", "w")}
"""

END_INBOX: Final = f"""
DELETE FROM {{S}}.inbox i
USING {{S}}.workflows w
WHERE {_pk("w")} AND {_ENDS} AND {_same("i", "w")}
"""

END_WORKFLOW: Final = f"""
UPDATE {{S}}.workflows w
SET status = %(end_status)s, error = %(end_error)s::json, output = NULL,
    history_length = w.history_length + cardinality(%(end_events)s::text[]),
    inbox_length = 0, cancel_requested = w.cancel_requested OR %(cancel)s,
    updated_at = now()
WHERE {_pk("w")} AND {_ENDS}
"""

_SIGNAL_GUARD: Final = f"w.status NOT IN {TERMINAL_SQL}"
_CANCEL_GUARD: Final = "w.status = 'running' AND NOT w.cancel_requested"

SIGNAL_INSERT: Final = _INBOX_INSERT.replace("{guard}", _SIGNAL_GUARD)
SIGNAL_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _SIGNAL_GUARD)
SIGNAL_UPDATE: Final = _INBOX_UPDATE.replace("{guard}", _SIGNAL_GUARD).replace("{set_extra}", "")
# A running workflow gets the request in its inbox once; a parked one ends (END_*).
CANCEL_INSERT: Final = _INBOX_INSERT.replace("{guard}", _CANCEL_GUARD)
CANCEL_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _CANCEL_GUARD)
CANCEL_UPDATE: Final = _INBOX_UPDATE.replace("{guard}", _CANCEL_GUARD).replace(
    "{set_extra}", ", cancel_requested = true"
)

# -- claim, one shard key at a time --

# Whether the key has claimable work now, and its next due time (as NEXT_DUE).
CLAIM_PROBE: Final = """
SELECT EXISTS (
  SELECT 1 FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.queue = ANY(%(queues)s::text[]) AND t.visible_at <= now())
  AS found,
  least(
    (SELECT min(t.visible_at) FROM {S}.tasks t
     WHERE t.shard_key = %(sk)s AND t.kind = 'timer'),
    (SELECT min(t.visible_at) FROM {S}.tasks t
     WHERE t.shard_key = %(sk)s AND t.visible_at > now() AND t.visible_at < 'infinity')) AS due
"""

# Lease up to %(limit)s visible tasks, oldest first; the n-th gets %(tokens)s[n] (through
# a join with unnest: the subscript tokens[rn] crashes the Citus 13.2 planner). Task
# rows and then the workflow rows of workflow tasks are locked with SKIP LOCKED: a claim
# never waits, and a workflow being written to is left for a later claim. An activity
# task that still holds a lease token was left by a claimant whose lease ran out: its
# attempt counts on (as on PostgreSQL, see flows_pg._sql.CLAIM).
CLAIM_LEASE: Final = """
WITH c AS MATERIALIZED (
  SELECT t.tenant_id, t.task_id, t.workflow_id, t.kind, t.visible_at
  FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.queue = ANY(%(queues)s::text[]) AND t.visible_at <= now()
    AND (NOT %(fresh_only)s OR t.kind <> 'workflow' OR t.attempt <= 1)
  ORDER BY t.visible_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), wl AS MATERIALIZED (
  SELECT w.tenant_id, w.workflow_id
  FROM {S}.workflows w
  WHERE w.shard_key = %(sk)s AND w.status = 'running'
    AND (w.tenant_id, w.workflow_id) IN
        (SELECT c.tenant_id, c.workflow_id FROM c WHERE c.kind = 'workflow')
  FOR UPDATE SKIP LOCKED
), ok AS MATERIALIZED (
  SELECT c.tenant_id, c.task_id, row_number() OVER (ORDER BY c.visible_at, c.task_id) AS rn
  FROM c
  WHERE c.kind <> 'workflow'
     OR EXISTS (SELECT 1 FROM wl
                WHERE wl.tenant_id = c.tenant_id AND wl.workflow_id = c.workflow_id)
)
UPDATE {S}.tasks t
SET lease_token = tk.token, lease_owner = %(owner)s,
    visible_at = now() + %(lease)s::interval,
    attempt = CASE WHEN t.kind = 'workflow' OR t.lease_token IS NOT NULL
                   THEN t.attempt + 1 ELSE t.attempt END
FROM ok
JOIN unnest(%(tokens)s::uuid[]) WITH ORDINALITY AS tk(token, n) ON tk.n = ok.rn
WHERE t.shard_key = %(sk)s AND t.tenant_id = ok.tenant_id AND t.task_id = ok.task_id
"""

_CLAIMED_WF_TASK: Final = """t.shard_key = %(sk)s AND t.kind = 'workflow'
    AND t.lease_token = ANY(%(tokens)s::uuid[])"""

# Claimed workflow tasks: their inbox to the end of the history, in arrival order.
CLAIM_HISTORY: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT i.shard_key, i.tenant_id, i.workflow_id,
       (w.history_length + row_number() OVER (
          PARTITION BY i.tenant_id, i.workflow_id ORDER BY i.inbox_seq))::integer,
       i.event
FROM {{S}}.inbox i
JOIN {{S}}.tasks t ON {_same("t", "i")}
JOIN {{S}}.workflows w ON {_same("w", "i")}
WHERE i.shard_key = %(sk)s AND {_CLAIMED_WF_TASK}
"""

CLAIM_MOVE: Final = f"""
WITH mv AS (
  DELETE FROM {{S}}.inbox i
  USING {{S}}.tasks t
  WHERE i.shard_key = %(sk)s AND {_same("t", "i")} AND {_CLAIMED_WF_TASK}
  RETURNING i.tenant_id, i.workflow_id
), mc AS (
  SELECT mv.tenant_id, mv.workflow_id, count(*)::integer AS n
  FROM mv GROUP BY mv.tenant_id, mv.workflow_id
)
UPDATE {{S}}.workflows w
SET history_length = w.history_length + mc.n, inbox_length = w.inbox_length - mc.n
FROM mc
WHERE {_same("w", "mc")}
"""

# A workflow task's history comes whole, or only after ``history_from`` when the claimant
# holds it up to there (sc: an entry of ClaimRequest.cached that the history, now after
# the move, continues; see flows_core.store.continued_length; ck first keeps only the
# entries of the claimed workflows, without sorting them all).
CLAIM_READ: Final = f"""
WITH tw AS MATERIALIZED (
  SELECT t.tenant_id, t.workflow_id
  FROM {{S}}.tasks t
  WHERE t.shard_key = %(sk)s AND t.kind = 'workflow' AND t.lease_token = ANY(%(tokens)s::uuid[])
), ck AS MATERIALIZED (
  SELECT k.tenant_id, k.workflow_id, k.history_length, k.seed
  FROM unnest(%(c_tenants)s::text[], %(c_ids)s::text[], %(c_lengths)s::integer[],
              %(c_seeds)s::bigint[]) AS k(tenant_id, workflow_id, history_length, seed)
  WHERE k.workflow_id = ANY (ARRAY(SELECT tw.workflow_id FROM tw))
), sc AS MATERIALIZED (
  SELECT w.tenant_id, w.workflow_id, k.history_length AS history_from
  FROM tw
  JOIN ck k ON k.tenant_id = tw.tenant_id AND k.workflow_id = tw.workflow_id
  JOIN {{S}}.workflows w ON {_same("w", "tw")}
  WHERE k.history_length >= 1 AND k.history_length <= w.history_length
    AND (SELECT (h.event ->> 'seed')::bigint FROM {{S}}.history h
         WHERE {_same("h", "w")} AND h.position = 1
           AND h.event ->> 'type' = 'workflow_started') = k.seed
)
SELECT t.kind AS task_kind, t.task_id, t.lease_token, t.visible_at AS lease_expires,
       t.seq AS task_seq, t.name AS task_name, t.input::text AS task_input,
       CASE WHEN t.kind = 'workflow' THEN t.attempt - 1 ELSE t.attempt END AS task_attempt,
       {RECORD},
       CASE WHEN t.kind = 'workflow' THEN (
         SELECT json_agg(h.event ORDER BY h.position)::text
         FROM {{S}}.history h
         WHERE {_same("h", "t")} AND h.position > coalesce(sc.history_from, 0)
       ) END AS history,
       coalesce(sc.history_from, 0) AS history_from,
       t.scheduled_at
FROM {{S}}.tasks t
JOIN {{S}}.workflows w ON {_same("w", "t")}
JOIN unnest(%(tokens)s::uuid[]) WITH ORDINALITY AS tk(token, n) ON tk.token = t.lease_token
LEFT JOIN sc ON t.kind = 'workflow' AND sc.tenant_id = t.tenant_id
  AND sc.workflow_id = t.workflow_id
WHERE t.shard_key = %(sk)s AND t.lease_token = ANY(%(tokens)s::uuid[])
ORDER BY tk.n
"""

# -- lease holders' writes --

# Lock the workflow row, then (only if it exists) the leased task row. The workflow row is
# locked by a no-op UPDATE, not SELECT .. FOR UPDATE: to Citus a SELECT is a read, so a
# shard move (citus_move_shard_placement, the rebalancer) neither waits for it nor keeps
# its lock: the rest of the transaction could run on the shard's new copy unlocked. A
# write makes the move wait for the transaction (tests/citus/test_rebalance.py).
FENCE_LOCK: Final = f"""
WITH wl AS (
  UPDATE {{S}}.workflows w SET next_seq = w.next_seq WHERE {_pk("w")}
  RETURNING w.next_seq, w.history_length
), tl AS MATERIALIZED (
  SELECT t.kind
  FROM {{S}}.tasks t
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s AND t.workflow_id = %(wid)s
    AND (SELECT count(*) FROM wl) > 0
  FOR UPDATE
)
SELECT (SELECT count(*) FROM wl) AS wf_found, (SELECT count(*) FROM tl) AS task_found,
       (SELECT next_seq FROM wl) AS next_seq, (SELECT history_length FROM wl) AS history_length
"""

# A workflow task commit may go ahead: the lease is held and the row is as claimed.
_COMMIT_OK: Final = f"""w.next_seq = %(expected)s AND w.history_length = %(claimed)s
    AND {_HOLDS_WORKFLOW_TASK}"""

COMMIT_EVENTS: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, %(claimed)s + e.ord, e.ev::json
FROM {{S}}.workflows w, unnest(%(events)s::text[]) WITH ORDINALITY AS e(ev, ord)
WHERE {_pk("w")} AND {_COMMIT_OK}
"""

# keep_lease: the inbox goes to the history after the events (COMMIT_FINISH deletes it).
COMMIT_MOVE: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT i.shard_key, i.tenant_id, i.workflow_id,
       (%(claimed)s + %(n_events)s + row_number() OVER (ORDER BY i.inbox_seq))::integer,
       i.event
FROM {{S}}.inbox i
JOIN {{S}}.workflows w ON {_same("w", "i")}
WHERE {_pk("i")} AND {_COMMIT_OK}
"""

# keep_lease: the events and then the inbox in one INSERT (one statement, one hop
# through the coordinator, fewer per inline step than COMMIT_EVENTS + COMMIT_MOVE).
COMMIT_EVENTS_MOVE: Final = f"""
INSERT INTO {{S}}.history (shard_key, tenant_id, workflow_id, position, event)
SELECT w.shard_key, w.tenant_id, w.workflow_id, %(claimed)s + e.ord, e.ev::json
FROM {{S}}.workflows w, unnest(%(events)s::text[]) WITH ORDINALITY AS e(ev, ord)
WHERE {_pk("w")} AND {_COMMIT_OK}
UNION ALL
SELECT i.shard_key, i.tenant_id, i.workflow_id,
       (%(claimed)s + %(n_events)s + row_number() OVER (ORDER BY i.inbox_seq))::integer,
       i.event
FROM {{S}}.inbox i
JOIN {{S}}.workflows w ON {_same("w", "i")}
WHERE {_pk("i")} AND {_COMMIT_OK}
"""

COMMIT_DROP: Final = f"""
DELETE FROM {{S}}.tasks t
USING {{S}}.workflows w
WHERE {_pk("w")} AND {_COMMIT_OK} AND {_same("t", "w")}
  AND t.kind <> 'workflow' AND t.seq = ANY(%(drop_seqs)s::int[])
"""

COMMIT_ACTIVITIES: Final = f"""
INSERT INTO {{S}}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, seq,
                       input, attempt, last_error, visible_at, scheduled_at)
SELECT w.shard_key, w.tenant_id, x.id, w.workflow_id, 'activity', 'a:' || x.name, x.name,
       x.seq, x.input::json, x.attempt, x.err::json, coalesce(x.vis, now()), x.sched
FROM {{S}}.workflows w,
     unnest(%(a_ids)s::uuid[], %(a_seqs)s::int[], %(a_names)s::text[],
            %(a_inputs)s::text[], %(a_attempts)s::int[], %(a_errors)s::text[],
            %(a_visible)s::timestamptz[], %(a_scheduled)s::timestamptz[])
       AS x(id, seq, name, input, attempt, err, vis, sched)
WHERE {_pk("w")} AND {_COMMIT_OK}
ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
"""

COMMIT_TIMERS: Final = f"""
INSERT INTO {{S}}.tasks (shard_key, tenant_id, task_id, workflow_id, kind, queue, seq,
                       visible_at)
SELECT w.shard_key, w.tenant_id, x.id, w.workflow_id, 'timer', NULL, x.seq, x.fire_at
FROM {{S}}.workflows w,
     unnest(%(t_ids)s::uuid[], %(t_seqs)s::int[], %(t_fire)s::timestamptz[])
       AS x(id, seq, fire_at)
WHERE {_pk("w")} AND {_COMMIT_OK}
ON CONFLICT (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow' DO NOTHING
"""

# The fenced columns change last, in one of three shapes: the workflow finished (every
# task of it deleted); keep_lease (the inbox moves to the history after the events, the
# task stays leased for %(keep_lease)s); or the task ends (deleted if the inbox is empty,
# else released, visible now). Three shapes rather than boolean parameters: Citus folds
# a WHERE that is false by a parameter into "no shard", and then sends the shard query
# with the distributed table's own name in it, which the worker node refuses.
_FINISH: Final = f"""
WITH f AS MATERIALIZED (
  SELECT w.history_length, w.inbox_length
  FROM {{S}}.workflows w
  WHERE {_pk("w")} AND {_COMMIT_OK}
){{ctes}}, u AS (
  UPDATE {{S}}.workflows w
  SET history_length = f.history_length + %(n_events)s + {{moved}},
      inbox_length = f.inbox_length - {{moved}},
      next_seq = %(next_seq)s, status = %(status)s, output = %(output)s::json,
      error = %(error)s::json, updated_at = now()
  FROM f{{from_mc}}
  WHERE {_pk("w")}
)
SELECT true AS done, {{events}} AS moved FROM f{{from_mc}}
"""

_TASK_OF: Final = "t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s"

COMMIT_FINISH_TERMINAL: Final = (
    _FINISH.replace(
        "{ctes}",
        f""", d AS (
  DELETE FROM {{S}}.tasks t USING f WHERE {_pk("t")}
)""",
    )
    .replace("{moved}", "0")
    .replace("{from_mc}", "")
    .replace("{events}", "NULL::text")
)

COMMIT_FINISH_KEEP: Final = (
    _FINISH.replace(
        "{ctes}",
        f""", mv AS (
  DELETE FROM {{S}}.inbox i USING f WHERE {_pk("i")}
  RETURNING i.inbox_seq, i.event
), mc AS (
  SELECT count(*)::integer AS n, json_agg(mv.event ORDER BY mv.inbox_seq)::text AS events
  FROM mv
), r AS (
  UPDATE {{S}}.tasks t
  SET visible_at = now() + %(keep_lease)s::interval, attempt = 1
  FROM f
  WHERE {_TASK_OF}
)""",
    )
    .replace("{moved}", "mc.n")
    .replace("{from_mc}", ", mc")
    .replace("{events}", "mc.events")
)

COMMIT_FINISH_END: Final = (
    _FINISH.replace(
        "{ctes}",
        f""", d AS (
  DELETE FROM {{S}}.tasks t USING f
  WHERE {_pk("t")} AND t.kind = 'workflow' AND f.inbox_length = 0
), r AS (
  UPDATE {{S}}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = now(), attempt = 1
  FROM f
  WHERE {_TASK_OF} AND f.inbox_length > 0
)""",
    )
    .replace("{moved}", "0")
    .replace("{from_mc}", "")
    .replace("{events}", "NULL::text")
)

PARK_FINISH: Final = f"""
WITH f AS MATERIALIZED (
  SELECT w.workflow_id FROM {{S}}.workflows w WHERE {_pk("w")} AND {_HOLDS_WORKFLOW_TASK}
), u AS (
  UPDATE {{S}}.workflows w
  SET status = 'parked', error = %(error)s::json, updated_at = now()
  FROM f
  WHERE {_pk("w")}
), r AS (
  UPDATE {{S}}.tasks t
  SET lease_token = NULL, lease_owner = NULL, visible_at = 'infinity'
  FROM f
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
)
SELECT count(*) AS done FROM f
"""

# An activity's final event into the inbox, its task deleted, a workflow task ensured.
ACTIVITY_INBOX: Final = _INBOX_INSERT.replace("{guard}", _HOLDS_ACTIVITY_TASK)
COMPLETE_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _HOLDS_ACTIVITY_TASK)
COMPLETE_FINISH: Final = f"""
WITH f AS MATERIALIZED (
  SELECT w.inbox_seq FROM {{S}}.workflows w WHERE {_pk("w")} AND {_HOLDS_ACTIVITY_TASK}
), d AS (
  DELETE FROM {{S}}.tasks t
  USING f
  WHERE t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
), u AS (
  UPDATE {{S}}.workflows w
  SET inbox_seq = f.inbox_seq + 1, inbox_length = w.inbox_length + 1, updated_at = now()
  FROM f
  WHERE {_pk("w")}
)
SELECT count(*) AS done FROM f
"""

_TASK_PK: Final = """t.shard_key = %(sk)s AND t.tenant_id = %(tid)s AND t.task_id = %(task_id)s
    AND t.lease_token = %(token)s"""

RETRY_ACTIVITY: Final = f"""
UPDATE {{S}}.tasks t
SET lease_token = NULL, lease_owner = NULL, attempt = %(attempt)s,
    visible_at = %(visible_at)s, last_error = %(error)s::json
WHERE {_TASK_PK}
RETURNING true AS done
"""

FAIL_WORKFLOW_TASK: Final = f"""
UPDATE {{S}}.tasks t
SET lease_token = NULL, lease_owner = NULL, visible_at = %(visible_at)s,
    last_error = %(error)s::json
WHERE {_TASK_PK} AND t.kind = 'workflow'
RETURNING true AS done
"""

HEARTBEAT: Final = f"""
WITH u AS (
  UPDATE {{S}}.tasks t
  SET visible_at = now() + %(extend)s::interval
  WHERE {_TASK_PK}
  RETURNING t.tenant_id, t.workflow_id, t.visible_at
)
SELECT u.visible_at AS expires_at, coalesce(w.cancel_requested, false) AS cancel_requested
FROM u
LEFT JOIN {{S}}.workflows w ON {_same("w", "u")}
"""

RELEASE: Final = f"""
UPDATE {{S}}.tasks t
SET lease_token = NULL, lease_owner = NULL, visible_at = now(),
    attempt = CASE WHEN t.kind = 'workflow' THEN greatest(t.attempt - 1, 1) ELSE t.attempt END
WHERE {_TASK_PK}
RETURNING true AS done
"""

# -- dead letters --

_PARKED: Final = "w.status = 'parked'"

RETRY_WORKFLOW_TASK: Final = _ENSURE_WORKFLOW_TASK.replace("{guard}", _PARKED)

# (Citus refuses now() in ON CONFLICT DO UPDATE: the existing task is reset apart.)
RETRY_WORKFLOW_RESET: Final = f"""
UPDATE {{S}}.tasks t
SET lease_token = NULL, lease_owner = NULL, visible_at = now(), attempt = 1, last_error = NULL
FROM {{S}}.workflows w
WHERE {_pk("w")} AND {_PARKED} AND {_same("t", "w")} AND t.kind = 'workflow'
"""

RETRY_WORKFLOW_STATUS: Final = f"""
UPDATE {{S}}.workflows w
SET status = 'running', error = NULL, updated_at = now()
WHERE {_pk("w")} AND w.status = 'parked'
"""

# -- timers, one shard key at a time --

# Mark due timers (their lease_token := %(marker)s) whose workflow rows could be locked
# (SKIP LOCKED: a workflow being written to is fired on a later call).
FIRE_MARK: Final = """
WITH due AS MATERIALIZED (
  SELECT t.tenant_id, t.workflow_id
  FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.kind = 'timer' AND t.visible_at <= now()
  ORDER BY t.visible_at
  LIMIT %(limit)s
), wl AS MATERIALIZED (
  SELECT w.tenant_id, w.workflow_id
  FROM {S}.workflows w
  WHERE w.shard_key = %(sk)s
    AND (w.tenant_id, w.workflow_id) IN (SELECT due.tenant_id, due.workflow_id FROM due)
  FOR UPDATE SKIP LOCKED
), tl AS MATERIALIZED (
  SELECT t.tenant_id, t.task_id
  FROM {S}.tasks t
  WHERE t.shard_key = %(sk)s AND t.kind = 'timer' AND t.visible_at <= now()
    AND (t.tenant_id, t.workflow_id) IN (SELECT wl.tenant_id, wl.workflow_id FROM wl)
  ORDER BY t.visible_at, t.seq
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {S}.tasks t
SET lease_token = %(marker)s
FROM tl
WHERE t.shard_key = %(sk)s AND t.tenant_id = tl.tenant_id AND t.task_id = tl.task_id
"""

_MARKED: Final = "t.shard_key = %(sk)s AND t.kind = 'timer' AND t.lease_token = %(marker)s"

FIRE_INBOX: Final = f"""
INSERT INTO {{S}}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
SELECT t.shard_key, t.tenant_id, t.workflow_id,
       w.inbox_seq + row_number() OVER (
         PARTITION BY t.tenant_id, t.workflow_id ORDER BY t.visible_at, t.seq),
       json_build_object(
         'type', 'timer_fired',
         'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
         'seq', t.seq)
FROM {{S}}.tasks t
JOIN {{S}}.workflows w ON {_same("w", "t")}
WHERE {_MARKED}
"""

FIRE_TASKS: Final = f"""
INSERT INTO {{S}}.tasks
  (shard_key, tenant_id, task_id, workflow_id, kind, queue, name, visible_at)
SELECT x.shard_key, x.tenant_id, id.task_id, x.workflow_id, 'workflow',
       'w:' || x.name || ':' || x.version, x.name, now()
FROM (
  SELECT w.shard_key, w.tenant_id, w.workflow_id, w.name, w.version,
         row_number() OVER (ORDER BY w.tenant_id, w.workflow_id) AS rn
  FROM {{S}}.workflows w
  WHERE w.shard_key = %(sk)s
    AND EXISTS (SELECT 1 FROM {{S}}.tasks t WHERE {_same("t", "w")} AND {_MARKED})
) x
JOIN unnest(%(task_ids)s::uuid[]) WITH ORDINALITY AS id(task_id, n) ON id.n = x.rn
ON CONFLICT (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow' DO NOTHING
"""

FIRE_FINISH: Final = f"""
WITH ev AS (
  DELETE FROM {{S}}.tasks t WHERE {_MARKED} RETURNING t.tenant_id, t.workflow_id
), n AS (
  SELECT ev.tenant_id, ev.workflow_id, count(*)::integer AS n
  FROM ev GROUP BY ev.tenant_id, ev.workflow_id
), u AS (
  UPDATE {{S}}.workflows w
  SET inbox_seq = w.inbox_seq + n.n, inbox_length = w.inbox_length + n.n, updated_at = now()
  FROM n
  WHERE {_same("w", "n")}
)
SELECT (SELECT count(*) FROM ev) AS fired,
       (SELECT json_agg(json_build_array(n.tenant_id, n.workflow_id))::text FROM n) AS workflows
"""

# As on PostgreSQL: a timer due already counts (it fires at once), then any task whose
# visibility ends in the future.
NEXT_DUE: Final = """
SELECT least(
  (SELECT min(t.visible_at) FROM {S}.tasks t
   WHERE t.shard_key = %(sk)s AND t.kind = 'timer'),
  (SELECT min(t.visible_at) FROM {S}.tasks t
   WHERE t.shard_key = %(sk)s AND t.visible_at > now() AND t.visible_at < 'infinity')) AS due
"""

# -- operations, one shard key at a time --

PRUNE: Final = f"""
WITH v AS MATERIALIZED (
  SELECT w.tenant_id, w.workflow_id
  FROM {{S}}.workflows w
  WHERE w.shard_key = %(sk)s AND w.status IN {TERMINAL_SQL}
    AND w.updated_at < now() - %(age)s::interval
  ORDER BY w.updated_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), h AS (
  DELETE FROM {{S}}.history h USING v WHERE {_same("h", "v")}
), i AS (
  DELETE FROM {{S}}.inbox i USING v WHERE {_same("i", "v")}
), t AS (
  DELETE FROM {{S}}.tasks t USING v WHERE {_same("t", "v")}
), rh AS (
  DELETE FROM {{S}}.run_history h USING v WHERE {_same("h", "v")}
), rn AS (
  DELETE FROM {{S}}.runs r USING v WHERE {_same("r", "v")}
), d AS (
  DELETE FROM {{S}}.workflows w USING v WHERE {_same("w", "v")}
  RETURNING 1
)
SELECT count(*) AS pruned FROM d
"""

# One tenant's workflows per status under one shard key.
COUNT_WORKFLOWS: Final = """
SELECT coalesce(json_object_agg(s.status, s.n), '{}')::text AS statuses
FROM (SELECT w.status, count(*) AS n FROM {S}.workflows w
      WHERE w.shard_key = %(sk)s AND w.tenant_id = %(tid)s GROUP BY w.status) s
"""

STATS: Final = """
SELECT
  (SELECT count(*) FROM {S}.tasks t
   WHERE t.shard_key = %(sk)s AND t.queue IS NOT NULL AND t.visible_at <= now()) AS depth,
  (SELECT min(t.visible_at) FROM {S}.tasks t
   WHERE t.shard_key = %(sk)s AND t.queue IS NOT NULL AND t.visible_at <= now()) AS oldest,
  (SELECT count(*) FROM {S}.tasks t
   WHERE t.shard_key = %(sk)s AND t.lease_token IS NOT NULL AND t.visible_at > now())
   AS in_flight,
  (SELECT coalesce(json_object_agg(s.status, s.n), '{}')::text
   FROM (SELECT w.status, count(*) AS n FROM {S}.workflows w
         WHERE w.shard_key = %(sk)s GROUP BY w.status) s) AS statuses,
  now() AS now
"""
