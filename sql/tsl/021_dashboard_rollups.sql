-- Rollups of the daily aggregates for the dashboards that read a whole organization (issue 23
-- §4), on the Community edition: continuous aggregates on the hourly ones, real-time like them.
-- Same names and columns as the Apache edition's tables (sql/apache/021). Why: the daily
-- aggregates keep a row per user and application (or site) and day, which barely aggregates
-- for a large organization (413k raw rows vs 324k daily rows in 30 days at 10M rows); a page
-- of users over 30 days, an organization's top applications and its 90 daily totals each read
-- one small rollup instead:
--   active_windows_user_daily  (organization, user, day)        one organization's users per day
--   active_windows_app_daily   (organization, application, day) its top applications; its daily totals
--   visited_sites_site_daily   (organization, site, day)        its top sites

-- A database migrated under the Apache edition and updated to this one has the Apache
-- edition's tables under these names, and its procedures: they go, as in tsl/011 (a refresh
-- rebuilds everything from the raw rows).
DO $$
DECLARE
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY ARRAY['active_windows_user_daily', 'active_windows_app_daily', 'visited_sites_site_daily']
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'monitoring' AND c.relname = v_name AND c.relkind = 'r') THEN
            EXECUTE format('DROP TABLE monitoring.%I', v_name);
        END IF;
    END LOOP;
END $$;
DROP PROCEDURE IF EXISTS gatestream.rebuild_touched_rollups(regclass);
DROP PROCEDURE IF EXISTS gatestream.rebuild_touched_base_aggregates(regclass, integer);
CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.active_windows_user_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       users_on_computers_id,
       time_bucket('1 day', bucket)     AS bucket,
       sum(total_windows)::bigint       AS total_windows,
       sum(total_active_time)::bigint   AS total_active_time
  FROM monitoring.active_windows_hourly
 GROUP BY organization_id, users_on_computers_id, time_bucket('1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.active_windows_app_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       process_name,
       time_bucket('1 day', bucket)     AS bucket,
       sum(total_windows)::bigint       AS total_windows,
       sum(total_active_time)::bigint   AS total_active_time
  FROM monitoring.active_windows_hourly
 GROUP BY organization_id, process_name, time_bucket('1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.visited_sites_site_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       site,
       time_bucket('1 day', bucket)     AS bucket,
       sum(total_visits)::bigint        AS total_visits,
       sum(total_duration)::bigint      AS total_duration
  FROM monitoring.visited_sites_hourly
 GROUP BY organization_id, site, time_bucket('1 day', bucket)
WITH NO DATA;

-- The contract's procedure (tsl/011), now with the rollups: hourly first, then what reads them.
CREATE OR REPLACE PROCEDURE gatestream.refresh_dashboard_aggregates(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_start timestamptz := time_bucket('1 day', window_start);
    v_end   timestamptz := time_bucket('1 day', window_end - interval '1 microsecond') + interval '1 day';
BEGIN
    CALL refresh_continuous_aggregate('monitoring.active_windows_hourly', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.active_windows_daily', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.active_windows_user_daily', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.active_windows_app_daily', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.visited_sites_hourly', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.visited_sites_daily', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.visited_sites_site_daily', v_start, v_end);
END
$$;

-- tsl/011's staleness, with the rollups.
CREATE OR REPLACE FUNCTION gatestream.dashboard_aggregate_staleness()
RETURNS TABLE (aggregate text, staleness_seconds double precision)
LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', ca.view_schema, ca.view_name),
           CASE WHEN w.watermark > '1970-01-01'
                THEN greatest(0, extract(epoch FROM now() - w.watermark))::double precision
                ELSE 'Infinity'::double precision END
      FROM timescaledb_information.continuous_aggregates ca
      JOIN _timescaledb_catalog.hypertable h
        ON h.schema_name = ca.materialization_hypertable_schema AND h.table_name = ca.materialization_hypertable_name
     CROSS JOIN LATERAL (
           SELECT _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(h.id)) AS watermark) w
     WHERE ca.view_schema = 'monitoring'
       AND ca.view_name IN ('active_windows_hourly', 'active_windows_daily', 'active_windows_user_daily',
                            'active_windows_app_daily', 'visited_sites_hourly', 'visited_sites_daily',
                            'visited_sites_site_daily')
     ORDER BY 1
$$;
