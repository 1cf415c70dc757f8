-- Readers see their own organization on the Community edition (issue 25; roles: sql/050, the
-- reader's function, policy and views: sql/051). Here, after the continuous aggregates exist:
-- TimescaleDB refuses to create a continuous aggregate on a hypertable with row-level security
-- (a later migration that adds one must disable it around the CREATE, or come before this).
-- The continuous aggregates themselves pass to gatestream_owner: a superuser-owned view would
-- read the raw hypertable (its real-time part) as a superuser, past every policy.
DO $$
DECLARE
    t text;
    a record;
BEGIN
    FOR a IN SELECT view_schema, view_name FROM timescaledb_information.continuous_aggregates
              WHERE view_schema = 'monitoring' ORDER BY view_name
    LOOP
        EXECUTE format('ALTER MATERIALIZED VIEW %I.%I OWNER TO gatestream_owner', a.view_schema, a.view_name);
        CALL gatestream.reader_view(a.view_name);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['active_windows', 'visited_sites', 'screenshots', 'user_sessions',
                             'gateway_status_snapshots', 'gateway_instances']
    LOOP
        CALL gatestream.reader_policy(t);
    END LOOP;
END $$;
