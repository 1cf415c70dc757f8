-- The Community edition's jobs API for the policy consumer, without the owner's powers (issue 25;
-- why: sql/054). TimescaleDB wants the caller of add_retention_policy, add_columnstore_policy,
-- add_continuous_aggregate_policy, add_job, alter_job and delete_job to own the hypertable and
-- the job: these SECURITY DEFINER wrappers are owned by gatestream_owner (so every job they
-- make is the owner's, as a policy's job already is: TimescaleDB gives it the hypertable's
-- owner), take only gatestream's relations (gatestream.policy_target) and only gatestream's jobs
-- (gatestream.policy_job), and only gatestream_policy may execute them
-- (gatestream/consumers/policy/engines.py calls them). Running a job now (CALL run_job, what
-- `gatestream policy run-jobs` does) stays the owner's: a job may commit, a wrapper cannot.

-- A job gatestream made: a policy on one of its relations (a continuous aggregate's job names
-- its materialization hypertable: mapped back to the view), or one of its procedures. Raises
-- insufficient_privilege otherwise.
CREATE OR REPLACE FUNCTION gatestream.policy_job(p_job integer)
RETURNS integer LANGUAGE plpgsql STABLE AS $$
DECLARE
    j        record;
    v_target text;
BEGIN
    SELECT job_id, proc_schema, proc_name, hypertable_schema, hypertable_name INTO j
      FROM timescaledb_information.jobs WHERE job_id = p_job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no job %', p_job USING ERRCODE = 'no_data_found';
    END IF;
    IF j.job_id >= 1000 AND j.proc_schema = 'gatestream' AND j.proc_name IN ('delete_expired_rows_job', 'presence_sweep_job') THEN
        RETURN p_job;
    END IF;
    IF j.job_id >= 1000 AND j.proc_schema IN ('_timescaledb_functions', '_timescaledb_internal')
       AND j.proc_name IN ('policy_retention', 'policy_compression', 'policy_refresh_continuous_aggregate')
       AND j.hypertable_name IS NOT NULL THEN
        SELECT format('%I.%I', a.view_schema, a.view_name) INTO v_target
          FROM timescaledb_information.continuous_aggregates a
         WHERE a.materialization_hypertable_schema = j.hypertable_schema
           AND a.materialization_hypertable_name = j.hypertable_name;
        PERFORM gatestream.policy_target(coalesce(v_target, format('%I.%I', j.hypertable_schema, j.hypertable_name))::regclass);
        RETURN p_job;
    END IF;
    RAISE EXCEPTION 'job % (%.%) is not one of gatestream''s: gatestream_policy may not change it',
        p_job, j.proc_schema, j.proc_name USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE FUNCTION gatestream.policy_add_retention(p_target regclass, p_drop_after interval, p_schedule interval)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN add_retention_policy(gatestream.policy_target(p_target), drop_after => p_drop_after,
                                schedule_interval => p_schedule);
END
$$;

-- The columnstore settings of a hypertable (gatestream/consumers/policy/columnstore.py says
-- which); whether the server has the columnstore names (2.18+). The settings go in as literals.
CREATE OR REPLACE FUNCTION gatestream.policy_set_columnstore(
    p_target regclass, p_segmentby text, p_orderby text, p_sparse_index text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_columnstore boolean := to_regproc('add_columnstore_policy') IS NOT NULL;
    v_options     text;
BEGIN
    PERFORM gatestream.policy_target(p_target);
    v_options := CASE WHEN v_columnstore
                      THEN format('timescaledb.enable_columnstore, timescaledb.segmentby = %L, timescaledb.orderby = %L',
                                  p_segmentby, p_orderby)
                      ELSE format('timescaledb.compress, timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L',
                                  p_segmentby, p_orderby) END;
    IF p_sparse_index IS NOT NULL AND EXISTS (
        SELECT 1 FROM information_schema.columns WHERE table_schema = 'timescaledb_information'
           AND table_name = 'hypertable_columnstore_settings' AND column_name = 'index') THEN
        v_options := v_options || format(', timescaledb.sparse_index = %L', p_sparse_index);
    END IF;
    EXECUTE format('ALTER TABLE %s SET (%s)', p_target, v_options);
    RETURN v_columnstore;
END
$$;

CREATE OR REPLACE FUNCTION gatestream.policy_add_columnstore(p_target regclass, p_after interval, p_schedule interval)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gatestream.policy_target(p_target);
    IF to_regproc('add_columnstore_policy') IS NOT NULL THEN
        CALL add_columnstore_policy(p_target, after => p_after, schedule_interval => p_schedule);
        RETURN NULL;
    END IF;
    RETURN add_compression_policy(p_target, compress_after => p_after, schedule_interval => p_schedule);
END
$$;

CREATE OR REPLACE FUNCTION gatestream.policy_add_cagg_refresh(
    p_target regclass, p_start_offset interval, p_end_offset interval, p_schedule interval)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN add_continuous_aggregate_policy(gatestream.policy_target(p_target), start_offset => p_start_offset,
                                           end_offset => p_end_offset, schedule_interval => p_schedule);
END
$$;

-- A job running one of gatestream's procedures: the row retention (of a retention resource) or
-- the presence sweep.
CREATE OR REPLACE FUNCTION gatestream.policy_add_job(p_proc regproc, p_schedule interval, p_config jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF p_proc = 'gatestream.delete_expired_rows_job'::regproc THEN
        IF NOT EXISTS (SELECT 1 FROM gatestream.retention_resources
                        WHERE hypertable = to_regclass(p_config ->> 'hypertable')) THEN
            RAISE EXCEPTION 'row retention of %: not a retention resource', p_config ->> 'hypertable'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF p_proc IS DISTINCT FROM 'gatestream.presence_sweep_job'::regproc THEN
        RAISE EXCEPTION 'gatestream_policy may schedule only gatestream''s procedures, not %', p_proc
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN add_job(p_proc, p_schedule, config => p_config);
END
$$;

-- A new schedule and config for one of gatestream's jobs; a policy's config keeps its
-- hypertable (a job is not moved to another relation).
CREATE OR REPLACE FUNCTION gatestream.policy_alter_job(p_job integer, p_schedule interval, p_config jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_proc name;
    v_old  jsonb;
BEGIN
    PERFORM gatestream.policy_job(p_job);
    SELECT proc_name, config INTO v_proc, v_old FROM timescaledb_information.jobs WHERE job_id = p_job;
    IF v_proc = 'delete_expired_rows_job' AND NOT EXISTS (
        SELECT 1 FROM gatestream.retention_resources WHERE hypertable = to_regclass(p_config ->> 'hypertable')) THEN
        RAISE EXCEPTION 'row retention of %: not a retention resource', p_config ->> 'hypertable'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (p_config -> 'hypertable_id') IS DISTINCT FROM (v_old -> 'hypertable_id')
       OR (p_config -> 'mat_hypertable_id') IS DISTINCT FROM (v_old -> 'mat_hypertable_id') THEN
        RAISE EXCEPTION 'job % keeps its hypertable', p_job USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM alter_job(p_job, schedule_interval => p_schedule, config => p_config);
END
$$;

CREATE OR REPLACE FUNCTION gatestream.policy_delete_job(p_job integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM delete_job(gatestream.policy_job(p_job));
END
$$;

ALTER FUNCTION gatestream.policy_job(integer) OWNER TO gatestream_owner;
SELECT gatestream.pin_definer('gatestream.policy_add_retention(regclass, interval, interval)');
SELECT gatestream.pin_definer('gatestream.policy_set_columnstore(regclass, text, text, text)');
SELECT gatestream.pin_definer('gatestream.policy_add_columnstore(regclass, interval, interval)');
SELECT gatestream.pin_definer('gatestream.policy_add_cagg_refresh(regclass, interval, interval, interval)');
SELECT gatestream.pin_definer('gatestream.policy_add_job(regproc, interval, jsonb)');
SELECT gatestream.pin_definer('gatestream.policy_alter_job(integer, interval, jsonb)');
SELECT gatestream.pin_definer('gatestream.policy_delete_job(integer)');

-- Jobs of gatestream's procedures made before this by another role (the superuser, or a policy
-- login when it was a member of the owner) pass to the owner: only a member of a job's owner
-- may alter or delete it. (A policy's job already follows its hypertable's owner.) Needs a
-- superuser; a migration run by the owner leaves them, saying so.
DO $$
BEGIN
    UPDATE _timescaledb_config.bgw_job SET owner = 'gatestream_owner'::regrole
     WHERE proc_schema = 'gatestream' AND proc_name IN ('delete_expired_rows_job', 'presence_sweep_job')
       AND owner <> 'gatestream_owner'::regrole;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'gatestream''s jobs owned by another role keep their owner (run this migration as a superuser '
                 'to pass them to gatestream_owner, or delete them: the policy consumer makes them again)';
END $$;
