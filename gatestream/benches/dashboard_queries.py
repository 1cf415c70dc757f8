"""The dashboard queries the product runs, by name: the one place their SQL lives.

They read the aggregates of issue 23 §5 where the raw rows are too many (same relations
and columns on both TimescaleDB editions): the rollups of the daily aggregates per
organization and day (sql/tsl/021, sql/apache/021) —
``monitoring.active_windows_user_daily`` (organization_id, users_on_computers_id, bucket,
total_windows, total_active_time), ``monitoring.active_windows_app_daily``
(organization_id, process_name, bucket, ...) and ``monitoring.visited_sites_site_daily``
(organization_id, site, bucket, total_visits, total_duration) — and the raw hypertables
where one device's or one gateway's rows are few (sql/020_dashboard_indexes.sql gives them
their index).

Parameters (psycopg named): ``org``, ``start``/``end`` (a half-open time range),
``user`` (users_on_computers_id), ``users`` (a page of them, at most ``PAGE_USERS``),
``day`` (midnight UTC of the day shown).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class DashboardQuery:
    name: str
    title: str
    sql: str
    window: timedelta | None = None  # the [start, end) range the query reads, ending at the newest data
    params: tuple[str, ...] = ("org",)
    reader_sql: str | None = None  # gatestream_reader's own form, where its views need one (else sql on reader.*)


PAGE_USERS = 100
# A page of users (the product lists an organization's users from its own table, PAGE_USERS at a time):
# the largest organization has thousands of users, and all of them over 30 days is hundreds of
# thousands of rows, more than a screen shows and more than 100 ms can return.
_PER_USER_DAILY = """
SELECT bucket AS day, users_on_computers_id, total_active_time AS active_time_s
  FROM monitoring.active_windows_user_daily
 WHERE organization_id = %(org)s AND users_on_computers_id = ANY(%(users)s)
   AND bucket >= %(start)s AND bucket < %(end)s
 ORDER BY day, users_on_computers_id"""

QUERIES: tuple[DashboardQuery, ...] = (
    DashboardQuery(
        "per_user_daily_7d", "one organization's active time per user and day, 7 days (a page of users)",
        _PER_USER_DAILY, timedelta(days=7), ("org", "users", "start", "end"),
    ),
    DashboardQuery(
        "per_user_daily_30d", "one organization's active time per user and day, 30 days (a page of users)",
        _PER_USER_DAILY, timedelta(days=30), ("org", "users", "start", "end"),
    ),
    DashboardQuery(
        "top_apps_7d", "one organization's top 10 applications, 7 days",
        """
SELECT process_name, sum(total_active_time) AS active_time_s, sum(total_windows) AS windows
  FROM monitoring.active_windows_app_daily
 WHERE organization_id = %(org)s AND bucket >= %(start)s AND bucket < %(end)s
 GROUP BY process_name
 ORDER BY active_time_s DESC NULLS LAST, process_name
 LIMIT 10""",
        timedelta(days=7), ("org", "start", "end"),
    ),
    DashboardQuery(
        "top_sites_7d", "one organization's top 10 sites, 7 days",
        """
SELECT site, sum(total_duration) AS duration_s, sum(total_visits) AS visits
  FROM monitoring.visited_sites_site_daily
 WHERE organization_id = %(org)s AND bucket >= %(start)s AND bucket < %(end)s
 GROUP BY site
 ORDER BY duration_s DESC NULLS LAST, site
 LIMIT 10""",
        timedelta(days=7), ("org", "start", "end"),
    ),
    DashboardQuery(
        "user_timeline_1d", "one user's timeline of one day (windows and sites)",
        """
SELECT datetime, 'window' AS kind, process_name AS what, title, active_time AS seconds
  FROM monitoring.active_windows
 WHERE users_on_computers_id = %(user)s AND organization_id = %(org)s
   AND datetime >= %(day)s AND datetime < %(day)s + interval '1 day'
UNION ALL
SELECT datetime, 'site', url, title, duration
  FROM monitoring.visited_sites
 WHERE users_on_computers_id = %(user)s AND organization_id = %(org)s
   AND datetime >= %(day)s AND datetime < %(day)s + interval '1 day'
 ORDER BY datetime""",
        None, ("org", "user", "day"),
    ),
    DashboardQuery(
        "gateways_latest", "latest status of every gateway of one organization",
        """
SELECT g.id, g.name, s."timestamp", s.cpu_usage, s.disk_usage, s.memory_usage, s.queue_depth, s.connected_agents
  FROM monitoring.gateway_instances g
  LEFT JOIN LATERAL (
        SELECT * FROM monitoring.gateway_status_snapshots s
         WHERE s.gateway_id = g.id AND s.organization_id = g.organization_id
         ORDER BY s."timestamp" DESC
         LIMIT 1) s ON true
 WHERE g.organization_id = %(org)s
 ORDER BY g.name""",
        reader_sql="""
SELECT id, name, "timestamp", cpu_usage, disk_usage, memory_usage, queue_depth, connected_agents
  FROM reader.gateways_latest
 WHERE organization_id = %(org)s
 ORDER BY name""",
    ),
    DashboardQuery(
        "daily_90d", "one organization's daily totals (the daily aggregate), 90 days",
        """
SELECT bucket AS day, sum(total_active_time) AS active_time_s, sum(total_windows) AS windows
  FROM monitoring.active_windows_app_daily
 WHERE organization_id = %(org)s AND bucket >= %(start)s AND bucket < %(end)s
 GROUP BY bucket
 ORDER BY bucket""",
        timedelta(days=90), ("org", "start", "end"),
    ),
)  # fmt: skip

BY_NAME = {q.name: q for q in QUERIES}


def as_reader(q: DashboardQuery) -> DashboardQuery:
    """``q`` as gatestream_reader runs it: through its views (sql/051, schema reader: the same
    names, limited to the organization of the transaction's gatestream.organization_id), or
    its own form where the views need one (gateways_latest: reader.gateways_latest, sql/056)."""
    return DashboardQuery(q.name, q.title, q.reader_sql or q.sql.replace("monitoring.", "reader."), q.window, q.params)
