-- Flows 103 (optional, with rls=True): row-level security on schedules, as 100 does for
-- the other tables (see 100_rls.sql): a role subject to RLS sees and writes only the
-- schedules of the tenant its transaction declared.

DO $migration$
BEGIN
    ALTER TABLE {schema}.schedules ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS flows_tenant ON {schema}.schedules;
    CREATE POLICY flows_tenant ON {schema}.schedules
        USING (tenant_id = current_setting('flows.tenant_id', true))
        WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
END
$migration$;
