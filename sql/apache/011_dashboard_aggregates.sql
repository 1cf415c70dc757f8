-- The dashboards' aggregates on the Apache edition (no continuous aggregates there): hypertables
-- with the same names and columns as the Community edition's continuous aggregates
-- (sql/tsl/011), kept fresh by pg_cron jobs the policy consumer schedules.
--
-- Incremental by watermark. Every raw row has created_at = now() of the transaction that
-- inserted it; a refresh of a source (active_windows, visited_sites) takes the rows with
-- created_at in [watermark, cutoff), re-aggregates exactly the (organization, hour) groups
-- they fall in, and the (organization, day) groups of those hours, then moves the watermark
-- to the cutoff. A late event or a backfilled missing row lands in an old bucket with a new
-- created_at, so it is counted; a replay inserts nothing (dedupe by event_id) and changes
-- nothing. Re-aggregating (rather than adding deltas) keeps a bucket equal to a recompute from
-- its raw rows.
--
-- The cutoff is never later than the start of any transaction still open in this database: a
-- row becomes visible at its commit but carries its transaction's start time, so a cutoff
-- past the start of an uncommitted writer would step over rows that commit later. Such a
-- writer holds the watermark back until it ends (the staleness metric shows it). The role that
-- runs the refresh must see other sessions' transaction starts (superuser or
-- pg_read_all_stats), or the refresh refuses to run.
--
-- One refresh per source at a time: the watermark row is the lock. A scheduled run that finds
-- it taken leaves the work to the running one; refresh_dashboard_aggregates waits for it.

CREATE TABLE IF NOT EXISTS monitoring.active_windows_hourly (
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    process_name          text,
    bucket                timestamptz NOT NULL,
    total_windows         bigint      NOT NULL,
    total_active_time     bigint
);
CREATE TABLE IF NOT EXISTS monitoring.active_windows_daily (LIKE monitoring.active_windows_hourly);
CREATE TABLE IF NOT EXISTS monitoring.visited_sites_hourly (
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    site                  text,
    bucket                timestamptz NOT NULL,
    total_visits          bigint      NOT NULL,
    total_duration        bigint
);
CREATE TABLE IF NOT EXISTS monitoring.visited_sites_daily (LIKE monitoring.visited_sites_hourly);

-- Hypertables, so that retention drops whole chunks (gatestream.drop_expired_chunks), as
-- TimescaleDB's retention policies do on the Community edition's continuous aggregates.
SELECT create_hypertable('monitoring.active_windows_hourly', 'bucket',
    chunk_time_interval => interval '7 days', if_not_exists => true);
SELECT create_hypertable('monitoring.active_windows_daily', 'bucket',
    chunk_time_interval => interval '30 days', if_not_exists => true);
SELECT create_hypertable('monitoring.visited_sites_hourly', 'bucket',
    chunk_time_interval => interval '7 days', if_not_exists => true);
SELECT create_hypertable('monitoring.visited_sites_daily', 'bucket',
    chunk_time_interval => interval '30 days', if_not_exists => true);
CREATE UNIQUE INDEX IF NOT EXISTS active_windows_hourly_key
    ON monitoring.active_windows_hourly (organization_id, bucket, users_on_computers_id, process_name) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX IF NOT EXISTS active_windows_daily_key
    ON monitoring.active_windows_daily (organization_id, bucket, users_on_computers_id, process_name) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX IF NOT EXISTS visited_sites_hourly_key
    ON monitoring.visited_sites_hourly (organization_id, bucket, users_on_computers_id, site) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX IF NOT EXISTS visited_sites_daily_key
    ON monitoring.visited_sites_daily (organization_id, bucket, users_on_computers_id, site) NULLS NOT DISTINCT;

-- Finding the rows past the watermark: created_at follows the insertion order, so a BRIN
-- index (a few pages per chunk, next to nothing per insert) narrows the scan to the newest
-- pages of each chunk.
CREATE INDEX IF NOT EXISTS active_windows_created_at_brin ON monitoring.active_windows USING brin (created_at);
CREATE INDEX IF NOT EXISTS visited_sites_created_at_brin ON monitoring.visited_sites USING brin (created_at);

-- Per source: up to where (created_at) its rows are in the aggregates. '-infinity' = never
-- refreshed: the first run takes every row already there.
CREATE TABLE IF NOT EXISTS gatestream.aggregate_watermarks (
    source            regclass    PRIMARY KEY,
    refreshed_through timestamptz NOT NULL DEFAULT '-infinity',
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO gatestream.aggregate_watermarks (source)
VALUES ('monitoring.active_windows'), ('monitoring.visited_sites')
ON CONFLICT (source) DO NOTHING;

-- Rebuild the aggregates of the (organization, hour) groups in pg_temp.gs_touched: the hourly
-- ones from the raw rows, then the daily ones of those days. A day that may have lost hours to
-- the hourly aggregate's retention (older than p_hourly_kept_days) is summed from the raw
-- rows; NULL: every day from the hourly rows (the caller rebuilt all of its hours). One day
-- at a time, its bounds as constants, so that each statement reads only that day's chunks.
CREATE OR REPLACE PROCEDURE gatestream.rebuild_touched_aggregates(p_source regclass, p_hourly_kept_days integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_schema   name;
    v_table    name;
    v_key      text;
    v_key_expr text;
    v_count    text;
    v_sum      text;
    v_sum_expr text;
    v_hourly   text;
    v_daily    text;
    v_horizon  timestamptz;
    v_day      timestamptz;
BEGIN
    SELECT n.nspname, c.relname INTO v_schema, v_table
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_source;
    IF v_schema = 'monitoring' AND v_table = 'active_windows' THEN
        v_key := 'process_name'; v_key_expr := 'a.process_name';
        v_count := 'total_windows'; v_sum := 'total_active_time'; v_sum_expr := 'a.active_time';
    ELSIF v_schema = 'monitoring' AND v_table = 'visited_sites' THEN
        v_key := 'site'; v_key_expr := 'gatestream.url_site(a.url)';
        v_count := 'total_visits'; v_sum := 'total_duration'; v_sum_expr := 'a.duration';
    ELSE
        RAISE EXCEPTION '% has no dashboard aggregates', p_source;
    END IF;
    v_hourly := format('%I.%I', v_schema, v_table || '_hourly');
    v_daily := format('%I.%I', v_schema, v_table || '_daily');
    v_horizon := CASE WHEN p_hourly_kept_days IS NULL THEN '-infinity'
                      ELSE now() - make_interval(days => p_hourly_kept_days) END;
    CREATE INDEX ON pg_temp.gs_touched (bucket);
    ANALYZE pg_temp.gs_touched;
    FOR v_day IN SELECT DISTINCT time_bucket('1 day', bucket) FROM pg_temp.gs_touched ORDER BY 1 LOOP
        EXECUTE format(
            'DELETE FROM %s h USING pg_temp.gs_touched t
              WHERE h.bucket >= $1 AND h.bucket < $2 AND t.bucket >= $1 AND t.bucket < $2
                AND h.organization_id = t.organization_id AND h.bucket = t.bucket',
            v_hourly) USING v_day, v_day + interval '1 day';
        EXECUTE format(
            'INSERT INTO %1$s (organization_id, users_on_computers_id, %2$I, bucket, %3$I, %4$I)
             SELECT a.organization_id, a.users_on_computers_id, %5$s, t.bucket, count(*), sum(%6$s)
               FROM pg_temp.gs_touched t
               JOIN %7$s a ON a.organization_id = t.organization_id
                          AND a.datetime >= t.bucket AND a.datetime < t.bucket + interval ''1 hour''
              WHERE t.bucket >= $1 AND t.bucket < $2 AND a.datetime >= $1 AND a.datetime < $2
              GROUP BY 1, 2, 3, 4',
            v_hourly, v_key, v_count, v_sum, v_key_expr, v_sum_expr, p_source) USING v_day, v_day + interval '1 day';
        EXECUTE format(
            'DELETE FROM %s d
              WHERE d.bucket = $1 AND d.organization_id IN (
                    SELECT organization_id FROM pg_temp.gs_touched WHERE bucket >= $1 AND bucket < $2)',
            v_daily) USING v_day, v_day + interval '1 day';
        IF v_day >= v_horizon THEN
            EXECUTE format(
                'INSERT INTO %1$s (organization_id, users_on_computers_id, %2$I, bucket, %3$I, %4$I)
                 SELECT h.organization_id, h.users_on_computers_id, h.%2$I, $1, sum(h.%3$I)::bigint, sum(h.%4$I)::bigint
                   FROM %5$s h
                  WHERE h.bucket >= $1 AND h.bucket < $2 AND h.organization_id IN (
                        SELECT organization_id FROM pg_temp.gs_touched WHERE bucket >= $1 AND bucket < $2)
                  GROUP BY 1, 2, 3',
                v_daily, v_key, v_count, v_sum, v_hourly) USING v_day, v_day + interval '1 day';
        ELSE
            EXECUTE format(
                'INSERT INTO %1$s (organization_id, users_on_computers_id, %2$I, bucket, %3$I, %4$I)
                 SELECT a.organization_id, a.users_on_computers_id, %5$s, $1, count(*), sum(%6$s)
                   FROM %7$s a
                  WHERE a.datetime >= $1 AND a.datetime < $2 AND a.organization_id IN (
                        SELECT organization_id FROM pg_temp.gs_touched WHERE bucket >= $1 AND bucket < $2)
                  GROUP BY 1, 2, 3',
                v_daily, v_key, v_count, v_sum, v_key_expr, v_sum_expr, p_source) USING v_day, v_day + interval '1 day';
        END IF;
    END LOOP;
END
$$;

-- What the pg_cron job runs: fold the rows inserted since the watermark into the aggregates.
CREATE OR REPLACE PROCEDURE gatestream.refresh_aggregates_incremental(p_source regclass, p_hourly_kept_days integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_from   timestamptz;
    v_to     timestamptz;
    v_oldest timestamptz;
    v_hidden bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gatestream.aggregate_watermarks WHERE source = p_source) THEN
        RAISE EXCEPTION '% has no dashboard aggregates', p_source;
    END IF;
    SELECT refreshed_through INTO v_from FROM gatestream.aggregate_watermarks WHERE source = p_source
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RAISE NOTICE 'another refresh of % is running: this run leaves the work to it', p_source;
        RETURN;
    END IF;
    -- the clock first, then the open transactions (a transaction that started before this
    -- clock reading and is still open is among them); the second keeps clear of a writer that
    -- has taken its start time but not yet published it
    v_to := clock_timestamp() - interval '1 second';
    PERFORM pg_stat_clear_snapshot();
    SELECT min(xact_start), count(*) FILTER (WHERE query = '<insufficient privilege>')
      INTO v_oldest, v_hidden
      FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type <> 'autovacuum worker';
    IF v_hidden > 0 THEN
        RAISE EXCEPTION 'role % cannot see when other sessions'' transactions started (grant it pg_read_all_stats): '
                        'the aggregates of % are not refreshed', current_user, p_source;
    END IF;
    v_to := least(v_to, coalesce(v_oldest, v_to));
    IF v_to <= v_from THEN
        RETURN;
    END IF;
    IF to_regclass('pg_temp.gs_touched') IS NOT NULL THEN DROP TABLE pg_temp.gs_touched; END IF;
    CREATE TEMP TABLE gs_touched (organization_id integer, bucket timestamptz);
    EXECUTE format('INSERT INTO pg_temp.gs_touched
                    SELECT DISTINCT organization_id, time_bucket(''1 hour'', datetime) FROM %s
                     WHERE created_at >= $1 AND created_at < $2', p_source) USING v_from, v_to;
    CALL gatestream.rebuild_touched_aggregates(p_source, p_hourly_kept_days);
    DROP TABLE pg_temp.gs_touched;
    UPDATE gatestream.aggregate_watermarks SET refreshed_through = v_to, updated_at = now() WHERE source = p_source;
END
$$;

-- The contract's procedure: every bucket of the whole UTC days the window touches, rebuilt from
-- the raw rows (NULL = unbounded), whatever the watermark says (rows loaded with an explicit
-- created_at, as a bulk load may). Call it outside a transaction block (it commits per source,
-- as the Community edition's refresh_continuous_aggregate needs).
CREATE OR REPLACE PROCEDURE gatestream.refresh_dashboard_aggregates(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_start  timestamptz := coalesce(time_bucket('1 day', window_start), '-infinity');
    v_end    timestamptz := coalesce(time_bucket('1 day', window_end - interval '1 microsecond') + interval '1 day',
                                     'infinity');
    v_source regclass;
    v_name   text;
BEGIN
    FOR v_source IN SELECT source FROM gatestream.aggregate_watermarks ORDER BY source::text LOOP
        PERFORM 1 FROM gatestream.aggregate_watermarks WHERE source = v_source FOR UPDATE;  -- after a running refresh
        SELECT format('%I.%I', n.nspname, c.relname) INTO v_name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_source;
        IF to_regclass('pg_temp.gs_touched') IS NOT NULL THEN DROP TABLE pg_temp.gs_touched; END IF;
        CREATE TEMP TABLE gs_touched (organization_id integer, bucket timestamptz);
        -- every (organization, hour) with raw rows or aggregate rows in the window: a group whose
        -- rows are gone (retention) is removed, as a continuous aggregate's refresh does
        EXECUTE format(
            'INSERT INTO pg_temp.gs_touched
             SELECT organization_id, time_bucket(''1 hour'', datetime) FROM %1$s WHERE datetime >= $1 AND datetime < $2
              UNION SELECT organization_id, bucket FROM %2$s WHERE bucket >= $1 AND bucket < $2
              UNION SELECT organization_id, bucket FROM %3$s WHERE bucket >= $1 AND bucket < $2',
            v_source, v_name || '_hourly', v_name || '_daily') USING v_start, v_end;
        CALL gatestream.rebuild_touched_aggregates(v_source, NULL);
        DROP TABLE pg_temp.gs_touched;
        COMMIT;
    END LOOP;
END
$$;

-- Per aggregate, how long ago its watermark is: how old the newest rows may be that it does not
-- count yet (Infinity: never refreshed). Exported as gatestream_db_aggregate_staleness_seconds.
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
     CROSS JOIN (VALUES ('_hourly'), ('_daily')) s (suffix)
     ORDER BY 1
$$;
