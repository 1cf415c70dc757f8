"""Database-side metrics: a Prometheus collector that asks TimescaleDB on each scrape.

Per hypertable: row estimate, chunk count, size, size before/after compression and the
ratio, the age of the oldest chunk's end and the retention lag (how far the oldest chunk
is past the longest retention any organization has there, from
monitoring.retention_policies: chunks are dropped at that age); the jobs' last run and
failures — TimescaleDB's jobs, or pg_cron's on the Apache edition; each dashboard
aggregate's staleness (sql/*/011: its watermark's age, either edition); the database's size
and, where the data folder is on this host, its disk usage; gateways and agents per state
(``gatestream_gateways{state}``, ``gatestream_agents{state}``, ``gatestream_gateways_silent``).
Features the Apache edition lacks (compression stats) are reported as absent, not zero.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql

from gatestream.database import DatabaseSettingError, connect_once, limited
from gatestream.edition import timescaledb_edition, timescaledb_has
from gatestream.fleet import state_counts

log = structlog.get_logger("gatestream.dbmetrics")

SCRAPE_TIMEOUT_S = 20

DEFAULT_RETENTION_DAYS = 365


_CRON_JOBS = """SELECT j.jobid, j.jobname,
          (SELECT d.status FROM cron.job_run_details d
            WHERE d.jobid = j.jobid AND d.status IN ('succeeded', 'failed')
            ORDER BY d.runid DESC LIMIT 1),
          (SELECT count(*) FROM cron.job_run_details d
            WHERE d.jobid = j.jobid AND d.status = 'failed')
     FROM cron.job j
    WHERE j.database = %s AND starts_with(j.jobname, 'gatestream:')"""


def _job_families(prefix: str, what: str, name_label: str) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
    """A job's last-run success and failure count, labelled by its id and name."""
    labels = ["job_id", name_label]
    ok = GaugeMetricFamily(
        f"{prefix}_last_run_success", f"1 if the {what}'s last finished run succeeded, 0 if it failed.", labels=labels
    )
    return ok, CounterMetricFamily(f"{prefix}_failures", f"Failed runs of the {what}.", labels=labels)


def longest_retention_days(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Per hypertable name, the longest retention any organization has there: the type's
    default row (else DEFAULT_RETENTION_DAYS) or a longer per-organization policy."""
    try:
        with conn.transaction():
            rows = conn.execute(
                """SELECT r.resource_type,
                          greatest(coalesce(max(p.retention_days) FILTER (WHERE p.organization_id IS NULL), %s),
                                   coalesce(max(p.retention_days) FILTER (WHERE p.organization_id IS NOT NULL), 0))
                     FROM gatestream.retention_resources r
                     LEFT JOIN monitoring.retention_policies p USING (resource_type)
                    GROUP BY r.resource_type""",
                (DEFAULT_RETENTION_DAYS,),
            ).fetchall()
    except psycopg.Error:
        return {}  # an older schema: the default applies
    return {str(t): int(d) for t, d in rows}


class DatabaseCollector(Collector):
    """Collects on scrape, at most every ``min_interval_s`` (older answers are reused)."""

    def __init__(
        self,
        database_url: str,
        *,
        schema: str = "monitoring",
        retention_days: Callable[[psycopg.Connection[Any]], dict[str, int]] | None = None,
        min_interval_s: float = 10.0,
        offline_after_s: float = 300.0,
    ) -> None:
        self.database_url = database_url
        self.offline_after_s = offline_after_s
        self.schema = schema
        self.retention_days = retention_days or longest_retention_days
        self.min_interval_s = min_interval_s
        self._cache: list[Metric] = []
        self._cached_at = 0.0

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        if not self._cache or now - self._cached_at >= self.min_interval_s:
            self._cache = self._collect_now()
            self._cached_at = now
        yield from self._cache

    def _collect_now(self) -> list[Metric]:
        up = GaugeMetricFamily("gatestream_db_up", "1 if the database answered the last scrape.")
        try:
            # a scrape never hangs: the server cancels a slow statement, a hung server is cut off
            with connect_once(self.database_url) as conn:
                with limited(conn, SCRAPE_TIMEOUT_S):
                    metrics = self._gather(conn)
            up.add_metric([], 1)
            return [up, *metrics]
        except (psycopg.Error, DatabaseSettingError) as exc:
            log.warning("database metrics unavailable", error=str(exc).strip())
            up.add_metric([], 0)
            return [up]

    def _gather(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        out: list[Metric] = []
        edition = timescaledb_edition(conn)
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        version = row[0] if row else "unknown"
        info = GaugeMetricFamily(
            "gatestream_db_timescaledb_info", "TimescaleDB edition and version.", labels=["edition", "version"]
        )
        info.add_metric([str(edition), str(version)], 1)
        out.append(info)

        staleness, aggregates = self._aggregates(conn)
        # the Apache edition's aggregates are hypertables in this schema: reported as aggregates,
        # not as event tables (whose retention lag assumes the events' retention)
        hypertables = [r[0] for r in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = %s "
            "ORDER BY 1", (self.schema,)).fetchall() if f"{self.schema}.{r[0]}" not in aggregates]  # fmt: skip
        names = {h: f"{self.schema}.{h}" for h in hypertables}
        rows = GaugeMetricFamily("gatestream_db_hypertable_rows_estimate", "Approximate rows.", labels=["hypertable"])
        size = GaugeMetricFamily(
            "gatestream_db_hypertable_size_bytes", "Total size (table, indexes, toast).", labels=["hypertable"]
        )
        for q in names.values():
            est, total = conn.execute(
                "SELECT approximate_row_count(%s::regclass), hypertable_size(%s::regclass)", (q, q)
            ).fetchone() or (0, 0)
            rows.add_metric([q], float(est or 0))
            size.add_metric([q], float(total or 0))
        out += [rows, size]

        chunks = GaugeMetricFamily("gatestream_db_hypertable_chunks", "Chunks.", labels=["hypertable"])
        compressed = GaugeMetricFamily(
            "gatestream_db_hypertable_compressed_chunks", "Compressed chunks.", labels=["hypertable"]
        )
        oldest = GaugeMetricFamily(
            "gatestream_db_hypertable_oldest_chunk_age_seconds",
            "Age of the end of the oldest chunk's time range.",
            labels=["hypertable"],
        )
        lag = GaugeMetricFamily(
            "gatestream_db_hypertable_retention_lag_seconds",
            "How far the oldest chunk is past the longest retention it should have (0 = on time).",
            labels=["hypertable"],
        )
        retention = self.retention_days(conn)
        for h, n, nc, start_age, end_age in conn.execute(
            """SELECT hypertable_name, count(*), count(*) FILTER (WHERE is_compressed),
                      extract(epoch FROM now() - min(range_start)), extract(epoch FROM now() - min(range_end))
                 FROM timescaledb_information.chunks WHERE hypertable_schema = %s GROUP BY 1""",
            (self.schema,),
        ).fetchall():
            if h not in names:
                continue  # an aggregate
            q = names[h]
            chunks.add_metric([q], n)
            compressed.add_metric([q], nc)
            if start_age is not None and end_age is not None:
                oldest.add_metric([q], max(0.0, float(end_age)))
                # a chunk can go once its whole range is past retention: measure from its end
                keep = retention.get(h, DEFAULT_RETENTION_DAYS) * 86400
                lag.add_metric([q], max(0.0, float(end_age) - keep))
        out += [chunks, compressed, oldest, lag]
        if staleness is not None:
            out.append(staleness)
        out += self._compression(conn, names)
        out += self._jobs(conn)
        out += self._cron_jobs(conn)
        out += self._disk(conn)
        out += self._slots(conn)
        out += self._fleet(conn)
        return out

    def _slots(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        """This database's replication slots (Debezium's, see gatestream.cdc): the WAL each one pins
        on the server's disk while its reader is behind or away, and whether a reader is attached."""
        retained = GaugeMetricFamily(
            "gatestream_db_replication_slot_retained_bytes",
            "WAL the server keeps for the slot (current WAL position - the slot's restart_lsn); grows while "
            "its reader (Kafka Connect) is down, bounded by max_slot_wal_keep_size.",
            labels=["slot"],
        )
        active = GaugeMetricFamily(
            "gatestream_db_replication_slot_active", "1 if a reader is attached to the slot.", labels=["slot"]
        )
        safe = GaugeMetricFamily(
            "gatestream_db_replication_slot_safe_wal_bytes",
            "WAL that can still be written before the slot is invalidated by max_slot_wal_keep_size "
            "(absent when unlimited); at 0 the slot is lost and its reader must start over from a snapshot.",
            labels=["slot"],
        )
        try:
            with conn.transaction():
                rows = conn.execute(
                    """SELECT slot_name,
                              pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                                   ELSE pg_current_wal_lsn() END, restart_lsn),
                              active, safe_wal_size
                         FROM pg_replication_slots WHERE database = current_database() ORDER BY 1"""
                ).fetchall()
        except psycopg.Error as exc:  # not allowed to read the WAL position: no slot metrics
            log.info("replication slot metrics unavailable", error=str(exc).strip()[:200])
            rows = []
        for name, pinned, is_active, safe_size in rows:
            if pinned is not None:
                retained.add_metric([str(name)], float(pinned))
            active.add_metric([str(name)], 1.0 if is_active else 0.0)
            if safe_size is not None:
                safe.add_metric([str(name)], max(0.0, float(safe_size)))
        return [retained, active, safe]

    def _fleet(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        """Gateways and agents per state (gatestream.fleet): aggregates only, no per-gateway
        or per-organization label (organizations are unbounded); absent before sql/030."""
        try:
            with conn.transaction():
                counts = state_counts(conn, self.offline_after_s)
        except psycopg.Error:
            return []
        out: list[Metric] = []
        for kind in ("gateways", "agents"):
            family = GaugeMetricFamily(
                f"gatestream_{kind}", f"{kind.capitalize()} per state (ingest's presence tracking).", labels=["state"]
            )
            for state, n in counts[kind].items():
                family.add_metric([state], n)
            out.append(family)
        silent = GaugeMetricFamily(
            "gatestream_gateways_silent",
            "Gateways whose last event is older than GATESTREAM_PRESENCE_OFFLINE_AFTER_S, swept or not.",
        )
        silent.add_metric([], counts["silent_gateways"])
        threshold = GaugeMetricFamily(
            "gatestream_presence_offline_after_seconds", "The silence after which a gateway or agent is OFFLINE."
        )
        threshold.add_metric([], self.offline_after_s)
        return [*out, silent, threshold]

    def _aggregates(self, conn: psycopg.Connection[Any]) -> tuple[GaugeMetricFamily | None, set[str]]:
        """Each dashboard aggregate's staleness, from the edition's own definition of it
        (gatestream.dashboard_aggregate_staleness: the age of its watermark; +Inf before its
        first refresh); None where the database predates the aggregates."""
        try:
            with conn.transaction():
                rows = conn.execute("SELECT * FROM gatestream.dashboard_aggregate_staleness()").fetchall()
        except psycopg.errors.UndefinedFunction:
            return None, set()
        family = GaugeMetricFamily(
            "gatestream_db_aggregate_staleness_seconds",
            "How far behind now a dashboard aggregate is known complete: the age of its watermark "
            "(Community: the end of its newest materialized bucket; Apache: up to where its rows were folded in).",
            labels=["aggregate"],
        )
        for name, seconds in rows:
            family.add_metric([str(name)], float(seconds))
        return family, {str(r[0]) for r in rows}

    def _compression(self, conn: psycopg.Connection[Any], names: dict[str, str]) -> list[Metric]:
        before = GaugeMetricFamily(
            "gatestream_db_hypertable_before_compression_bytes",
            "Size of the compressed chunks before compression.",
            labels=["hypertable"],
        )
        after = GaugeMetricFamily(
            "gatestream_db_hypertable_after_compression_bytes",
            "Size of the compressed chunks after compression.",
            labels=["hypertable"],
        )
        ratio = GaugeMetricFamily(
            "gatestream_db_hypertable_compression_ratio",
            "Before / after compression, over the compressed chunks.",
            labels=["hypertable"],
        )
        # the columnstore name since 2.18 (the compression one before; both have these columns)
        stats = sql.Identifier(
            "hypertable_columnstore_stats"
            if timescaledb_has(conn, "hypertable_columnstore_stats")
            else "hypertable_compression_stats"
        )
        for q in names.values():
            try:
                with conn.transaction():
                    row = conn.execute(
                        sql.SQL("SELECT sum(before_compression_total_bytes), sum(after_compression_total_bytes) "
                                "FROM {}(%s::regclass)").format(stats), (q,)).fetchone()  # fmt: skip
            except psycopg.Error:
                return []  # not in this edition: absent, not zero
            if row and row[0] and row[1]:
                before.add_metric([q], float(row[0]))
                after.add_metric([q], float(row[1]))
                ratio.add_metric([q], float(row[0]) / float(row[1]))
        return [before, after, ratio]

    def _jobs(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        ok, failures = _job_families("gatestream_db_job", "job", "proc")
        for job_id, proc, status, fails in conn.execute(
            # ids below 1000 are TimescaleDB's own jobs (telemetry, job-history retention, which
            # fails by design on the Apache edition): not ours to alert on
            """SELECT j.job_id, j.proc_name, s.last_run_status, s.total_failures
                 FROM timescaledb_information.jobs j
                 LEFT JOIN timescaledb_information.job_stats s USING (job_id)
                WHERE j.job_id >= 1000"""
        ).fetchall():
            labels = [str(job_id), str(proc)]
            if status is not None:
                ok.add_metric(labels, 1 if status == "Success" else 0)
            failures.add_metric(labels, float(fails or 0))
        return [ok, failures]

    def _cron_jobs(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        """pg_cron's runs of our jobs (the Apache edition's job engine), when pg_cron lives in
        this database: the same two metrics, labelled with the cron job's id and name."""
        ok, failures = _job_families("gatestream_db_cron_job", "pg_cron job", "job")
        try:
            with conn.transaction():
                row = conn.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
            if row is None or not row[0]:
                return []  # pg_cron is not loaded: TimescaleDB's own jobs (above) are the engine
            cron_db, here = str(row[0]), str(row[1])
            # in a transaction of its own (a savepoint on conn, inside the scrape's): a failure here spoils nothing else
            with (
                contextlib.nullcontext(conn) if cron_db == here
                else connect_once(psycopg.conninfo.make_conninfo(self.database_url, dbname=cron_db))
            ) as cron, cron.transaction():  # fmt: skip
                # through sql/061's function where pg_cron's database is a gatestream one (row
                # security hides the policy consumer's jobs from the exporter's login); else as
                # an admin's scrape reads them
                has = cron.execute("SELECT to_regprocedure('gatestream.cron_job_stats(text)') IS NOT NULL").fetchone()
                query = (
                    "SELECT jobid, jobname, last_status, failures FROM gatestream.cron_job_stats(%s)"
                    if has and has[0] else _CRON_JOBS
                )  # fmt: skip
                rows = cron.execute(query, (here,)).fetchall()
        except psycopg.Error as exc:  # pg_cron loaded but its extension not created yet: no jobs yet
            log.info("pg_cron job metrics unavailable", error=str(exc).strip()[:200])
            return [ok, failures]
        for job_id, name, status, fails in rows:
            labels = [str(job_id), str(name)]
            if status is not None:
                ok.add_metric(labels, 1 if status == "succeeded" else 0)
            failures.add_metric(labels, float(fails or 0))
        return [ok, failures]

    def _disk(self, conn: psycopg.Connection[Any]) -> list[Metric]:
        out: list[Metric] = []
        dbsize = GaugeMetricFamily("gatestream_db_size_bytes", "pg_database_size of this database.")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        dbsize.add_metric([], float(row[0]) if row else 0.0)
        out.append(dbsize)
        try:
            with conn.transaction():
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            usage = shutil.disk_usage(str(row[0])) if row else None
        except (psycopg.Error, OSError):
            usage = None  # not superuser, or the data folder is on another host
        if usage is not None:
            disk = GaugeMetricFamily(
                "gatestream_db_disk_used_ratio",
                "Used / total of the file system holding the data folder (same host only).",
            )
            disk.add_metric([], usage.used / usage.total)
            out.append(disk)
        return out
