-- Flows 001: the base schema (PostgreSQL 14..18).
--
-- The runner substitutes {schema} with a validated identifier quoted by psycopg.sql.
-- Every table's primary key starts with shard_key and carries tenant_id, so a Citus
-- migration can distribute every table by shard_key and colocate all rows of a workflow.
-- Events and payloads are stored as `json`, not `jsonb`: json keeps the exact text the
-- client wrote, and replay compares recorded payloads byte for byte (jsonb reorders keys,
-- rewrites numbers and spacing, and rejects \u0000, so a replayed step would look
-- non-deterministic). Nothing queries inside them. Ids (task ids, lease tokens) are
-- UUIDv7 made by the client. No triggers: the store's own statements call pg_notify.

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

-- The append-only history: one row per event, positions 1..n without gaps.
CREATE TABLE IF NOT EXISTS {schema}.history (
    shard_key   text    NOT NULL,
    tenant_id   text    NOT NULL,
    workflow_id text    NOT NULL,
    position    integer NOT NULL CHECK (position >= 1),
    event       json    NOT NULL,
    PRIMARY KEY (shard_key, tenant_id, workflow_id, position)
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
