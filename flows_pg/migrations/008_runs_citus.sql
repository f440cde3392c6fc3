-- Flows 008 (Citus only): runs and run_history (007) distributed by shard_key and
-- colocated with workflows, like history: a continue-as-new commit writes them in the
-- same router transaction as the workflow's other rows. Idempotent.

SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

SELECT create_distributed_table(t.name, 'shard_key', colocate_with => '{schema}.workflows')
FROM unnest(ARRAY['{schema}.runs', '{schema}.run_history']) WITH ORDINALITY AS t(name, ord)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass)
ORDER BY t.ord;
