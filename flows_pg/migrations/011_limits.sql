-- Flows 011: flow control (concurrency slots, rate tokens, waiting tasks).
--
-- Limits themselves are not stored: workers pass them from the code's definitions, so
-- a changed limit takes effect without a migration. Stored is their usage, per limit:
-- bucket is 'a:<activity>' or 'w:<workflow>' (on Citus the distribution column: every
-- statement on these tables filters on one bucket, a router query, apart from any
-- task's transaction); limit_key is 'c' / 'c:<key>' (concurrency) or 'r' / 'r:<key>'
-- (rate). A slot is held by a task's lease (holder_task, holder_token) or by a workflow
-- (holder_tenant, holder_workflow) until expires_at; a holder past it is checked (its
-- task still leased? its workflow not ended?) before its slot is taken over.
-- limit_waiters: tasks waiting for a slot (ready_at NULL; woken oldest first when a
-- slot frees) and rate tokens reserved for waiting tasks (ready_at = the token's time).
-- tasks.waiting / waiting_until: why a task was deferred, valid while visible_at is
-- still waiting_until (engine.query().waiting_reason).
--
-- Additive only (new tables, two nullable columns, an index): workers of the previous version
-- run on unchanged. One DO block (Citus propagates each statement of it on its own).

DO $migration$
BEGIN
    CREATE TABLE IF NOT EXISTS {schema}.limit_slots (
        bucket          text        NOT NULL,
        limit_key       text        NOT NULL,
        slot            integer     NOT NULL CHECK (slot >= 0),
        holder_kind     text        CHECK (holder_kind IN ('task', 'workflow')),
        -- who holds it, as one value: 't:<task id>:<lease token>[:<step>]' or 'w:["<tenant>",
        -- "<workflow id>"]' (the slot of a holder is found through the index below)
        holder_id       text,
        holder_tenant   text,
        holder_shard    text,
        holder_workflow text,
        holder_task     uuid,
        holder_token    uuid,
        acquired_at     timestamptz,
        expires_at      timestamptz,
        PRIMARY KEY (bucket, limit_key, slot)
    );
    CREATE INDEX IF NOT EXISTS limit_slots_holder_idx
        ON {schema}.limit_slots (bucket, limit_key, holder_id) WHERE holder_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS {schema}.limit_waiters (
        bucket      text        NOT NULL,
        limit_key   text        NOT NULL,
        task_id     uuid        NOT NULL,
        tenant_id   text        NOT NULL,
        shard_key   text        NOT NULL,
        since       timestamptz NOT NULL DEFAULT now(),
        ready_at    timestamptz,
        PRIMARY KEY (bucket, limit_key, task_id)
    );
    CREATE TABLE IF NOT EXISTS {schema}.limit_rates (
        bucket    text        NOT NULL,
        limit_key text        NOT NULL,
        -- the next free token's time, in seconds since the epoch (float arithmetic:
        -- Citus refuses timestamptz + interval on a column in an UPDATE)
        tat       double precision NOT NULL,
        every     double precision,  -- seconds per token, as the last taker asked
        PRIMARY KEY (bucket, limit_key)
    );
    -- the tenant-fair claim (PostgresStore(fair_tenants=True), flows_pg._sql_fair)
    -- walks the tenants with claimable work and takes each one's oldest tasks
    CREATE INDEX IF NOT EXISTS tasks_tenant_claim_idx
        ON {schema}.tasks (tenant_id, visible_at) WHERE queue IS NOT NULL;
    ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS waiting text;
    ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS waiting_until timestamptz;
END
$migration$;
