-- The policy consumer's pg_cron (issue 25; why it needs no owner's powers: sql/054, apache/054).
-- pg_cron 1.4 gives schedule_in_database and alter_job to the superuser only, and schema cron
-- to nobody: in pg_cron's database (cron.database_name) the policy consumer gets them. Where
-- pg_cron lives in another database than this one, whoever installs it there runs these grants
-- (this file; the test suite runs it there: tests/integration/test_roles.py).
DO $$
BEGIN
    IF current_setting('cron.database_name', true) = current_database()
       AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'cron') THEN
        GRANT USAGE ON SCHEMA cron TO gatestream_policy;
        GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text, boolean),
                                  cron.alter_job(bigint, text, text, text, text, boolean) TO gatestream_policy;
    END IF;
END $$;
