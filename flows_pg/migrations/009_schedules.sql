-- Flows 009: durable schedules (flows_core._schedules, Engine.schedule).
--
-- One row per (tenant, schedule id), under a shard key chosen like a workflow's (on
-- Citus it follows from the tenant and the schedule id, so every statement names it).
-- `spec` is flows_core's JSON, opaque here. A scheduler claims rows whose `due_at` has
-- come (not paused, or holding a trigger) with a lease (lease_token, lease_expires_at)
-- and advances them fenced by it; clients write the plan under optimistic concurrency
-- (`revision`). Only a new table: safe while older workers run.
--
-- One DO block: on Citus each statement is then propagated on its own (see 003).

DO $migration$
BEGIN
    CREATE TABLE IF NOT EXISTS {schema}.schedules (
        shard_key        text        NOT NULL,
        tenant_id        text        NOT NULL,
        schedule_id      text        NOT NULL,
        workflow_name    text        NOT NULL,
        workflow_version integer     NOT NULL,
        input            json        NOT NULL,
        spec             json        NOT NULL,
        paused           boolean     NOT NULL DEFAULT false,
        next_tick_at     timestamptz,
        due_at           timestamptz,
        trigger_at       timestamptz,
        last_tick_at     timestamptz,
        last_workflow_id text,
        buffered_tick_at timestamptz,
        revision         bigint      NOT NULL DEFAULT 1,
        lease_token      uuid,
        lease_expires_at timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (shard_key, tenant_id, schedule_id)
    );
    -- Lookups by (tenant, id) on PostgreSQL (dropped on Citus, where the key is known).
    CREATE UNIQUE INDEX IF NOT EXISTS schedules_tenant_schedule_key
        ON {schema}.schedules (tenant_id, schedule_id);
    -- Claims and the next wake-up: rows that can fire, by due time.
    CREATE INDEX IF NOT EXISTS schedules_due_idx ON {schema}.schedules (shard_key, due_at)
        WHERE NOT paused OR trigger_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS schedules_due_all_idx ON {schema}.schedules (due_at)
        WHERE NOT paused OR trigger_at IS NOT NULL;
    -- Listings: by id, per tenant.
    CREATE INDEX IF NOT EXISTS schedules_list_idx ON {schema}.schedules
        (tenant_id, schedule_id COLLATE "C");
END
$migration$;
