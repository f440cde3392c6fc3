-- Flows 012 (Citus): the flow-control tables of 011 distributed by bucket (one activity
-- or workflow name), colocated with each other, not with the workflows: each slot,
-- waiter or rate statement is a router query on one bucket in its own short
-- transaction. A limit is one hot row set on one shard (one activity's limits share a
-- shard); the tasks it admits stay spread over every shard.

SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

SELECT create_distributed_table('{schema}.limit_slots', 'bucket')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{schema}.limit_slots'::regclass);

SELECT create_distributed_table(t.name, 'bucket', colocate_with => '{schema}.limit_slots')
FROM unnest(ARRAY['{schema}.limit_waiters', '{schema}.limit_rates']) WITH ORDINALITY AS t(name, ord)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass)
ORDER BY t.ord;
