-- Flows 006 (Citus only): the tables of 005 distributed by shard_key, colocated with
-- workflows (an outbox row lives in its sender's shard, a delivery key in its target's).

DO $migration$
BEGIN
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    PERFORM create_distributed_table(t.name, 'shard_key', colocate_with => '{schema}.workflows')
    FROM unnest(ARRAY['{schema}.outbox', '{schema}.delivery_keys']) WITH ORDINALITY AS t(name, ord)
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass)
    ORDER BY t.ord;
END
$migration$;
