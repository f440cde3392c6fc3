-- Flows 013: debounced starts (flows_core._debounce, Engine.start(debounce=...)).
--
-- One row per window of (tenant, workflow name, debounce key), under the shard key the
-- debounce key maps to (chosen like a workflow's; on Citus it follows from the tenant and
-- the key, so every statement names it). At most one OPEN window per key (a partial
-- unique index): each start replaces its input; a worker closes a window whose fires_at
-- has come by claiming it (closed, with a lease), starts the workflow `workflow_id`
-- (idempotent: the id is the window's) and deletes the row. Only a new table: safe while
-- older workers run (they never read it).
--
-- One DO block: on Citus each statement is then propagated on its own (see 003).

DO $migration$
BEGIN
    CREATE TABLE IF NOT EXISTS {schema}.pending_starts (
        shard_key        text        NOT NULL,
        tenant_id        text        NOT NULL,
        workflow_name    text        NOT NULL,
        debounce_key     text        NOT NULL,
        workflow_id      text        NOT NULL,
        workflow_version integer     NOT NULL,
        input            json        NOT NULL,
        fires_at         timestamptz NOT NULL,
        starts           bigint      NOT NULL DEFAULT 1,
        closed           boolean     NOT NULL DEFAULT false,
        lease_token      uuid,
        lease_expires_at timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (shard_key, tenant_id, workflow_name, debounce_key, workflow_id)
    );
    -- At most one open window per key (the upsert's arbiter).
    CREATE UNIQUE INDEX IF NOT EXISTS pending_starts_open_key
        ON {schema}.pending_starts (shard_key, tenant_id, workflow_name, debounce_key)
        WHERE NOT closed;
    -- Claims and the next wake-up: by closing time, per shard key and over all.
    CREATE INDEX IF NOT EXISTS pending_starts_due_idx
        ON {schema}.pending_starts (shard_key, fires_at);
    CREATE INDEX IF NOT EXISTS pending_starts_due_all_idx
        ON {schema}.pending_starts (fires_at);
    -- Claimed windows (few: deleted once fired), by lease expiry.
    CREATE INDEX IF NOT EXISTS pending_starts_leased_idx
        ON {schema}.pending_starts (shard_key, lease_expires_at)
        WHERE lease_token IS NOT NULL;
END
$migration$;
