-- Flows 007: runs (continue-as-new) and the published status.
--
-- workflows.run_number: the current run of the workflow id (1, plus one per
-- ctx.continue_as_new); run_started_at: when it started (NULL for run 1: created_at);
-- status_value: the status the workflow published last (ctx.set_status), written by the
-- workflow-task commit that follows it. Constant defaults and NULLs: adding them
-- rewrites nothing, and workers of the previous version go on writing the rows as before.
--
-- runs: one row per earlier run (ended by continue-as-new, status 'continued'), and
-- run_history its events (the history table holds the current run only). Both keyed
-- like history, so on Citus they are colocated with the workflow (008_runs_citus) and
-- the continue-as-new commit stays one transaction on the workflow's shard. Deleted
-- with the workflow (prune).
--
-- One DO block: on Citus each statement is then propagated to the worker nodes on its
-- own (see 003).

DO $migration$
BEGIN
    ALTER TABLE {schema}.workflows ADD COLUMN IF NOT EXISTS run_number integer NOT NULL DEFAULT 1;
    ALTER TABLE {schema}.workflows ADD COLUMN IF NOT EXISTS run_started_at timestamptz;
    ALTER TABLE {schema}.workflows ADD COLUMN IF NOT EXISTS status_value json;
    CREATE TABLE IF NOT EXISTS {schema}.runs (
        shard_key      text        NOT NULL,
        tenant_id      text        NOT NULL,
        workflow_id    text        NOT NULL,
        run_number     integer     NOT NULL CHECK (run_number >= 1),
        status         text        NOT NULL DEFAULT 'continued',
        input          json        NOT NULL,
        started_at     timestamptz NOT NULL,
        ended_at       timestamptz NOT NULL DEFAULT now(),
        history_length integer     NOT NULL,
        PRIMARY KEY (shard_key, tenant_id, workflow_id, run_number)
    );
    CREATE TABLE IF NOT EXISTS {schema}.run_history (
        shard_key   text    NOT NULL,
        tenant_id   text    NOT NULL,
        workflow_id text    NOT NULL,
        run_number  integer NOT NULL,
        position    integer NOT NULL CHECK (position >= 1),
        event       json    NOT NULL,
        PRIMARY KEY (shard_key, tenant_id, workflow_id, run_number, position)
    );
END
$migration$;
