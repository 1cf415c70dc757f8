-- The dashboards' aggregates (issue 23 §5), the part both editions share. The relations
-- themselves differ by edition and come from the edition's folder:
--   sql/tsl/011_dashboard_aggregates.sql    (Community: continuous aggregates, TimescaleDB jobs)
--   sql/apache/011_dashboard_aggregates.sql (Apache: tables kept fresh by pg_cron, by watermark)
-- Both give the same relations with the same columns:
--   monitoring.active_windows_hourly / _daily
--     (organization_id, users_on_computers_id, process_name, bucket, total_windows, total_active_time)
--   monitoring.visited_sites_hourly / _daily
--     (organization_id, users_on_computers_id, site, bucket, total_visits, total_duration)
-- and the same procedures:
--   CALL gatestream.refresh_dashboard_aggregates(window_start, window_end)  -- outside a transaction block
--   SELECT * FROM gatestream.dashboard_aggregate_staleness()                -- (aggregate, staleness_seconds)
-- Buckets are UTC hours and days (time_bucket's default origin).

-- The site of a visited URL: its host, lower-cased, without user info or port (an IPv6
-- literal keeps its brackets); a URL without a scheme ("example.com/x", "about:blank") is
-- its own site, unchanged. IMMUTABLE: a continuous aggregate groups by it.
CREATE OR REPLACE FUNCTION gatestream.url_site(url text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN url ~ '^[A-Za-z][A-Za-z0-9+.-]*://'
        THEN lower(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\[[^]/?#]*\]|[^/?#:]*)'))
        ELSE url
    END
$$;
