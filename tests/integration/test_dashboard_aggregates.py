"""The dashboards' aggregates (issue 23 §5) on both editions: the same relations with the same
columns, refreshed as their jobs refresh them (TimescaleDB's continuous aggregate policies on
the Community edition, the watermark-based pg_cron procedure on the Apache one), always equal
to a recompute from the raw rows, through late events, replays, backfills and a writer whose
transaction spans a refresh. The jobs are paused and run here directly: no test waits for a
scheduler."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gatestream.consumers.policy.engines import ActualJob, CronJobs, Engine
from gatestream.consumers.policy.model import DASHBOARD_AGGREGATES, JobKind
from gatestream.consumers.policy.reconcile import make_engine, reconcile
from gatestream.dbmetrics import DatabaseCollector
from gatestream.edition import Edition
from tests.conftest import Env
from tests.helpers import unschedule_cron_jobs, wait_for

pytestmark = pytest.mark.integration

Row = tuple[Any, ...]

# Each aggregate as a recompute from the raw rows: what the aggregate must equal.
RECOMPUTE = {
    "monitoring.active_windows_hourly": "SELECT organization_id, users_on_computers_id, process_name, "
    "time_bucket('1 hour', datetime), count(*), sum(active_time) FROM monitoring.active_windows GROUP BY 1, 2, 3, 4",
    "monitoring.active_windows_daily": "SELECT organization_id, users_on_computers_id, process_name, "
    "time_bucket('1 day', datetime), count(*), sum(active_time) FROM monitoring.active_windows GROUP BY 1, 2, 3, 4",
    "monitoring.visited_sites_hourly": "SELECT organization_id, users_on_computers_id, gatestream.url_site(url), "
    "time_bucket('1 hour', datetime), count(*), sum(duration) FROM monitoring.visited_sites GROUP BY 1, 2, 3, 4",
    "monitoring.visited_sites_daily": "SELECT organization_id, users_on_computers_id, gatestream.url_site(url), "
    "time_bucket('1 day', datetime), count(*), sum(duration) FROM monitoring.visited_sites GROUP BY 1, 2, 3, 4",
    "monitoring.active_windows_user_daily": "SELECT organization_id, users_on_computers_id, "
    "time_bucket('1 day', datetime), count(*), sum(active_time) FROM monitoring.active_windows GROUP BY 1, 2, 3",
    "monitoring.active_windows_app_daily": "SELECT organization_id, process_name, "
    "time_bucket('1 day', datetime), count(*), sum(active_time) FROM monitoring.active_windows GROUP BY 1, 2, 3",
    "monitoring.visited_sites_site_daily": "SELECT organization_id, gatestream.url_site(url), "
    "time_bucket('1 day', datetime), count(*), sum(duration) FROM monitoring.visited_sites GROUP BY 1, 2, 3",
}
_ORG, _USER, _BUCKET = ("organization_id", "integer"), ("users_on_computers_id", "integer"), (
    "bucket", "timestamp with time zone")  # fmt: skip
_WINDOWS = [("total_windows", "bigint"), ("total_active_time", "bigint")]
_VISITS = [("total_visits", "bigint"), ("total_duration", "bigint")]
# Each aggregate's columns (name, type), the same on both editions
COLUMNS = {
    "monitoring.active_windows_hourly": [_ORG, _USER, ("process_name", "text"), _BUCKET, *_WINDOWS],
    "monitoring.active_windows_daily": [_ORG, _USER, ("process_name", "text"), _BUCKET, *_WINDOWS],
    "monitoring.visited_sites_hourly": [_ORG, _USER, ("site", "text"), _BUCKET, *_VISITS],
    "monitoring.visited_sites_daily": [_ORG, _USER, ("site", "text"), _BUCKET, *_VISITS],
    "monitoring.active_windows_user_daily": [_ORG, _USER, _BUCKET, *_WINDOWS],
    "monitoring.active_windows_app_daily": [_ORG, ("process_name", "text"), _BUCKET, *_WINDOWS],
    "monitoring.visited_sites_site_daily": [_ORG, ("site", "text"), _BUCKET, *_VISITS],
}
URLS = {  # URL -> its site
    "https://WWW.Example.com/a?b=1#c": "www.example.com",
    "http://user:secret@Docs.Example.COM:8080/x": "docs.example.com",
    "https://[2001:db8::1]:443/": "[2001:db8::1]",
    "example.com/Path": "example.com/Path",  # no scheme: the URL itself
    "about:blank": "about:blank",
}
PROCESSES = ["code.exe", "chrome.exe", None]


@pytest.fixture
def conn(edition_env: Env) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(edition_env.database_url, autocommit=True) as c:
        yield c
    unschedule_cron_jobs(edition_env.database_url)


def _paused_refresh_jobs(conn: psycopg.Connection[Any], env: Env) -> tuple[Engine, list[ActualJob]]:
    """Reconcile the policies, then pause the refresh jobs (the test runs them itself) and wait
    for a run the scheduler may have started at once to end."""
    settings = env.policy()
    engine = make_engine(conn, settings)
    engine.prepare()
    reconcile(conn, settings, engine)
    kinds = (f"{JobKind.CAGG_REFRESH}:", f"{JobKind.AGGREGATE_REFRESH}:")
    jobs = [j for k, j in sorted(engine.actual().items()) if k.startswith(kinds)]
    if isinstance(engine, CronJobs):
        assert [j.key for j in jobs] == ["aggregate-refresh:monitoring.active_windows",
                                         "aggregate-refresh:monitoring.visited_sites"]  # fmt: skip
        for j in jobs:
            engine.cron.execute("SELECT cron.alter_job(%s, active => false)", (j.job_id,))
        return engine, jobs
    assert [j.key for j in jobs] == sorted(f"cagg-refresh:{a.name}" for a in DASHBOARD_AGGREGATES)
    ids = [j.job_id for j in jobs]
    conn.execute("SELECT alter_job(j, scheduled => false) FROM unnest(%s::int[]) j", (ids,))
    running = "SELECT count(*) FROM timescaledb_information.job_stats WHERE job_id = ANY(%s) AND job_status = 'Running'"
    assert wait_for(lambda: conn.execute(running, (ids,)).fetchone() == (0,), 60)
    return engine, jobs


SETTLED = """SELECT coalesce(max(created_at) < clock_timestamp() - interval '1 second', true)
               FROM (SELECT created_at FROM monitoring.active_windows
                     UNION ALL SELECT created_at FROM monitoring.visited_sites) r"""


def _run(conn: psycopg.Connection[Any], engine: Engine, jobs: list[ActualJob]) -> None:
    """What the scheduler would run, in the order it would pick them (the hourly aggregates
    before the daily ones that read them), once the newest rows are a second old: the Apache
    edition's refresh leaves the last second to its next run (sql/apache/011)."""
    assert wait_for(lambda: conn.execute(SETTLED).fetchone() == (True,), 10)
    for j in sorted(jobs, key=lambda j: j.key.endswith("_daily")):
        engine.run_now(j)


def _insert(conn: psycopg.Connection[Any], events: list[Row], created_at: datetime | None = None) -> int:
    """(event_id, org, user, time, process or URL, active time or duration) rows, deduplicated by
    event id as ingest does (a resent or replayed event is not a second row); rows inserted."""
    windows = [e for e in events if e[4] not in URLS]
    sites = [e for e in events if e[4] in URLS]
    n = 0
    extra, value = (", created_at", ", %s") if created_at else ("", "")
    with conn.cursor() as cur:
        for table, cols, rows in (
            ("active_windows", "process_name, active_time", windows),
            ("visited_sites", "url, duration", sites),
        ):
            for r in rows:
                cur.execute(
                    f"INSERT INTO monitoring.{table} (event_id, organization_id, users_on_computers_id, datetime, "  # noqa: S608 - our constants
                    f"{cols}{extra}) VALUES (%s, %s, %s, %s, %s, %s{value}) ON CONFLICT DO NOTHING",
                    (*r, created_at) if created_at else r,
                )
                n += cur.rowcount
    return n


def _events(n: int, start: datetime, span: timedelta, orgs: tuple[int, ...] = (1, 2, 3), seed: int = 0) -> list[Row]:
    """n events of each kind between start and start + span, over a few organizations, users,
    applications (one unnamed) and sites; some without an active time or duration."""
    out: list[Row] = []
    for i in range(n):
        k = i * 7919 + seed
        t = start + span * ((k % 997) / 997)
        org, user = orgs[k % len(orgs)], 10 + k % 4
        spent = None if k % 11 == 0 else k % 300
        out.append((uuid.uuid4(), org, user, t, PROCESSES[k % len(PROCESSES)], spent))
        out.append((uuid.uuid4(), org, user, t, list(URLS)[k % len(URLS)], spent))
    return out


def _aggregates(conn: psycopg.Connection[Any]) -> dict[str, Counter[Row]]:
    out = {}
    for agg in DASHBOARD_AGGREGATES:
        cols = ", ".join(c for c, _ in COLUMNS[agg.name])
        out[agg.name] = Counter(conn.execute(f"SELECT {cols} FROM {agg.name}").fetchall())  # noqa: S608 - constants
    return out


def _recomputed(conn: psycopg.Connection[Any]) -> dict[str, Counter[Row]]:
    return {name: Counter(conn.execute(q).fetchall()) for name, q in RECOMPUTE.items()}  # noqa: S608 - constants


def _assert_as_recomputed(conn: psycopg.Connection[Any]) -> dict[str, Counter[Row]]:
    got, want = _aggregates(conn), _recomputed(conn)
    for name in RECOMPUTE:
        assert got[name] == want[name], (
            f"{name} differs from a recompute: missing {want[name] - got[name]}, extra {got[name] - want[name]}"
        )
    return got


def test_the_same_relations_with_the_same_columns_on_both_editions(conn: psycopg.Connection[Any]) -> None:
    assert sorted(COLUMNS) == sorted(RECOMPUTE) == sorted(a.name for a in DASHBOARD_AGGREGATES)
    for agg in DASHBOARD_AGGREGATES:
        schema, name = agg.name.split(".")
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (schema, name),
        ).fetchall()
        assert cols == COLUMNS[agg.name], agg.name
    sites = conn.execute("SELECT u, gatestream.url_site(u) FROM unnest(%s::text[]) u", (list(URLS),)).fetchall()
    assert dict(sites) == URLS


def test_late_replayed_and_backfilled_events_change_every_aggregate_as_a_recompute_would(
    edition_env: Env, conn: psycopg.Connection[Any]
) -> None:
    engine, jobs = _paused_refresh_jobs(conn, edition_env)
    now = datetime.now(UTC)
    on_time = _events(120, now - timedelta(hours=3), timedelta(hours=3))
    earlier = _events(60, now - timedelta(hours=50), timedelta(hours=10), seed=1)
    assert _insert(conn, on_time + earlier) == 360
    _run(conn, engine, jobs)
    first = _assert_as_recomputed(conn)
    assert all(first.values()), "every aggregate has rows"

    # late events in buckets already materialized (one of a new organization, one of a new
    # application), events that were missing and come back with a backfill, and a replay of
    # everything already stored, which must change nothing
    late = _events(40, now - timedelta(hours=48), timedelta(hours=20), orgs=(2, 3, 4), seed=2)
    late.append((uuid.uuid4(), 1, 10, now - timedelta(hours=30), "late.exe", 17))
    backfill = _events(20, now - timedelta(hours=45), timedelta(hours=2), seed=3)
    assert _insert(conn, late + backfill) == len(late) + len(backfill)
    assert _insert(conn, on_time + earlier + backfill) == 0, "a replay inserts no row"
    _run(conn, engine, jobs)
    second = _assert_as_recomputed(conn)
    assert all(second[n] != first[n] for n in first), "the late events changed every aggregate"
    # a replay alone, refreshed: nothing moves
    assert _insert(conn, on_time + late) == 0
    _run(conn, engine, jobs)
    assert _assert_as_recomputed(conn) == second


def test_a_bulk_load_with_its_own_created_at_counts_after_refresh_dashboard_aggregates(
    edition_env: Env, conn: psycopg.Connection[Any]
) -> None:
    """A bulk load (the bench's COPY) may set created_at itself, older than the Apache edition's
    watermark: the contract's procedure rebuilds the window's days from the raw rows whatever
    the watermark says."""
    engine, jobs = _paused_refresh_jobs(conn, edition_env)
    now = datetime.now(UTC)
    _insert(conn, _events(50, now - timedelta(hours=6), timedelta(hours=6)))
    _run(conn, engine, jobs)
    _assert_as_recomputed(conn)
    loaded = _insert(conn, _events(80, now - timedelta(days=2), timedelta(days=2), seed=4), created_at=now - timedelta(
        days=30))  # fmt: skip
    assert loaded == 160
    conn.execute("CALL gatestream.refresh_dashboard_aggregates(%s, %s)", (now - timedelta(days=2), now))
    _assert_as_recomputed(conn)
    # and again over everything, unbounded, changes nothing
    before = _aggregates(conn)
    conn.execute("CALL gatestream.refresh_dashboard_aggregates(NULL, NULL)")
    assert _assert_as_recomputed(conn) == before


def test_a_writer_whose_transaction_spans_a_refresh_is_counted_by_the_next_one(
    edition_env: Env, conn: psycopg.Connection[Any]
) -> None:
    """An ingest transaction takes its created_at when it starts and becomes visible when it
    commits: a refresh in between must not move its watermark past rows it cannot see yet."""
    engine, jobs = _paused_refresh_jobs(conn, edition_env)
    now = datetime.now(UTC)
    _insert(conn, _events(30, now - timedelta(hours=30), timedelta(hours=3)))
    with psycopg.connect(edition_env.database_url) as writer:  # a transaction, left open
        _insert(writer, _events(30, now - timedelta(hours=29), timedelta(hours=2), seed=5))
        _run(conn, engine, jobs)  # sees the first rows only
        _assert_as_recomputed(conn)
        writer.commit()
    _run(conn, engine, jobs)
    _assert_as_recomputed(conn)


def test_a_scheduled_refresh_that_finds_another_running_leaves_the_work_to_it(
    edition: Edition, edition_env: Env, conn: psycopg.Connection[Any]
) -> None:
    if edition is not Edition.APACHE:
        pytest.skip("the Apache edition's refresh (TimescaleDB serializes its own refreshes)")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    with psycopg.connect(edition_env.database_url) as other:
        other.execute(
            "SELECT 1 FROM gatestream.aggregate_watermarks WHERE source = 'monitoring.active_windows'::regclass "
            "FOR UPDATE"
        )
        conn.execute("CALL gatestream.refresh_aggregates_incremental('monitoring.active_windows', 90)")
        assert notices == ["another refresh of monitoring.active_windows is running: this run leaves the work to it"]
    watermark = "SELECT isfinite(refreshed_through) FROM gatestream.aggregate_watermarks WHERE source = %s::regclass"
    assert conn.execute(watermark, ("monitoring.active_windows",)).fetchone() == (False,), (
        "the skipped run moved nothing"
    )
    conn.execute("CALL gatestream.refresh_aggregates_incremental('monitoring.active_windows', 90)")
    assert conn.execute(watermark, ("monitoring.active_windows",)).fetchone() == (True,)


def test_each_aggregates_staleness_is_exported(edition_env: Env, conn: psycopg.Connection[Any]) -> None:
    engine, jobs = _paused_refresh_jobs(conn, edition_env)

    def staleness() -> dict[str, float]:
        collector = DatabaseCollector(edition_env.database_url, min_interval_s=0)
        fam = next(m for m in collector.collect() if m.name == "gatestream_db_aggregate_staleness_seconds")
        return {s.labels["aggregate"]: s.value for s in fam.samples}

    names = sorted(a.name for a in DASHBOARD_AGGREGATES)
    before = staleness()
    assert sorted(before) == names
    assert all(math.isinf(v) for v in before.values()), f"never refreshed: +Inf, got {before}"
    now = datetime.now(UTC)
    _insert(conn, _events(40, now - timedelta(hours=60), timedelta(hours=58)))
    _run(conn, engine, jobs)
    after = staleness()
    assert sorted(after) == names
    assert all(math.isfinite(v) and v >= 0 for v in after.values()), after
    # the Apache edition's aggregates are hypertables: not reported as event tables
    collector = DatabaseCollector(edition_env.database_url, min_interval_s=0)
    tables = {s.labels["hypertable"] for m in collector.collect() if m.name == "gatestream_db_hypertable_chunks"
              for s in m.samples}  # fmt: skip
    assert tables and not tables & set(names), tables
