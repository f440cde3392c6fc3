-- Flows 005: child workflows and once-only delivery (flows_core._children).
--
-- outbox: messages a workflow sends to other workflows (child starts, signals and
-- cancels to children, completion notices to parents), written in the sender's own
-- commit under the SENDER's shard key, so that on Citus the write stays in the sender's
-- shard. Workers deliver each one with ordinary writes on its target, then delete it.
-- visible_at: when a worker may claim it (the committing worker delivers it itself
-- first; a claim hides it for a lease).
--
-- delivery_keys: the keys of once-only deliveries into a workflow's inbox (signals with
-- an idempotency key, child completion notices), under the TARGET's shard key. Kept for
-- at least the retention age: prune deletes keys older than the age it prunes by.
--
-- New tables only: workers of the previous version run on unchanged. One DO block: on
-- Citus each statement is then propagated on its own.

DO $migration$
BEGIN
    CREATE TABLE IF NOT EXISTS {schema}.outbox (
        shard_key   text        NOT NULL,
        tenant_id   text        NOT NULL,
        message_id  uuid        NOT NULL,
        workflow_id text        NOT NULL,
        body        json        NOT NULL,
        visible_at  timestamptz NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (shard_key, tenant_id, message_id)
    );
    CREATE INDEX IF NOT EXISTS outbox_due_idx ON {schema}.outbox (visible_at);

    CREATE TABLE IF NOT EXISTS {schema}.delivery_keys (
        shard_key   text        NOT NULL,
        tenant_id   text        NOT NULL,
        workflow_id text        NOT NULL,
        key         text        NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (shard_key, tenant_id, workflow_id, key)
    );
    CREATE INDEX IF NOT EXISTS delivery_keys_age_idx ON {schema}.delivery_keys (created_at);
END
$migration$;
