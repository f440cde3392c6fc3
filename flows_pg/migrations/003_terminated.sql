-- Flows 003: the 'terminated' status (Engine.terminate ends a workflow from outside).
--
-- The status CHECK of 001 (named by PostgreSQL after the column) is replaced by one
-- that also allows 'terminated', and the prune index covers every terminal status, so
-- that prune's `status IN (<terminal statuses>)` still matches its predicate.
--
-- One DO block: on Citus each statement is then propagated to the worker nodes on its
-- own (a file of several DDL statements sent as one query string is refused there).

DO $migration$
BEGIN
    ALTER TABLE {schema}.workflows DROP CONSTRAINT IF EXISTS workflows_status_check;
    ALTER TABLE {schema}.workflows ADD CONSTRAINT workflows_status_check CHECK (
        status IN ('running', 'completed', 'failed', 'cancelled', 'terminated', 'parked'));
    DROP INDEX IF EXISTS {schema}.workflows_prune_idx;
    CREATE INDEX workflows_prune_idx ON {schema}.workflows (updated_at)
        WHERE status IN ('cancelled', 'completed', 'failed', 'terminated');
END
$migration$;
