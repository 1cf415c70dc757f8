-- The exporter's scrape as its own login (issue 25) failed whole on the Community edition:
-- gatestream.dashboard_aggregate_staleness() reads each continuous aggregate's watermark, which
-- TimescaleDB allows only to a role that may SELECT the aggregate, and the exporter may not read
-- event data (nor aggregates of it). Every scrape ended in "permission denied for materialized
-- view active_windows_hourly" and gatestream_db_up 0. The function returns names and ages only;
-- it runs as the aggregates' owner (SECURITY DEFINER, a fixed search_path).
ALTER FUNCTION gatestream.dashboard_aggregate_staleness() OWNER TO gatestream_owner;
ALTER FUNCTION gatestream.dashboard_aggregate_staleness() SECURITY DEFINER;
ALTER FUNCTION gatestream.dashboard_aggregate_staleness() SET search_path = pg_catalog, pg_temp;
