-- Flows 105 (optional, with rls=True): row-level security on pending_starts, as 100 does
-- for the other tables (see 100_rls.sql): a role subject to RLS sees and writes only the
-- debounced starts of the tenant its transaction declared.

DO $migration$
BEGIN
    ALTER TABLE {schema}.pending_starts ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS flows_tenant ON {schema}.pending_starts;
    CREATE POLICY flows_tenant ON {schema}.pending_starts
        USING (tenant_id = current_setting('flows.tenant_id', true))
        WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
END
$migration$;
