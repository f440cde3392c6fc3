-- Flows 102 (optional, with 100_rls): row-level security on the tables of 007, one
-- tenant per transaction, as 100_rls does for the others. The application role needs
-- SELECT, INSERT, UPDATE, DELETE on runs and run_history too.

ALTER TABLE {schema}.runs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.runs;
CREATE POLICY flows_tenant ON {schema}.runs
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));

ALTER TABLE {schema}.run_history ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS flows_tenant ON {schema}.run_history;
CREATE POLICY flows_tenant ON {schema}.run_history
    USING (tenant_id = current_setting('flows.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
