"""Desired state: which jobs should exist, derived from monitoring.retention_policies.

The number of jobs grows with hypertables, never with organizations: per hypertable one
chunk-dropping job at the longest retention any organization has there, and one
row-deleting job that enforces every shorter retention (it reads the table when it
runs); with the Community edition also a compression job. Per dashboard aggregate a
retention job, and its refresh: a continuous aggregate policy per aggregate on the Community
edition, one pg_cron job per source hypertable on the Apache edition (it refreshes the hourly
and the daily aggregate of that source together). One presence sweep per database: it marks
gateways and agents silent past GATESTREAM_PRESENCE_OFFLINE_AFTER_S OFFLINE every minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg

from gatestream.consumers.policy import columnstore
from gatestream.edition import Edition
from gatestream.schemas import catalog_of
from gatestream.settings import PolicySettings


class JobKind(StrEnum):
    """What a reconciled job does."""

    RETENTION = "retention"  # drop whole chunks past the longest retention of the table
    ROW_RETENTION = "row-retention"  # delete each organization's expired rows
    COMPRESSION = "compression"  # Community edition
    CAGG_REFRESH = "cagg-refresh"  # Community edition: a continuous aggregate's refresh policy
    CAGG_RETENTION = "cagg-retention"  # a dashboard aggregate's retention (either edition)
    AGGREGATE_REFRESH = "aggregate-refresh"  # Apache edition: a source's aggregates, by watermark (pg_cron)
    PRESENCE_SWEEP = "presence-sweep"  # mark silent gateways and agents OFFLINE (either edition)


# The presence sweep's period: a minute, the shortest pg_cron 1.4 schedules (how late a
# silent gateway is marked OFFLINE past the threshold, at most).
PRESENCE_SWEEP_INTERVAL_S = 60
PRESENCE_TARGET = "monitoring.gateway_instances+agent_instances"  # what the sweep marks (not one relation)


@dataclass(frozen=True)
class DashboardAggregate:
    name: str  # the relation: a continuous aggregate (Community) or a hypertable (Apache)
    source: str  # the raw hypertable
    daily: bool  # else hourly


DASHBOARD_AGGREGATES = (
    DashboardAggregate("monitoring.active_windows_hourly", "monitoring.active_windows", daily=False),
    DashboardAggregate("monitoring.active_windows_daily", "monitoring.active_windows", daily=True),
    DashboardAggregate("monitoring.visited_sites_hourly", "monitoring.visited_sites", daily=False),
    DashboardAggregate("monitoring.visited_sites_daily", "monitoring.visited_sites", daily=True),
    # rollups of the daily ones (sql/tsl/021, sql/apache/021): what the organization-wide dashboards read
    DashboardAggregate("monitoring.active_windows_user_daily", "monitoring.active_windows", daily=True),
    DashboardAggregate("monitoring.active_windows_app_daily", "monitoring.active_windows", daily=True),
    DashboardAggregate("monitoring.visited_sites_site_daily", "monitoring.visited_sites", daily=True),
)


class PolicyError(Exception):
    """The policy table holds something that cannot be reconciled; nothing was executed."""


@dataclass(frozen=True)
class Resource:
    resource_type: str
    hypertable: str  # schema.table, from gatestream.retention_resources
    time_column: str


@dataclass(frozen=True)
class DesiredJob:
    key: str  # stable identity, e.g. "retention:monitoring.active_windows"
    kind: JobKind
    target: str  # the hypertable or continuous aggregate
    resource_type: str | None
    schedule_s: int
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind} on {self.target} every {self.schedule_s // 60} min ({p})"


@dataclass(frozen=True)
class ResourcePolicy:
    resource: Resource
    default_days: int
    max_days: int
    overrides: int  # organizations with their own retention
    shorter: int  # organizations whose retention is shorter than max_days


@dataclass
class DesiredState:
    jobs: dict[str, DesiredJob]
    policies: dict[str, ResourcePolicy]
    unavailable: list[str]


def load_resources(conn: psycopg.Connection[Any]) -> dict[str, Resource]:
    rows = conn.execute(
        "SELECT r.resource_type, r.hypertable::text, gatestream.time_column(r.hypertable) "
        "FROM gatestream.retention_resources r ORDER BY 1"
    ).fetchall()
    return {rt: Resource(rt, ht, tc) for rt, ht, tc in rows}


def _validate(conn: psycopg.Connection[Any], resources: dict[str, Resource]) -> None:
    """Refuse the whole table if any row names an unknown resource or a nonsense value."""
    bad = conn.execute(
        """SELECT id::text, organization_id, resource_type, retention_days, action
             FROM monitoring.retention_policies
            WHERE NOT (resource_type = ANY(%s)) OR retention_days IS NULL OR retention_days < 1
               OR retention_days > 36500 OR (organization_id IS NOT NULL AND organization_id < 1)
               OR action <> 'delete'
            LIMIT 10""",
        (list(resources),),
    ).fetchall()
    if bad:
        raise PolicyError(
            "retention_policies has rows that cannot be reconciled (nothing was executed): "
            + "; ".join(f"id={r[0]} org={r[1]!r} resource_type={r[2]!r} days={r[3]!r} action={r[4]!r}" for r in bad)
        )


def desired_state(conn: psycopg.Connection[Any], settings: PolicySettings, edition: str) -> DesiredState:
    resources = load_resources(conn)
    _validate(conn, resources)
    stats = {
        rt: (default, max_override, n, n_short)
        for rt, default, max_override, n, n_short in conn.execute(
            """WITH d AS (SELECT resource_type, retention_days FROM monitoring.retention_policies
                           WHERE organization_id IS NULL)
               SELECT r.resource_type, d.retention_days,
                      max(p.retention_days), count(p.id),
                      count(p.id) FILTER (WHERE p.retention_days < coalesce(d.retention_days, %s))
                 FROM gatestream.retention_resources r
                 LEFT JOIN d USING (resource_type)
                 LEFT JOIN monitoring.retention_policies p
                        ON p.resource_type = r.resource_type AND p.organization_id IS NOT NULL
                GROUP BY r.resource_type, d.retention_days""",
            (settings.default_retention_days,),
        ).fetchall()
    }
    tsl = edition == Edition.COMMUNITY
    keys = columnstore.key_columns(catalog_of(settings))
    jobs: dict[str, DesiredJob] = {}
    policies: dict[str, ResourcePolicy] = {}
    for rt, res in resources.items():
        default, max_override, n, n_short = stats.get(rt, (None, None, 0, 0))
        default_days = int(default or settings.default_retention_days)
        max_days = max(default_days, int(max_override or 0))
        shorter = int(n_short) + (0 if default_days == max_days else 1)
        policies[rt] = ResourcePolicy(res, default_days, max_days, int(n), shorter)
        ht = res.hypertable
        jobs[f"retention:{ht}"] = DesiredJob(
            f"retention:{ht}",
            JobKind.RETENTION,
            ht,
            rt,
            settings.chunk_retention_interval_s,
            {"drop_after_days": max_days},
        )
        jobs[f"row-retention:{ht}"] = DesiredJob(
            f"row-retention:{ht}", JobKind.ROW_RETENTION, ht, rt, settings.row_retention_interval_s,
            {"default_days": default_days},
        )  # fmt: skip
        if tsl:
            jobs[f"compression:{ht}"] = DesiredJob(
                f"compression:{ht}", JobKind.COMPRESSION, ht, rt, settings.compression_interval_s,
                {"compress_after_days": settings.compress_after_days, "segmentby": columnstore.SEGMENTBY,
                 "orderby": columnstore.orderby(res.time_column, keys.get(ht)),
                 "sparse_index": columnstore.SPARSE_INDEX},
            )  # fmt: skip
    jobs.update(_aggregate_jobs(settings, tsl))
    sweep = DesiredJob(
        f"{JobKind.PRESENCE_SWEEP}:{PRESENCE_TARGET}", JobKind.PRESENCE_SWEEP, PRESENCE_TARGET, None,
        PRESENCE_SWEEP_INTERVAL_S, {"offline_after_s": settings.presence_offline_after_s},
    )  # fmt: skip
    jobs[sweep.key] = sweep
    unavailable = []
    if not tsl:
        unavailable = [
            "compression (compress after "
            f"{settings.compress_after_days} days, segmentby organization_id): needs the TimescaleDB Community "
            "edition; this server runs the Apache edition",
        ]
    return DesiredState(jobs, policies, unavailable)


def _aggregate_jobs(settings: PolicySettings, tsl: bool) -> dict[str, DesiredJob]:
    """The dashboard aggregates' refresh and retention jobs."""
    jobs: dict[str, DesiredJob] = {}
    for agg in DASHBOARD_AGGREGATES:
        keep = settings.cagg_retention_days if agg.daily else settings.hourly_aggregate_retention_days
        jobs[f"cagg-retention:{agg.name}"] = DesiredJob(
            f"cagg-retention:{agg.name}", JobKind.CAGG_RETENTION, agg.name, None, 86400, {"drop_after_days": keep}
        )
        if tsl:
            jobs[f"cagg-refresh:{agg.name}"] = DesiredJob(
                f"cagg-refresh:{agg.name}", JobKind.CAGG_REFRESH, agg.name, None, settings.aggregate_refresh_interval_s,
                {"start_offset_days": settings.cagg_refresh_window_days, "end_offset_hours": 1},
            )  # fmt: skip
    if not tsl:
        for source in sorted({agg.source for agg in DASHBOARD_AGGREGATES}):
            jobs[f"aggregate-refresh:{source}"] = DesiredJob(
                f"aggregate-refresh:{source}", JobKind.AGGREGATE_REFRESH, source, None,
                settings.aggregate_refresh_interval_s,
                {"hourly_kept_days": settings.hourly_aggregate_retention_days},
            )  # fmt: skip
    return jobs
