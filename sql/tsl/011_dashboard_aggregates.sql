-- The dashboards' aggregates on the Community edition: continuous aggregates, refreshed and
-- retained by TimescaleDB jobs the policy consumer manages. Same names and columns as the
-- Apache edition's tables (sql/apache/011). Real-time (materialized_only = false): a query
-- also sees the rows past the newest materialized bucket, as the Apache edition's tables
-- hold the current hour and day. The daily aggregates are hierarchical, on the hourly ones.

-- A database migrated under the Apache edition and updated to this one has the Apache
-- edition's tables under these names: they go (a refresh rebuilds everything from the raw
-- rows), with what kept them fresh. tsl/010's daily aggregate (per organization only) is
-- replaced by the one with the user and application columns.
DO $$
DECLARE
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY ARRAY['active_windows_daily', 'visited_sites_daily', 'active_windows_hourly', 'visited_sites_hourly']
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'monitoring' AND c.relname = v_name AND c.relkind = 'r') THEN
            EXECUTE format('DROP TABLE monitoring.%I', v_name);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                WHERE view_schema = 'monitoring' AND view_name = 'active_windows_daily')
       AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_schema = 'monitoring' AND table_name = 'active_windows_daily'
                          AND column_name = 'users_on_computers_id') THEN
        DROP MATERIALIZED VIEW monitoring.active_windows_daily;  -- its jobs go with it
    END IF;
END $$;
DROP PROCEDURE IF EXISTS gatestream.refresh_aggregates_incremental(regclass, integer);
DROP PROCEDURE IF EXISTS gatestream.rebuild_touched_aggregates(regclass, integer);
DROP TABLE IF EXISTS gatestream.aggregate_watermarks;
DROP INDEX IF EXISTS monitoring.active_windows_created_at_brin;
DROP INDEX IF EXISTS monitoring.visited_sites_created_at_brin;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.active_windows_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       users_on_computers_id,
       process_name,
       time_bucket('1 hour', datetime) AS bucket,
       count(*)                        AS total_windows,
       sum(active_time)::bigint        AS total_active_time
  FROM monitoring.active_windows
 GROUP BY organization_id, users_on_computers_id, process_name, bucket
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.active_windows_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       users_on_computers_id,
       process_name,
       time_bucket('1 day', bucket)     AS bucket,
       sum(total_windows)::bigint       AS total_windows,
       sum(total_active_time)::bigint   AS total_active_time
  FROM monitoring.active_windows_hourly
 GROUP BY organization_id, users_on_computers_id, process_name, time_bucket('1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.visited_sites_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       users_on_computers_id,
       gatestream.url_site(url)        AS site,
       time_bucket('1 hour', datetime) AS bucket,
       count(*)                        AS total_visits,
       sum(duration)::bigint           AS total_duration
  FROM monitoring.visited_sites
 GROUP BY organization_id, users_on_computers_id, site, bucket
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.visited_sites_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT organization_id,
       users_on_computers_id,
       site,
       time_bucket('1 day', bucket)     AS bucket,
       sum(total_visits)::bigint        AS total_visits,
       sum(total_duration)::bigint      AS total_duration
  FROM monitoring.visited_sites_hourly
 GROUP BY organization_id, users_on_computers_id, site, time_bucket('1 day', bucket)
WITH NO DATA;

-- The contract's procedure: the buckets of the whole UTC days the window touches (NULL =
-- unbounded), hourly first (the daily ones read them). Call it outside a transaction block
-- (refresh_continuous_aggregate cannot run inside one).
CREATE OR REPLACE PROCEDURE gatestream.refresh_dashboard_aggregates(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_start timestamptz := time_bucket('1 day', window_start);
    v_end   timestamptz := time_bucket('1 day', window_end - interval '1 microsecond') + interval '1 day';
BEGIN
    CALL refresh_continuous_aggregate('monitoring.active_windows_hourly', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.active_windows_daily', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.visited_sites_hourly', v_start, v_end);
    CALL refresh_continuous_aggregate('monitoring.visited_sites_daily', v_start, v_end);
END
$$;

-- Per aggregate, how long ago its newest materialized bucket ended (its watermark; Infinity:
-- nothing materialized yet). Exported as gatestream_db_aggregate_staleness_seconds.
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
       AND ca.view_name IN ('active_windows_hourly', 'active_windows_daily', 'visited_sites_hourly', 'visited_sites_daily')
     ORDER BY 1
$$;
