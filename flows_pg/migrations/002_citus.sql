-- Flows 002: distribution on Citus (applied after 001, only by `flows migrate --citus`
-- or CitusStore.migrate()). {schema} is the same validated, quoted schema as in 001.
--
-- Every table is distributed by shard_key and colocated with workflows, so all rows of
-- a workflow (its row, history, inbox and tasks) live in one shard on one node, and every
-- statement of flows_citus.CitusStore filters on one shard_key value: a router query.
-- On Citus the shard key follows from the tenant and the workflow id (see the layout
-- table below), so lookups by id are router queries too.
--
-- Nothing written per task or per workflow goes in a reference table (each write to one
-- is a transaction on every node). The one reference table, layout, is written when the
-- schema is created and read when a store opens.
--
-- Primary keys and unique indexes of 001 all start with shard_key, as Citus requires,
-- except workflows_tenant_workflow_key (tenant_id, workflow_id): it is dropped. The
-- uniqueness it gave holds here through the primary key (shard_key, tenant_id,
-- workflow_id), because a given (tenant, id) always maps to the same shard_key.
--
-- Idempotent: a table already distributed is left alone.

DROP INDEX IF EXISTS {schema}.workflows_tenant_workflow_key;

-- The placement of workflows: `shards` shard keys 'shard-0'..'shard-<n-1>'; a workflow's
-- key is fnv1a_32(workflow_id) mod shards ('workflow') or fnv1a_32(tenant_id) mod shards
-- ('tenant'). Fixed for the life of the schema: changing it would make existing
-- workflows unreachable by id. CitusStore.migrate(shards=, sharding=) sets it while no
-- workflow exists.
CREATE TABLE IF NOT EXISTS {schema}.layout (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    shards   integer NOT NULL DEFAULT 32 CHECK (shards BETWEEN 1 AND 4096),
    sharding text    NOT NULL DEFAULT 'workflow' CHECK (sharding IN ('workflow', 'tenant'))
);
INSERT INTO {schema}.layout (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- Claims read back the tasks they leased by lease token (one statement per step of
-- the claim's transaction); few tasks are leased at a time, so the index stays small.
CREATE INDEX IF NOT EXISTS tasks_lease_idx
    ON {schema}.tasks (shard_key, lease_token) WHERE lease_token IS NOT NULL;

-- DDL and distribution in this transaction run over one connection per node.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

SELECT create_reference_table('{schema}.layout')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{schema}.layout'::regclass);

SELECT create_distributed_table('{schema}.workflows', 'shard_key')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{schema}.workflows'::regclass);

SELECT create_distributed_table(t.name, 'shard_key', colocate_with => '{schema}.workflows')
FROM unnest(ARRAY['{schema}.history', '{schema}.inbox', '{schema}.tasks',
                  '{schema}.workers']) WITH ORDINALITY AS t(name, ord)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass)
ORDER BY t.ord;
