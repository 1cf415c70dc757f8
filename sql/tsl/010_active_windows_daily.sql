-- Daily continuous aggregate of active windows (seed 000 §6). Needs the TimescaleDB
-- Community (TSL) edition; the policy consumer applies this file only there (the Apache
-- edition has no continuous aggregates) and reports it as unavailable otherwise.
CREATE MATERIALIZED VIEW IF NOT EXISTS monitoring.active_windows_daily
WITH (timescaledb.continuous) AS
SELECT organization_id,
       time_bucket('1 day', datetime) AS bucket,
       count(*)                       AS total_windows,
       sum(active_time)               AS total_active_time
  FROM monitoring.active_windows
 GROUP BY organization_id, bucket
WITH NO DATA;
