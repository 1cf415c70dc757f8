-- What a superuser (a DBA) does once per server and database so that `gatestream db migrate`
-- runs as a member of gatestream_owner instead of a superuser (issue 25). Run it in the
-- database gatestream will use, naming the login that will migrate:
--
--   psql -X -v ON_ERROR_STOP=1 -v migrator=gs_migrate -d gatestream -f ops/postgres/before-migrate.sql
--
-- then give that login a password (ops/postgres/secure login ... gs_migrate, or \password) and
-- run `GATESTREAM_DATABASE_URL=postgresql://gs_migrate@.../gatestream gatestream db migrate`.
-- Idempotent. What needs the superuser, and why (the migrations do each of these too, skipped
-- where it is done already, so a superuser's migrate still needs none of this):
--   - CREATE EXTENSION timescaledb (sql/001): an untrusted extension (a C library);
--   - the cluster-wide roles (sql/050, sql/052): creating roles takes CREATEROLE, and
--     gatestream_cdc's REPLICATION attribute and the memberships of pg_monitor,
--     pg_read_all_stats and pg_read_all_settings (sql/050, sql/054) take a superuser or
--     ADMIN on those built-in roles, which nobody should give the owner;
--   - gatestream_reader's plan_cache_mode (sql/053): ALTER ROLE of a role one has no ADMIN on;
--   - CREATE on the database for gatestream_owner (its schemas; the CDC publication of sql/052);
--   - the migrating login: a member of gatestream_owner whose session runs as it (SET role),
--     so that everything the migrations make is the owner's, not the login's.
-- Left to a superuser afterwards: `CALL gatestream.copy_role_settings()` once logins exist that
-- the migrations could not give the group roles' settings (sql/059; ops/postgres/secure login
-- and gatestream.roles.create_login give them to logins made after), and on the Apache edition
-- sql/apache/055_policy_cron_grants.sql in pg_cron's database (pg_cron's own functions).
CREATE EXTENSION IF NOT EXISTS timescaledb;

DO $$
DECLARE
    r text;
    m record;
BEGIN
    FOREACH r IN ARRAY ARRAY['gatestream_owner', 'gatestream_ingest', 'gatestream_replay', 'gatestream_policy',
                             'gatestream_exporter', 'gatestream_reader', 'gatestream_cdc']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I ' || CASE r WHEN 'gatestream_owner' THEN 'LOGIN'
                                                       WHEN 'gatestream_cdc' THEN 'LOGIN REPLICATION'
                                                       ELSE 'NOLOGIN' END, r);
        END IF;
    END LOOP;
    FOR m IN SELECT * FROM (VALUES ('gatestream_ingest', 'gatestream_replay'), ('pg_monitor', 'gatestream_exporter'),
                                   ('pg_read_all_stats', 'gatestream_policy'), ('pg_read_all_stats', 'gatestream_owner'),
                                   ('pg_read_all_settings', 'gatestream_policy')) AS v (grp, member)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_auth_members a
                        WHERE a.roleid = to_regrole(m.grp) AND a.member = to_regrole(m.member)) THEN
            EXECUTE format('GRANT %I TO %I', m.grp, m.member);
        END IF;
    END LOOP;
    ALTER ROLE gatestream_reader SET plan_cache_mode = force_custom_plan;
    EXECUTE format('GRANT CREATE ON DATABASE %I TO gatestream_owner', current_database());
END $$;

SELECT format('CREATE ROLE %I LOGIN', :'migrator')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'migrator') \gexec
SELECT format('GRANT gatestream_owner TO %I', :'migrator') \gexec
SELECT format('ALTER ROLE %I SET role = gatestream_owner', :'migrator') \gexec
