-- The dashboards read one page of users from the daily aggregates (issue 23 §4:
-- gatestream/benches/dashboard_queries.py, per_user_daily_*): by device and day. The
-- Community edition's continuous aggregates have an index per grouping column with the
-- bucket by default; the Apache edition's tables (apache/011) only their unique key,
-- which leads with the organization, so a page of users would scan the whole
-- organization's days.
CREATE INDEX IF NOT EXISTS active_windows_daily_device_idx
    ON monitoring.active_windows_daily (users_on_computers_id, bucket DESC);
CREATE INDEX IF NOT EXISTS visited_sites_daily_device_idx
    ON monitoring.visited_sites_daily (users_on_computers_id, bucket DESC);
