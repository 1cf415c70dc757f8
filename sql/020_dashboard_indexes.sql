-- The dashboards' raw reads (issue 23 §4): one user's timeline of one day reads
-- active_windows and visited_sites by device and time. Without this index it walks the
-- whole organization's rows of that day ((organization_id, datetime) index) and filters
-- the device: tens of thousands of rows for a large organization at 10M rows, ten times
-- that at 100M. The gateways' latest status uses gateway_status_snapshots
-- (gateway_id, "timestamp" DESC) from 004; the other dashboards read the aggregates.
CREATE INDEX IF NOT EXISTS active_windows_device_time_idx
    ON monitoring.active_windows (users_on_computers_id, datetime DESC);
CREATE INDEX IF NOT EXISTS visited_sites_device_time_idx
    ON monitoring.visited_sites (users_on_computers_id, datetime DESC);
