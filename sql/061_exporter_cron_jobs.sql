-- The exporter sees how pg_cron ran gatestream's jobs (issue 25: on the Apache edition its
-- gatestream_db_cron_job_* metrics were empty as its own login). pg_cron keeps cron.job behind
-- row security (a user sees the jobs it scheduled: the policy consumer's login's) and grants
-- schema cron to nobody, so the exporter (pg_monitor, no job of its own) saw none.
-- gatestream.cron_job_stats(database) returns, for the jobs named 'gatestream:*' of that
-- database, the last finished run's status and the count of failed runs; nothing else of
-- pg_cron (no command, no user). It runs as its owner, the superuser who migrates (the stack,
-- the suite): row security does not apply to a superuser. Migrated as gatestream_owner it is
-- that role's and sees only that role's jobs (none): a DBA then runs
-- `ALTER FUNCTION gatestream.cron_job_stats(text) OWNER TO postgres` once (README).
-- The exporter calls it in pg_cron's database (cron.database_name); where that database is not
-- a gatestream one, it reads cron.job directly (an admin's scrape) as before. PL/pgSQL: the
-- function may be made before pg_cron's extension is (the policy consumer creates it on its
-- first start); without schema cron it returns no row.
CREATE OR REPLACE FUNCTION gatestream.cron_job_stats(db text)
RETURNS TABLE (jobid bigint, jobname text, last_status text, failures bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('cron.job') IS NULL OR to_regclass('cron.job_run_details') IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT j.jobid, j.jobname::text,
                (SELECT d.status FROM cron.job_run_details d
                  WHERE d.jobid = j.jobid AND d.status IN (''succeeded'', ''failed'')
                  ORDER BY d.runid DESC LIMIT 1)::text,
                (SELECT count(*) FROM cron.job_run_details d WHERE d.jobid = j.jobid AND d.status = ''failed'')
           FROM cron.job j
          WHERE j.database = $1 AND starts_with(j.jobname, ''gatestream:'')'
        USING db;
END
$$;
REVOKE ALL ON FUNCTION gatestream.cron_job_stats(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gatestream.cron_job_stats(text) TO gatestream_exporter;
