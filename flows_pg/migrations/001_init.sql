-- Flows 001: the base schema (PostgreSQL 14..18).
--
-- The runner substitutes {schema} with a validated identifier quoted by psycopg.sql.
-- Every table's primary key starts with shard_key and carries tenant_id, so a Citus
-- migration can distribute every table by shard_key and colocate all rows of a workflow.
--
-- Events and payloads are stored as `json`, not `jsonb`, on purpose: json keeps the exact
-- text the client wrote, and replay compares recorded payloads with what the code
-- produces now, byte for byte. jsonb would reorder and deduplicate keys, rewrite numbers
-- (1e100 comes back as 101 digits, 1e-07 as 0.0000001) and spacing, and
-- reject \u0000 in strings, so a replayed step would look non-deterministic and the
-- workflow would be parked for no reason. Nothing queries inside them. Do not "upgrade"
-- these columns to jsonb.
--
-- Ids (task ids, lease tokens) are UUIDv7 made by the client. No triggers: the store's
-- own statements call pg_notify.
--
-- Data model (see flows_core.store): the workflow row; the history, append-only and
-- gap-free, written only by start, by the claim of a workflow task (which moves the
-- inbox in) and by the lease holder's commit; the inbox, where signals, cancel
-- requests, fired timers and activity results wait in arrival order until the next
-- claim of a workflow task; and the tasks.

CREATE TABLE IF NOT EXISTS {schema}.workflows (
    shard_key        text        NOT NULL,
    tenant_id        text        NOT NULL,
    workflow_id      text        NOT NULL,
    name             text        NOT NULL,
    version          integer     NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('running', 'completed', 'failed', 'cancelled', 'parked')),
    input            json        NOT NULL,
    output           json,
    error            json,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    history_length   integer     NOT NULL,
    next_seq         integer     NOT NULL DEFAULT 1,
    cancel_requested boolean     NOT NULL DEFAULT false,
    -- Events waiting in the inbox (kept here so that a writer that waited for this
    -- row's lock reads the current count, not its statement snapshot's).
    inbox_length     integer     NOT NULL DEFAULT 0 CHECK (inbox_length >= 0),
    -- The inbox_seq of the last event put in the inbox: every inbox insert takes the
    -- next value while holding this row's lock, so inbox order is arrival order.
    inbox_seq        bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (shard_key, tenant_id, workflow_id)
) WITH (fillfactor = 85);

-- A workflow id is unique per tenant, whatever its name and shard. Lookups by
-- (tenant, id) -- get, signal, cancel, history -- use it. Citus cannot keep a unique
-- index without the distribution column: a Citus migration has to drop or rework it.
CREATE UNIQUE INDEX IF NOT EXISTS workflows_tenant_workflow_key
    ON {schema}.workflows (tenant_id, workflow_id);
-- list_workflows: newest first, per tenant, optionally by status or by name.
CREATE INDEX IF NOT EXISTS workflows_list_idx
    ON {schema}.workflows (tenant_id, created_at DESC, workflow_id DESC);
CREATE INDEX IF NOT EXISTS workflows_list_status_idx
    ON {schema}.workflows (tenant_id, status, created_at DESC, workflow_id DESC);
CREATE INDEX IF NOT EXISTS workflows_list_name_idx
    ON {schema}.workflows (tenant_id, name, created_at DESC, workflow_id DESC);
-- prune (retention): finished workflows, oldest update first.
CREATE INDEX IF NOT EXISTS workflows_prune_idx
    ON {schema}.workflows (updated_at) WHERE status IN ('completed', 'failed', 'cancelled');

-- The append-only history: one row per event, positions 1..n without gaps.
CREATE TABLE IF NOT EXISTS {schema}.history (
    shard_key   text    NOT NULL,
    tenant_id   text    NOT NULL,
    workflow_id text    NOT NULL,
    position    integer NOT NULL CHECK (position >= 1),
    event       json    NOT NULL,
    PRIMARY KEY (shard_key, tenant_id, workflow_id, position)
);

-- The inbox: events from outside the workflow's own decisions (SignalReceived,
-- CancelRequested, TimerFired, results of queued activities), in arrival order
-- (inbox_seq, from workflows.inbox_seq). Claiming the workflow task deletes them and
-- appends them to the history, in inbox_seq order, in the same statement. Rows that
-- arrive after the workflow finished stay until the workflow itself is deleted.
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    shard_key   text        NOT NULL,
    tenant_id   text        NOT NULL,
    workflow_id text        NOT NULL,
    inbox_seq   bigint      NOT NULL CHECK (inbox_seq >= 1),
    event       json        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_key, tenant_id, workflow_id, inbox_seq)
);

-- Tasks: kind 'workflow' (at most one per workflow, it means "replay me"), 'activity'
-- (one per queued step), 'timer' (one per pending timer step). queue is what claim
-- filters on: 'w:<name>:<version>' for workflow tasks, 'a:<name>' for activities, NULL
-- for timers (fired by fire_due_timers, never claimed).
-- visible_at is when the task may be claimed. While a task is leased it holds the lease
-- expiry (claim sets it to now() + lease), so "claimable" is simply visible_at <= now().
-- A parked workflow's task has visible_at = 'infinity'.
CREATE TABLE IF NOT EXISTS {schema}.tasks (
    shard_key   text        NOT NULL,
    tenant_id   text        NOT NULL,
    task_id     uuid        NOT NULL,
    workflow_id text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('workflow', 'activity', 'timer')),
    queue       text,
    name        text        NOT NULL DEFAULT '',
    seq         integer     NOT NULL DEFAULT 0,
    input       json,
    attempt     integer     NOT NULL DEFAULT 1,
    last_error  json,
    visible_at  timestamptz NOT NULL,
    -- activity tasks: when the workflow first scheduled the step (ActivityScheduled.at),
    -- kept across retries; the worker's schedule-to-close deadline counts from it.
    scheduled_at timestamptz,
    lease_token uuid,
    lease_owner text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_key, tenant_id, task_id),
    CHECK ((kind = 'timer') = (queue IS NULL))
) WITH (fillfactor = 80);

-- At most one workflow task per workflow (wake-ups coalesce: INSERT .. ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX IF NOT EXISTS tasks_one_workflow_task_key
    ON {schema}.tasks (shard_key, tenant_id, workflow_id) WHERE kind = 'workflow';
-- At most one activity/timer task per step; also serves "drop the tasks of these seqs"
-- and "drop every task of this workflow".
CREATE UNIQUE INDEX IF NOT EXISTS tasks_one_per_step_key
    ON {schema}.tasks (shard_key, tenant_id, workflow_id, seq) WHERE kind <> 'workflow';
-- claim: queue = ANY(..) AND visible_at <= now() [AND shard_key = ANY(..)] ORDER BY visible_at
CREATE INDEX IF NOT EXISTS tasks_claim_idx
    ON {schema}.tasks (queue, visible_at, shard_key) WHERE queue IS NOT NULL;
-- fire_due_timers: kind = 'timer' AND visible_at <= now() ORDER BY visible_at
CREATE INDEX IF NOT EXISTS tasks_timers_due_idx
    ON {schema}.tasks (visible_at, shard_key) WHERE kind = 'timer';
-- next_due: min(visible_at) WHERE visible_at > now() AND visible_at < 'infinity'
CREATE INDEX IF NOT EXISTS tasks_visible_idx
    ON {schema}.tasks (visible_at);

-- Worker registrations. Not per workflow: shard_key and tenant_id are '' (kept in the
-- key so that every table has the same distribution column).
CREATE TABLE IF NOT EXISTS {schema}.workers (
    shard_key      text        NOT NULL DEFAULT '',
    tenant_id      text        NOT NULL DEFAULT '',
    worker_id      text        NOT NULL,
    workflow_types jsonb       NOT NULL,
    activity_names jsonb       NOT NULL,
    host           text        NOT NULL DEFAULT '',
    pid            integer     NOT NULL DEFAULT 0,
    heartbeat_at   timestamptz NOT NULL,
    PRIMARY KEY (shard_key, tenant_id, worker_id)
);
