-- Flows 004: indexes for listings with keyset paging (ListQuery.after) at any depth.
--
-- A listing is ordered by (created_at DESC, workflow_id DESC) with ids compared by code
-- point (COLLATE "C": what Python's str order is, so the Citus store's merge in Python
-- and the memory store agree with the database), and continues after a cursor
-- (created_at, workflow_id). Each index below serves one listing shape as an ordered
-- index scan that starts at the cursor and stops after LIMIT rows: no sort, and the
-- same cost for page 1 and page 10,000.
--
-- The per-tenant indexes of 001 are rebuilt with the "C" order on workflow_id; two new
-- ones serve the operators' listing of every tenant (a dashboard's default view), also
-- by status. The time range (created_from/created_to) bounds the same scans; a name
-- without a tenant and an id prefix are filters on them.
--
-- One DO block: on Citus each statement is then propagated to the worker nodes on its
-- own (see 003).

DO $migration$
BEGIN
    DROP INDEX IF EXISTS {schema}.workflows_list_idx;
    DROP INDEX IF EXISTS {schema}.workflows_list_status_idx;
    DROP INDEX IF EXISTS {schema}.workflows_list_name_idx;
    CREATE INDEX workflows_list_idx ON {schema}.workflows
        (tenant_id, created_at DESC, workflow_id COLLATE "C" DESC);
    CREATE INDEX workflows_list_status_idx ON {schema}.workflows
        (tenant_id, status, created_at DESC, workflow_id COLLATE "C" DESC);
    CREATE INDEX workflows_list_name_idx ON {schema}.workflows
        (tenant_id, name, created_at DESC, workflow_id COLLATE "C" DESC);
    CREATE INDEX workflows_list_all_idx ON {schema}.workflows
        (created_at DESC, workflow_id COLLATE "C" DESC);
    CREATE INDEX workflows_list_all_status_idx ON {schema}.workflows
        (status, created_at DESC, workflow_id COLLATE "C" DESC);
END
$migration$;
