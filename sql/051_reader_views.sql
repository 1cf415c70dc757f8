-- Readers see their own organization (issue 25), keyed by the session setting
--   SET gatestream.organization_id = '42';
-- A member of gatestream_reader sees the rows of that organization only, and without the
-- setting none; nobody else is restricted. Its only door is schema `reader`: security_barrier
-- views with the names of what it reads in monitoring (reader.active_windows,
-- reader.active_windows_user_daily ...), each filtered to the reader's organization; it has no
-- privilege on monitoring itself.
--
-- Why views and not row-level security on the hypertables (tried on TimescaleDB 2.28.3):
--   - a policy on a hypertable does not reach its chunks: TimescaleDB copies the hypertable's
--     grants to every chunk but not its row security, so a reader with SELECT on the hypertable
--     reads every organization from _timescaledb_internal._hyper_*_chunk directly;
--   - TimescaleDB refuses row security on a continuous aggregate's materialization hypertable
--     ("operation not supported on materialization tables"), a view has none, a continuous
--     aggregate takes no security_invoker, and no continuous aggregate can be created on a
--     hypertable with row security;
--   - COPY FROM is refused on a table with row security for every role it applies to (even
--     with a policy that lets everything through): ingest would need BYPASSRLS on its login.
-- The views are owned by gatestream_owner, which reads the tables under them; the filter is
-- the reader's (current_user inside a view is still the reader).

-- The organization the current user may see: NULL = not restricted (not a reader, or a
-- superuser: pg_has_role says a superuser is a member of every role); 0 = nothing (a reader
-- without the setting; organization ids are > 0, sql/009).
CREATE OR REPLACE FUNCTION gatestream.reader_organization() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN NOT pg_has_role(current_user, 'gatestream_reader', 'MEMBER')
          OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN NULL
        ELSE coalesce(nullif(current_setting('gatestream.organization_id', true), '')::integer, 0)
    END
$$;

CREATE SCHEMA IF NOT EXISTS reader AUTHORIZATION gatestream_owner;
GRANT USAGE ON SCHEMA reader TO gatestream_reader;

-- reader.<name>: monitoring.<name>, the reader's organization only (a reader
-- without the setting: nothing). security_barrier: no function of the reader's query sees a
-- row of another organization before the filter.
CREATE OR REPLACE PROCEDURE gatestream.reader_view(p_name text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE VIEW reader.%1$I WITH (security_barrier) AS
           SELECT * FROM monitoring.%1$I WHERE organization_id = (SELECT gatestream.reader_organization())', p_name);
    EXECUTE format('ALTER VIEW reader.%I OWNER TO gatestream_owner', p_name);
    EXECUTE format('GRANT SELECT ON reader.%I TO gatestream_reader', p_name);
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['active_windows', 'visited_sites', 'screenshots', 'user_sessions',
                             'gateway_status_snapshots', 'gateway_instances']
    LOOP
        -- reader.gateway_instances is made once here and remade by sql/058 without api_key:
        -- this file run again must not put the key back, nor fail on 058's view (amended:
        -- gatestream.migrate.AMENDED)
        IF t = 'gateway_instances' AND to_regclass('reader.gateway_instances') IS NOT NULL THEN
            CONTINUE;
        END IF;
        CALL gatestream.reader_view(t);
    END LOOP;
END $$;
