-- Flows 101 (optional, with 100_rls): row-level security on the tables of 005, the same
-- policy as every other table with tenant_id (see 100_rls.sql).

DO $migration$
BEGIN
    ALTER TABLE {schema}.outbox ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS flows_tenant ON {schema}.outbox;
    CREATE POLICY flows_tenant ON {schema}.outbox
        USING (tenant_id = current_setting('flows.tenant_id', true))
        WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
    ALTER TABLE {schema}.delivery_keys ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS flows_tenant ON {schema}.delivery_keys;
    CREATE POLICY flows_tenant ON {schema}.delivery_keys
        USING (tenant_id = current_setting('flows.tenant_id', true))
        WITH CHECK (tenant_id = current_setting('flows.tenant_id', true));
END
$migration$;
