-- Readers see their own organization on the Apache edition (issue 25; roles: sql/050, the
-- reader's function, policy and views: sql/051): row-level security on the raw hypertables and
-- the registry, and the reader's views of the aggregates (hypertables here: apache/011, 021),
-- the same as the Community edition's (tsl/050), so a reader's queries are the same on both.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['active_windows_hourly', 'active_windows_daily', 'visited_sites_hourly',
                             'visited_sites_daily', 'active_windows_user_daily', 'active_windows_app_daily',
                             'visited_sites_site_daily']
    LOOP
        EXECUTE format('ALTER TABLE monitoring.%I OWNER TO gatestream_owner', t);
        CALL gatestream.reader_view(t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['active_windows', 'visited_sites', 'screenshots', 'user_sessions',
                             'gateway_status_snapshots', 'gateway_instances']
    LOOP
        CALL gatestream.reader_policy(t);
    END LOOP;
END $$;
ALTER TABLE gatestream.aggregate_watermarks OWNER TO gatestream_owner;
GRANT SELECT ON gatestream.aggregate_watermarks TO gatestream_exporter;
