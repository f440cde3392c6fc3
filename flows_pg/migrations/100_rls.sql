-- Flows 100 (optional): row-level security, one tenant per transaction.
--
-- Applied only on request: migrate(..., rls=True), PostgresStore.migrate(rls=True) or
-- `flows migrate --rls` (the runner skips files whose name contains "rls" otherwise).
-- Optional migrations are numbered from 100 so that they never collide with the base
-- sequence; a later base migration that adds a table with tenant_id must come with its
-- own optional "NNN_..._rls.sql" file.
--
-- Every table that carries tenant_id gets one policy, for every command:
--     tenant_id = current_setting('flows.tenant_id', true)
-- so a role subject to RLS sees and writes only the rows of the tenant its transaction
-- declared with SELECT set_config('flows.tenant_id', '<tenant>', true) (what
-- flows_pg.set_tenant does); with no tenant declared it sees nothing and writes nothing.
-- Tenant ids are never empty, so the '' a reset setting reads as matches no row.
--
-- ENABLE, not FORCE: the table owner (the role that ran this migration, i.e. the
-- library's and the workers' role) is not subject to the policies and works as before;
-- so are superusers and BYPASSRLS roles. The application role must be another,
-- non-owner role, granted USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on
-- workflows, history, inbox and tasks.
--
-- workers and schema_migrations have no tenant (workers rows carry tenant_id ''): no RLS
-- on them; grant the application role nothing on them.

ALTER TABLE {schema}.workflows ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.workflows;
CREATE POLICY flows_tenant ON {schema}.workflows
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));

ALTER TABLE {schema}.history ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.history;
CREATE POLICY flows_tenant ON {schema}.history
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));

ALTER TABLE {schema}.inbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.inbox;
CREATE POLICY flows_tenant ON {schema}.inbox
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));

ALTER TABLE {schema}.tasks ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.tasks;
CREATE POLICY flows_tenant ON {schema}.tasks
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
