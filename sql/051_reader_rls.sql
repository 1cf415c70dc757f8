-- Readers see their own organization (issue 25), keyed by the session setting
--   SET gatestream.organization_id = '42';
-- A member of gatestream_reader sees the rows of that organization only, and without the
-- setting none. Nobody else is restricted.
--   the raw hypertables and the gateway registry: row-level security, one policy for every role
--     whose expression lets every role but a reader through (gatestream.reader_policy, applied
--     by the edition's migration: tsl/050, apache/050);
--   the dashboards' aggregates: security_barrier views of the same names in schema `reader`
--     (reader.active_windows_user_daily ...), the reader's only way to them. On the Community
--     edition a continuous aggregate cannot have row-level security (TimescaleDB refuses it on
--     a materialization hypertable, and a view has none), nor security_invoker; the Apache
--     edition's tables get the same views, so a reader's queries are the same on both.
-- The policies are FORCEd: a continuous aggregate's real-time part reads the raw hypertable as
-- the view's owner (gatestream_owner), who would otherwise bypass them; inside a view
-- current_user is still the reader, so the expression sees who is asking.
--
-- COPY FROM is refused on a table with row-level security for a role it applies to, even a
-- policy that lets everything through: the writers' login users (ingest, replay, import) carry
-- BYPASSRLS (gatestream.roles creates them so; ops/stack will); a superuser bypasses anyway.

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

-- Row-level security on monitoring.<table> for readers (called by the edition's migration once
-- the continuous aggregates exist: TimescaleDB refuses to create one on a hypertable with
-- row-level security). (SELECT ...): evaluated once per query (an InitPlan), not per row.
CREATE OR REPLACE PROCEDURE gatestream.reader_policy(p_table text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE monitoring.%I ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE monitoring.%I FORCE ROW LEVEL SECURITY', p_table);
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'monitoring' AND tablename = p_table
                      AND policyname = 'reader_own_organization') THEN
        EXECUTE format(
            'CREATE POLICY reader_own_organization ON monitoring.%I
               USING ((SELECT gatestream.reader_organization()) IS NULL
                      OR organization_id = (SELECT gatestream.reader_organization()))', p_table);
    END IF;
END
$$;

-- reader.<name>: the aggregate monitoring.<name>, the reader's organization only (a reader
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
