-- The reader's views of the Apache edition's aggregates (issue 25; roles: sql/050, the reader's
-- function and views: sql/051): hypertables here (apache/011, 021), owned by gatestream_owner
-- like the rest of the schema; the same views as the Community edition's (tsl/050).
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
END $$;
ALTER TABLE gatestream.aggregate_watermarks OWNER TO gatestream_owner;
GRANT SELECT ON gatestream.aggregate_watermarks TO gatestream_exporter;
