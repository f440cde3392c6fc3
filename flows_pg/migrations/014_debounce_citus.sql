-- Flows 014 (Citus only): distribute pending_starts by shard_key, colocated with
-- workflows (its unique indexes of 013 contain the distribution column: they stay).

SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

SELECT create_distributed_table('{schema}.pending_starts', 'shard_key',
                                colocate_with => '{schema}.workflows')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{schema}.pending_starts'::regclass);
