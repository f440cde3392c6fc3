-- Flows 010 (Citus only): distribute schedules by shard_key, colocated with workflows.
-- The unique (tenant_id, schedule_id) index of 009 cannot be kept by Citus (it does not
-- contain the distribution column); the primary key keeps ids unique per tenant, as a
-- (tenant, schedule id) always maps to the same shard key (see 002).

DROP INDEX IF EXISTS {schema}.schedules_tenant_schedule_key;

SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

SELECT create_distributed_table('{schema}.schedules', 'shard_key',
                                colocate_with => '{schema}.workflows')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{schema}.schedules'::regclass);
