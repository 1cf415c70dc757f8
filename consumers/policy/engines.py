"""Job engines: where retention jobs live, read back and changed.

- ``TimescaleJobs`` (Community/TSL edition): TimescaleDB's own policies and jobs
  (add_retention_policy, add_columnstore_policy - add_compression_policy before 2.18 -,
  add_continuous_aggregate_policy, add_job / alter_job / delete_job), read back from
  timescaledb_information.jobs. Only the jobs on our hypertables (retention_resources),
  our continuous aggregates and those running our procedures (row retention, the presence
  sweep) are ours; any other table's policies are foreign: listed, never changed.
- ``CronJobs`` (Apache edition): pg_cron jobs that CALL the project's procedures
  (sql/006; the dashboard aggregates' refresh and retention: sql/apache/011; the presence
  sweep: sql/031), scheduled
  from pg_cron's database into this one. pg_cron job names are
  unique per user across databases and cut at 63 bytes, so a job is named
  ``gatestream:<hash of database and key>`` and its command starts with a comment
  carrying the key.

Identifiers and values reach SQL only as psycopg.sql.Identifier/Literal or parameters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from gatestream.consumers.policy import columnstore
from gatestream.consumers.policy.model import DASHBOARD_AGGREGATES, PRESENCE_TARGET, DesiredJob, JobKind
from gatestream.cron import UnschedulableInterval
from gatestream.cron import cron_line as cron_line  # re-exported: the line each pg_cron job gets
from gatestream.database import connect_once

SQL_TSL_DIR = Path(__file__).parents[2] / "sql" / "tsl"  # gatestream/consumers/policy -> gatestream/sql/tsl
SQL_APACHE_DIR = SQL_TSL_DIR.parent / "apache"
CAGGS = tuple(agg.name for agg in DASHBOARD_AGGREGATES)  # the Community edition's continuous aggregates
CRON_PREFIX = "gatestream:"
KEY_MARK = "-- gatestream job "


class EngineUnavailable(Exception):
    """The job engine cannot work in this database (what is missing, and how to fix it): one line."""


@dataclass
class ActualJob:
    key: str
    job_id: int
    schedule: str  # as the engine states it (an interval or a cron line)
    params: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def prepare(self) -> None: ...
    def actual(self) -> dict[str, ActualJob]: ...
    def foreign(self) -> list[ActualJob]: ...
    def matches(self, want: DesiredJob, have: ActualJob) -> bool: ...
    def add(self, want: DesiredJob) -> None: ...
    def alter(self, have: ActualJob, want: DesiredJob) -> None: ...
    def delete(self, have: ActualJob) -> None: ...
    def run_now(self, have: ActualJob) -> None: ...


def _regclass(name: str) -> sql.Composable:
    return sql.SQL("{}::regclass").format(sql.Literal(name))


# ---------------------------------------------------------------------- TimescaleDB jobs
class TimescaleJobs:
    name = "timescaledb-jobs"

    def __init__(self, conn: psycopg.Connection[Any], caggs: tuple[str, ...] = CAGGS):
        self.conn = conn
        self.caggs = caggs

    def prepare(self) -> None:
        """Objects the jobs need that only this edition has (the continuous aggregates) come
        from the edition's migrations (sql/tsl/, applied by ``gatestream db migrate``)."""
        _edition_migrated(self.conn, "tsl", SQL_TSL_DIR, "Community")

    def actual(self) -> dict[str, ActualJob]:
        """Our jobs, by key: those on the hypertables of gatestream.retention_resources, on our
        continuous aggregates, and the row-retention jobs (our procedure)."""
        return self._scan()[0]

    def foreign(self) -> list[ActualJob]:
        """Policies on tables that are not ours (another application's hypertables in the same
        database): never altered or deleted, only listed."""
        return self._scan()[1]

    def _scan(self) -> tuple[dict[str, ActualJob], list[ActualJob]]:
        out: dict[str, ActualJob] = {}
        foreign: list[ActualJob] = []
        ours = {
            f"{s}.{t}"
            for s, t in self.conn.execute(
                "SELECT n.nspname, c.relname FROM gatestream.retention_resources r "
                "JOIN pg_class c ON c.oid = r.hypertable JOIN pg_namespace n ON n.oid = c.relnamespace"
            ).fetchall()
        } | set(self.caggs)
        # jobs on a continuous aggregate name its materialization hypertable: map it back to the view
        views = {
            f"{ms}.{mt}": f"{vs}.{vn}"
            for vs, vn, ms, mt in self.conn.execute(
                "SELECT view_schema, view_name, materialization_hypertable_schema, materialization_hypertable_name "
                "FROM timescaledb_information.continuous_aggregates"
            ).fetchall()
        }
        settings = self._columnstore_settings()
        for job_id, proc_schema, proc, schema, table, every_s, config in self.conn.execute(
            """SELECT job_id, proc_schema, proc_name, hypertable_schema, hypertable_name,
                      extract(epoch FROM schedule_interval)::bigint, config
                 FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY job_id"""
        ).fetchall():
            config = config or {}
            target = f"{schema}.{table}" if schema else None
            target = views.get(target, target) if target else None
            if proc == "policy_retention" and target:
                kind = JobKind.CAGG_RETENTION if target in self.caggs else JobKind.RETENTION
                params: dict[str, Any] = {"drop_after_days": _days(config.get("drop_after"))}
            elif proc == "policy_compression" and target:
                kind = JobKind.COMPRESSION  # a changed segmentby/orderby is drift too
                params = {"compress_after_days": _days(config.get("compress_after")), **settings.get(target, {})}
            elif proc == "policy_refresh_continuous_aggregate" and target:
                kind, params = JobKind.CAGG_REFRESH, {"start_offset_days": _days(config.get("start_offset"))}
            elif proc_schema == "gatestream" and proc == "delete_expired_rows_job":
                kind, target = JobKind.ROW_RETENTION, str(config.get("hypertable"))
                params = {"default_days": int(config.get("default_days", 0))}
            elif proc_schema == "gatestream" and proc == "presence_sweep_job":
                kind, target = JobKind.PRESENCE_SWEEP, PRESENCE_TARGET
                params = {"offline_after_s": config.get("offline_after_s")}  # anything else: rewritten
            else:
                continue  # not a policy (a user-defined job, or TimescaleDB's own)
            key = f"{kind}:{target}"
            if kind not in (JobKind.ROW_RETENTION, JobKind.PRESENCE_SWEEP) and target not in ours:
                foreign.append(ActualJob(key, int(job_id), f"{int(every_s)}s", params))
                continue
            if key in out:  # a duplicate made by hand: keep the first, report the rest as extra
                key = f"{key}#{job_id}"
            out[key] = ActualJob(key, int(job_id), f"{int(every_s)}s", params)
        return out, foreign

    def _columnstore_settings(self) -> dict[str, dict[str, str]]:
        """schema.table -> its columnstore segmentby/orderby (and, from 2.22, its configured
        sparse indexes) as the server states them (versions before 2.18 have no such view:
        their settings are not compared)."""
        found = self.conn.execute(
            "SELECT to_regclass('timescaledb_information.hypertable_columnstore_settings') IS NOT NULL"
        ).fetchone()
        if not (found and found[0]):
            return {}
        out: dict[str, dict[str, str]] = {}
        for (row,) in self.conn.execute(
            "SELECT to_jsonb(s) FROM timescaledb_information.hypertable_columnstore_settings s"
        ).fetchall():
            have = {"segmentby": _columns(row.get("segmentby")), "orderby": _columns(row.get("orderby"))}
            if "index" in row:  # 2.22+: sparse indexes are a setting
                have["sparse_index"] = columnstore.sparse_index_text(row["index"])
            out[str(row["hypertable"])] = have
        return out

    def matches(self, want: DesiredJob, have: ActualJob) -> bool:
        mine = {
            k: _columns(v) if k in ("segmentby", "orderby") else v for k, v in want.params.items() if k in have.params
        }
        return have.schedule == f"{want.schedule_s}s" and mine == have.params

    def add(self, want: DesiredJob) -> None:
        """Through the owner's wrappers (sql/tsl/054): the policy consumer does not own the
        hypertables, and every job it makes is the owner's."""
        every = sql.SQL("make_interval(secs => {})").format(sql.Literal(want.schedule_s))
        t = _regclass(want.target)
        p = want.params
        if want.kind in (JobKind.RETENTION, JobKind.CAGG_RETENTION):
            q = sql.SQL("SELECT gatestream.policy_add_retention({}, make_interval(days => {}), {})").format(
                t, sql.Literal(p["drop_after_days"]), every
            )
        elif want.kind == JobKind.ROW_RETENTION:
            q = sql.SQL("SELECT gatestream.policy_add_job('gatestream.delete_expired_rows_job', {}, {}::jsonb)").format(
                every, sql.Literal(json.dumps(self._row_config(want)))
            )
        elif want.kind == JobKind.PRESENCE_SWEEP:
            q = sql.SQL("SELECT gatestream.policy_add_job('gatestream.presence_sweep_job', {}, {}::jsonb)").format(
                every, sql.Literal(json.dumps(want.params))
            )
        elif want.kind == JobKind.COMPRESSION:
            self._set_columnstore(want)  # add_columnstore_policy (2.18+) or add_compression_policy: the wrapper picks
            q = sql.SQL("SELECT gatestream.policy_add_columnstore({}, make_interval(days => {}), {})").format(
                t, sql.Literal(p["compress_after_days"]), every
            )
        elif want.kind == JobKind.CAGG_REFRESH:
            q = sql.SQL(
                "SELECT gatestream.policy_add_cagg_refresh({}, make_interval(days => {}), "
                "make_interval(hours => {}), {})"
            ).format(t, sql.Literal(p["start_offset_days"]), sql.Literal(p["end_offset_hours"]), every)
        else:
            raise ValueError(f"unknown job kind {want.kind}")
        self.conn.execute(q)

    def _set_columnstore(self, want: DesiredJob) -> bool:
        """Apply the job's columnstore settings to its hypertable (chunks compressed before keep
        theirs until recompressed); whether the server has the columnstore names (2.18+)."""
        p = want.params
        sparse = p["sparse_index"] if columnstore.has_sparse_index_setting(self.conn) else None
        row = self.conn.execute(
            "SELECT gatestream.policy_set_columnstore(%s::regclass, %s, %s, %s)",
            (want.target, p["segmentby"], p["orderby"], sparse),
        ).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _row_config(want: DesiredJob) -> dict[str, Any]:
        return {"hypertable": want.target, "default_days": want.params["default_days"]}

    def alter(self, have: ActualJob, want: DesiredJob) -> None:
        config: sql.Composable
        p = want.params
        if want.kind in (JobKind.RETENTION, JobKind.CAGG_RETENTION):
            config = sql.SQL("jsonb_set(config, '{{drop_after}}', to_jsonb({}::text))").format(
                sql.Literal(f"{p['drop_after_days']} days")
            )
        elif want.kind == JobKind.ROW_RETENTION:
            config = sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(self._row_config(want))))
        elif want.kind == JobKind.PRESENCE_SWEEP:
            config = sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(want.params)))
        elif want.kind == JobKind.COMPRESSION:
            self._set_columnstore(want)
            config = sql.SQL("jsonb_set(config, '{{compress_after}}', to_jsonb({}::text))").format(
                sql.Literal(f"{p['compress_after_days']} days")
            )
        else:  # cagg-refresh
            config = sql.SQL("jsonb_set(config, '{{start_offset}}', to_jsonb({}::text))").format(
                sql.Literal(f"{p['start_offset_days']} days")
            )
        self.conn.execute(
            sql.SQL(
                "SELECT gatestream.policy_alter_job({}, make_interval(secs => {}), "
                "(SELECT {} FROM timescaledb_information.jobs WHERE job_id = {}))"
            ).format(sql.Literal(have.job_id), sql.Literal(want.schedule_s), config, sql.Literal(have.job_id))
        )

    def delete(self, have: ActualJob) -> None:
        self.conn.execute("SELECT gatestream.policy_delete_job(%s)", (have.job_id,))

    def run_now(self, have: ActualJob) -> None:
        """The job's owner's (the admin's: ``gatestream policy run-jobs``): a job may commit,
        which no wrapper can do for the policy consumer."""
        self.conn.execute("CALL run_job(%s)", (have.job_id,))


def _edition_migrated(conn: psycopg.Connection[Any], folder: str, path: Path, edition: str) -> None:
    """The edition's migrations, and the common ones the jobs call (the presence sweep, sql/031)."""
    found = conn.execute("SELECT to_regprocedure('gatestream.presence_sweep_job(integer, jsonb)')").fetchone()
    if not found or found[0] is None:
        raise EngineUnavailable("the presence sweep's procedures (sql/031) are missing: run gatestream db migrate")
    row = conn.execute(
        "SELECT count(*) FROM gatestream.schema_migrations WHERE starts_with(name, %s)", (f"{folder}/",)
    ).fetchone()
    if not row or row[0] < len(list(path.glob("*.sql"))):
        raise EngineUnavailable(f"the {edition} edition's migrations are not applied: run gatestream db migrate")


def _columns(text: Any) -> str:
    """A segmentby/orderby list as the server prints it ('a,b DESC'), whatever the spacing and
    quoting (the server quotes a column named like a keyword: "timestamp")."""
    return ",".join(" ".join(part.split()) for part in str(text or "").replace('"', "").split(","))


def _days(value: Any) -> int | None:
    """'365 days' / '1 year' style interval text from a job config, in days."""
    if value is None:
        return None
    text = str(value).strip()
    parts = text.split()
    if len(parts) == 2 and parts[0].lstrip("-").isdigit() and parts[1].startswith("day"):
        return int(parts[0])
    # Other forms ("1 year", "@ 7 days"), written by hand: unequal on purpose, so the job is
    # rewritten in the form this reconciler writes rather than guessed at.
    return None


# ---------------------------------------------------------------------- pg_cron
# The setting behind each pg_cron job's interval (the Apache edition runs only these kinds).
INTERVAL_SETTING = {
    JobKind.RETENTION: "GATESTREAM_CHUNK_RETENTION_INTERVAL_S",
    JobKind.ROW_RETENTION: "GATESTREAM_ROW_RETENTION_INTERVAL_S",
    JobKind.AGGREGATE_REFRESH: "GATESTREAM_AGGREGATE_REFRESH_INTERVAL_S",
}  # (the presence sweep runs every minute: model.PRESENCE_SWEEP_INTERVAL_S)


def cron_schedule(want: DesiredJob) -> str:
    """``want``'s cron line; UnschedulableInterval naming the setting to change where cron
    cannot repeat its interval exactly (PolicySettings refuses such values at start)."""
    try:
        return cron_line(want.key, want.schedule_s)
    except UnschedulableInterval as exc:
        setting = INTERVAL_SETTING.get(want.kind, "the job's interval")
        raise UnschedulableInterval(f"{want.key} on pg_cron: {exc}; change {setting}") from None


class CronJobs:
    name = "pg_cron"

    def __init__(self, conn: psycopg.Connection[Any], cron_conn: psycopg.Connection[Any], database: str) -> None:
        self.conn = conn  # the monitored database
        self.cron = cron_conn  # pg_cron's own database (cron.database_name); may be the same
        self.database = database

    @classmethod
    def connect(cls, conn: psycopg.Connection[Any], database_url: str) -> CronJobs:
        row = conn.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
        if not row or not row[0]:
            raise EngineUnavailable(
                "pg_cron is not loaded (add pg_cron to shared_preload_libraries and set cron.database_name); "
                "the Apache edition of TimescaleDB has no job scheduler of its own"
            )
        cron_db, here = str(row[0]), str(row[1])
        cron_conn = conn if cron_db == here else connect_once(
            psycopg.conninfo.make_conninfo(database_url, dbname=cron_db), autocommit=True)  # fmt: skip
        return cls(conn, cron_conn, here)

    def prepare(self) -> None:
        """pg_cron in its database; the aggregates the jobs refresh come from the edition's
        migrations (sql/apache/, applied by ``gatestream db migrate``)."""
        _edition_migrated(self.conn, "apache", SQL_APACHE_DIR, "Apache")
        self.cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")

    def job_name(self, key: str) -> str:
        return CRON_PREFIX + hashlib.sha256(f"{self.database}\0{key}".encode()).hexdigest()[:24]

    def command(self, want: DesiredJob) -> str:
        t = _regclass(want.target)
        if want.kind in (JobKind.RETENTION, JobKind.CAGG_RETENTION):  # the aggregates are hypertables here
            q = sql.SQL("CALL gatestream.drop_expired_chunks({}, {})").format(
                t, sql.Literal(want.params["drop_after_days"])
            )
        elif want.kind == JobKind.AGGREGATE_REFRESH:
            q = sql.SQL("CALL gatestream.refresh_aggregates_incremental({}, {})").format(
                t, sql.Literal(want.params["hourly_kept_days"])
            )
        elif want.kind == JobKind.ROW_RETENTION:
            q = sql.SQL("CALL gatestream.delete_expired_rows({}, {})").format(
                t, sql.Literal(want.params["default_days"])
            )
        elif want.kind == JobKind.PRESENCE_SWEEP:
            q = sql.SQL("CALL gatestream.presence_sweep({})").format(sql.Literal(want.params["offline_after_s"]))
        else:
            raise ValueError(f"{want.kind} jobs need the TimescaleDB Community edition")
        return f"{KEY_MARK}{want.key}\n{q.as_string(self.conn)}"

    def actual(self) -> dict[str, ActualJob]:
        out = {}
        for jobid, jobname, schedule, command, active in self.cron.execute(
            "SELECT jobid, jobname, schedule, command, active FROM cron.job "
            "WHERE database = %s AND starts_with(jobname, %s) ORDER BY jobid",
            (self.database, CRON_PREFIX),
        ).fetchall():
            first = str(command).split("\n", 1)[0]
            key = first[len(KEY_MARK) :].strip() if first.startswith(KEY_MARK) else str(jobname)
            if key in out:
                key = f"{key}#{jobid}"  # a duplicate made by hand
            out[key] = ActualJob(key, int(jobid), str(schedule), {"command": command, "active": bool(active)})
        return out

    def foreign(self) -> list[ActualJob]:
        """pg_cron jobs in this database that we did not make (not named gatestream:...): left alone."""
        return [
            ActualJob(str(jobname or f"cron job {jobid}"), int(jobid), str(schedule))
            for jobid, jobname, schedule in self.cron.execute(
                "SELECT jobid, jobname, schedule FROM cron.job "
                "WHERE database = %s AND NOT starts_with(coalesce(jobname, ''), %s) ORDER BY jobid",
                (self.database, CRON_PREFIX),
            ).fetchall()
        ]

    def matches(self, want: DesiredJob, have: ActualJob) -> bool:
        return (have.schedule == cron_schedule(want) and have.params.get("active") is True
                and have.params.get("command") == self.command(want))  # fmt: skip

    def add(self, want: DesiredJob) -> None:
        self.cron.execute(
            "SELECT cron.schedule_in_database(%s, %s, %s, %s)",
            (self.job_name(want.key), cron_schedule(want), self.command(want), self.database),
        )

    def alter(self, have: ActualJob, want: DesiredJob) -> None:
        self.cron.execute(
            "SELECT cron.alter_job(%s, schedule => %s, command => %s, active => true)",
            (have.job_id, cron_schedule(want), self.command(want)),
        )

    def delete(self, have: ActualJob) -> None:
        self.cron.execute("SELECT cron.unschedule(%s::bigint)", (have.job_id,))

    def run_now(self, have: ActualJob) -> None:
        """What pg_cron would run, run now in the monitored database."""
        self.conn.execute(str(have.params["command"]).encode())
