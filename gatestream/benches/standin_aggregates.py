"""Stand-ins for the dashboard aggregates, for ``bench queries`` only, in its scratch database.

The aggregates (issue 23 §5: ``monitoring.{active_windows,visited_sites}_{hourly,daily}``
and ``CALL gatestream.refresh_dashboard_aggregates(window_start, window_end)``) come from
their own migrations. Where the scratch database has no such procedure (a tree without
them), the bench creates plain tables with the same columns, the indexes a continuous
aggregate gets by default (each grouping id with the bucket: (organization_id, bucket
DESC), (users_on_computers_id, bucket DESC)) and a refresh procedure that recomputes a window, so the
dashboard queries run as written. Never a migration: the real objects replace these.
"""

from __future__ import annotations

from typing import Any

import psycopg

STANDIN_SQL = """
CREATE TABLE monitoring.active_windows_hourly (
    organization_id integer NOT NULL, users_on_computers_id integer NOT NULL, process_name text,
    bucket timestamptz NOT NULL, total_windows bigint NOT NULL, total_active_time bigint);
CREATE TABLE monitoring.active_windows_daily (LIKE monitoring.active_windows_hourly);
CREATE TABLE monitoring.visited_sites_hourly (
    organization_id integer NOT NULL, users_on_computers_id integer NOT NULL, site text,
    bucket timestamptz NOT NULL, total_visits bigint NOT NULL, total_duration bigint);
CREATE TABLE monitoring.visited_sites_daily (LIKE monitoring.visited_sites_hourly);
CREATE INDEX ON monitoring.active_windows_hourly (organization_id, bucket DESC);
CREATE INDEX ON monitoring.active_windows_hourly (users_on_computers_id, bucket DESC);
CREATE INDEX ON monitoring.active_windows_daily (organization_id, bucket DESC);
CREATE INDEX ON monitoring.active_windows_daily (users_on_computers_id, bucket DESC);
CREATE INDEX ON monitoring.visited_sites_hourly (organization_id, bucket DESC);
CREATE INDEX ON monitoring.visited_sites_hourly (users_on_computers_id, bucket DESC);
CREATE INDEX ON monitoring.visited_sites_daily (organization_id, bucket DESC);
CREATE INDEX ON monitoring.visited_sites_daily (users_on_computers_id, bucket DESC);
CREATE PROCEDURE gatestream.refresh_dashboard_aggregates(window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM monitoring.active_windows_hourly WHERE bucket >= window_start AND bucket < window_end;
    INSERT INTO monitoring.active_windows_hourly
    SELECT organization_id, users_on_computers_id, process_name, time_bucket('1 hour', datetime),
           count(*), sum(active_time)
      FROM monitoring.active_windows WHERE datetime >= window_start AND datetime < window_end
     GROUP BY 1, 2, 3, 4;
    DELETE FROM monitoring.visited_sites_hourly WHERE bucket >= window_start AND bucket < window_end;
    INSERT INTO monitoring.visited_sites_hourly
    SELECT organization_id, users_on_computers_id,
           lower(coalesce(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)'), url)),
           time_bucket('1 hour', datetime), count(*), sum(duration)
      FROM monitoring.visited_sites WHERE datetime >= window_start AND datetime < window_end
     GROUP BY 1, 2, 3, 4;
    DELETE FROM monitoring.active_windows_daily
     WHERE bucket >= time_bucket('1 day', window_start) AND bucket < window_end;
    INSERT INTO monitoring.active_windows_daily
    SELECT organization_id, users_on_computers_id, process_name, time_bucket('1 day', bucket),
           sum(total_windows), sum(total_active_time)
      FROM monitoring.active_windows_hourly
     WHERE bucket >= time_bucket('1 day', window_start) AND bucket < window_end
     GROUP BY 1, 2, 3, 4;
    DELETE FROM monitoring.visited_sites_daily
     WHERE bucket >= time_bucket('1 day', window_start) AND bucket < window_end;
    INSERT INTO monitoring.visited_sites_daily
    SELECT organization_id, users_on_computers_id, site, time_bucket('1 day', bucket),
           sum(total_visits), sum(total_duration)
      FROM monitoring.visited_sites_hourly
     WHERE bucket >= time_bucket('1 day', window_start) AND bucket < window_end
     GROUP BY 1, 2, 3, 4;
END $$;
"""


def has_dashboard_aggregates(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT to_regprocedure('gatestream.refresh_dashboard_aggregates(timestamptz, timestamptz)') IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


def create_standins(conn: psycopg.Connection[Any]) -> list[str]:
    """Create the stand-ins where the real aggregates are missing; what was stood in (empty: none).
    The existing Community-edition ``active_windows_daily`` (an organization-per-day continuous
    aggregate without the user and application columns) is dropped first in that case."""
    if has_dashboard_aggregates(conn):
        return []
    conn.execute("DROP MATERIALIZED VIEW IF EXISTS monitoring.active_windows_daily")
    conn.execute(STANDIN_SQL)
    return [
        "monitoring.active_windows_hourly", "monitoring.active_windows_daily", "monitoring.visited_sites_hourly",
        "monitoring.visited_sites_daily", "gatestream.refresh_dashboard_aggregates",
    ]  # fmt: skip
