-- Rollups of the daily aggregates for the dashboards that read a whole organization (issue 23
-- §4), on the Apache edition: hypertables with the same names and columns as the Community
-- edition's continuous aggregates (sql/tsl/021), kept by the same watermark refresh as the
-- aggregates of apache/011. Why: the daily aggregates keep a row per user and application (or
-- site) and day, which barely aggregates for a large organization; a page of users over 30
-- days, an organization's top applications and its 90 daily totals each read a small rollup:
--   active_windows_user_daily  (organization, user, day)
--   active_windows_app_daily   (organization, application, day)
--   visited_sites_site_daily   (organization, site, day)
-- A rollup's (organization, day) rows are rebuilt from the daily aggregate whenever that
-- day of that organization is: equal to a recompute from the raw rows, as the daily one is.

CREATE TABLE IF NOT EXISTS monitoring.active_windows_user_daily (
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    bucket                timestamptz NOT NULL,
    total_windows         bigint      NOT NULL,
    total_active_time     bigint
);
CREATE TABLE IF NOT EXISTS monitoring.active_windows_app_daily (
    organization_id       integer     NOT NULL,
    process_name          text,
    bucket                timestamptz NOT NULL,
    total_windows         bigint      NOT NULL,
    total_active_time     bigint
);
CREATE TABLE IF NOT EXISTS monitoring.visited_sites_site_daily (
    organization_id       integer     NOT NULL,
    site                  text,
    bucket                timestamptz NOT NULL,
    total_visits          bigint      NOT NULL,
    total_duration        bigint
);
SELECT create_hypertable('monitoring.active_windows_user_daily', 'bucket',
    chunk_time_interval => interval '30 days', if_not_exists => true);
SELECT create_hypertable('monitoring.active_windows_app_daily', 'bucket',
    chunk_time_interval => interval '30 days', if_not_exists => true);
SELECT create_hypertable('monitoring.visited_sites_site_daily', 'bucket',
    chunk_time_interval => interval '30 days', if_not_exists => true);
-- user_daily leads with the user: a page of users reads a range per user
CREATE UNIQUE INDEX IF NOT EXISTS active_windows_user_daily_key
    ON monitoring.active_windows_user_daily (organization_id, users_on_computers_id, bucket);
CREATE UNIQUE INDEX IF NOT EXISTS active_windows_app_daily_key
    ON monitoring.active_windows_app_daily (organization_id, bucket, process_name) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX IF NOT EXISTS visited_sites_site_daily_key
    ON monitoring.visited_sites_site_daily (organization_id, bucket, site) NULLS NOT DISTINCT;

-- apache/020's device indexes on the daily aggregates served the page of users, which now
-- reads active_windows_user_daily: they would only cost every refresh.
DROP INDEX IF EXISTS monitoring.active_windows_daily_device_idx;
DROP INDEX IF EXISTS monitoring.visited_sites_daily_device_idx;

-- Rebuild the rollups of the (organization, day)s in pg_temp.gs_touched from the daily
-- aggregate (rebuilt just before by rebuild_touched_base_aggregates).
CREATE OR REPLACE PROCEDURE gatestream.rebuild_touched_rollups(p_source regclass)
LANGUAGE plpgsql AS $$
DECLARE
    v_day timestamptz;
    r     record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
                ('monitoring.active_windows'::regclass, 'active_windows_user_daily', 'users_on_computers_id',
                 'total_windows', 'total_active_time', 'active_windows_daily'),
                ('monitoring.active_windows'::regclass, 'active_windows_app_daily', 'process_name',
                 'total_windows', 'total_active_time', 'active_windows_daily'),
                ('monitoring.visited_sites'::regclass, 'visited_sites_site_daily', 'site',
                 'total_visits', 'total_duration', 'visited_sites_daily')
             ) v (source, rollup, key, count_col, sum_col, daily)
             WHERE v.source = p_source LOOP
        FOR v_day IN SELECT DISTINCT time_bucket('1 day', bucket) FROM pg_temp.gs_touched ORDER BY 1 LOOP
            EXECUTE format(
                'DELETE FROM monitoring.%I
                  WHERE bucket = $1 AND organization_id IN (
                        SELECT organization_id FROM pg_temp.gs_touched WHERE bucket >= $1 AND bucket < $2)',
                r.rollup) USING v_day, v_day + interval '1 day';
            EXECUTE format(
                'INSERT INTO monitoring.%1$I (organization_id, %2$I, bucket, %3$I, %4$I)
                 SELECT organization_id, %2$I, bucket, sum(%3$I)::bigint, sum(%4$I)::bigint
                   FROM monitoring.%5$I
                  WHERE bucket = $1 AND organization_id IN (
                        SELECT organization_id FROM pg_temp.gs_touched WHERE bucket >= $1 AND bucket < $2)
                  GROUP BY 1, 2, 3',
                r.rollup, r.key, r.count_col, r.sum_col, r.daily) USING v_day, v_day + interval '1 day';
        END LOOP;
    END LOOP;
END
$$;

-- The refreshes (refresh_aggregates_incremental, refresh_dashboard_aggregates) call
-- rebuild_touched_aggregates: apache/011's becomes the base step, and the name now rebuilds
-- the rollups after it.
DO $$
BEGIN
    IF to_regprocedure('gatestream.rebuild_touched_base_aggregates(regclass, integer)') IS NULL THEN
        ALTER PROCEDURE gatestream.rebuild_touched_aggregates(regclass, integer) RENAME TO rebuild_touched_base_aggregates;
    END IF;
END $$;
CREATE OR REPLACE PROCEDURE gatestream.rebuild_touched_aggregates(p_source regclass, p_hourly_kept_days integer)
LANGUAGE plpgsql AS $$
BEGIN
    CALL gatestream.rebuild_touched_base_aggregates(p_source, p_hourly_kept_days);
    CALL gatestream.rebuild_touched_rollups(p_source);
END
$$;

-- apache/011's staleness, with the rollups (they move with their source's watermark).
CREATE OR REPLACE FUNCTION gatestream.dashboard_aggregate_staleness()
RETURNS TABLE (aggregate text, staleness_seconds double precision)
LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname || s.suffix),
           CASE WHEN isfinite(w.refreshed_through)
                THEN greatest(0, extract(epoch FROM now() - w.refreshed_through))::double precision
                ELSE 'Infinity'::double precision END
      FROM gatestream.aggregate_watermarks w
      JOIN pg_class c ON c.oid = w.source
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN (VALUES ('active_windows', '_hourly'), ('active_windows', '_daily'), ('active_windows', '_user_daily'),
                   ('active_windows', '_app_daily'), ('visited_sites', '_hourly'), ('visited_sites', '_daily'),
                   ('visited_sites', '_site_daily')) s (source, suffix)
        ON s.source = c.relname AND n.nspname = 'monitoring'
     ORDER BY 1
$$;
