"""The policy consumer against the real TimescaleDB, on both editions: TimescaleDB's jobs on
the Community edition, pg_cron on the Apache one (every test here runs on each, through the
``edition`` fixture). Compression and the continuous aggregate exist only on the Community
edition; on the Apache one their documented absence is checked.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from gatestream.cli.policy import _publish
from gatestream.consumers.policy.consumer import PolicyConsumer
from gatestream.consumers.policy.model import DASHBOARD_AGGREGATES, PolicyError
from gatestream.consumers.policy.reconcile import make_engine, make_plan, reconcile
from gatestream.edition import Edition
from gatestream.settings import PolicySettings
from tests.conftest import Env, read_topic, run_gatestream
from tests.helpers import unschedule_cron_jobs, wait_for
from tests.services import kafka_conf

pytestmark = pytest.mark.integration

A, B, C, D = 1, 2, 3, 4  # A keeps 90 days, B 730, C and D the default 365
SPAN_DAYS = 800


@pytest.fixture
def env(edition_env: Env) -> Env:
    """Everything here depends on the edition (the job engine, the jobs wanted): each test runs on both."""
    return edition_env


@pytest.fixture
def conn(env: Env) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(env.database_url, autocommit=True) as c:
        yield c
    unschedule_cron_jobs(env.database_url)


def _edition(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()
    return str(row[0]) if row else "?"


def _seed_rows(conn: psycopg.Connection[Any]) -> datetime:
    """One row per organization every 6 hours over 800 days, 3 h off any whole day (no row
    sits near a retention cut-off)."""
    now = datetime.now(UTC)
    conn.execute(
        """INSERT INTO monitoring.active_windows (event_id, organization_id, users_on_computers_id, datetime, title)
           SELECT gen_random_uuid(), o, o * 10, %s - make_interval(hours => 6 * k + 3), 'w'
             FROM generate_series(0, %s * 4 - 1) k, unnest(%s::int[]) o""",
        (now, SPAN_DAYS, [A, B, C, D]),
    )
    return now


def _policies(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) VALUES "
        "(NULL, 'active_windows', 365), (%s, 'active_windows', 90), (%s, 'active_windows', 730)",
        (A, B),
    )


def _expected(days: int) -> int:
    # rows at 3 h, 9 h, 15 h, ... ago; those younger than `days` remain
    return sum(1 for k in range(SPAN_DAYS * 4) if 6 * k + 3 < days * 24)


def _counts(conn: psycopg.Connection[Any]) -> dict[int, int]:
    return dict(conn.execute("SELECT organization_id, count(*) FROM monitoring.active_windows GROUP BY 1").fetchall())


@pytest.mark.slow
def test_time_travel_every_organization_keeps_exactly_what_its_policy_says(env: Env, conn: Any) -> None:
    _seed_rows(conn)
    _policies(conn)
    settings = env.policy()
    engine = make_engine(conn, settings)
    engine.prepare()
    plan = reconcile(conn, settings, engine)
    aw = "monitoring.active_windows"
    wanted = {c.key: c.want for c in plan.changes if c.want}
    assert wanted[f"retention:{aw}"].params["drop_after_days"] == 730  # the longest retention, never shorter
    assert wanted[f"row-retention:{aw}"].params["default_days"] == 365
    # what the plan says it would delete now, per organization
    from gatestream.consumers.policy.reconcile import impact

    aw_impact = next(i for i in impact(conn, plan.state.policies) if i["hypertable"] == aw)
    assert aw_impact["rows_to_delete"] == {
        A: SPAN_DAYS * 4 - _expected(90),
        B: SPAN_DAYS * 4 - _expected(730),
        C: SPAN_DAYS * 4 - _expected(365),
        D: SPAN_DAYS * 4 - _expected(365),
    }
    assert aw_impact["chunks_to_drop"] > 0
    chunks_before = conn.execute("SELECT count(*) FROM show_chunks(%s::regclass)", (aw,)).fetchone()[0]

    jobs = engine.actual()
    engine.run_now(jobs[f"retention:{aw}"])  # whole chunks past 730 days
    chunks_after = conn.execute("SELECT count(*) FROM show_chunks(%s::regclass)", (aw,)).fetchone()[0]
    assert chunks_after < chunks_before - 60
    engine.run_now(jobs[f"row-retention:{aw}"])  # each organization's own retention
    assert _counts(conn) == {A: _expected(90), B: _expected(730), C: _expected(365), D: _expected(365)}
    # running the jobs again deletes nothing more
    engine.run_now(jobs[f"row-retention:{aw}"])
    assert _counts(conn) == {A: _expected(90), B: _expected(730), C: _expected(365), D: _expected(365)}

    # a second plan after apply changes nothing, twice
    for _ in range(2):
        again = make_plan(conn, settings, engine)
        assert again.changes == [] and again.unchanged == len(again.state.jobs)


def _kafka_committed(env: Env, group: str, topic: str) -> int | None:
    """The offset Kafka holds for ``group`` on partition 0 of ``topic`` (None: none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_conf(env.services.bootstrap_servers))
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])
    got = admin.list_consumer_group_offsets([req])[group].result(timeout=10)
    offset = got.topic_partitions[0].offset
    return None if offset < 0 else int(offset)


def _start_consumer(settings: PolicySettings) -> tuple[PolicyConsumer, threading.Thread]:
    pc = PolicyConsumer(settings)
    t = threading.Thread(target=pc.run, daemon=True)
    t.start()
    return pc, t


def test_a_change_through_the_topic_changes_only_that_and_drift_is_repaired(env: Env, conn: Any) -> None:
    _policies(conn)
    settings = env.policy(full_reconcile_interval_s=3600)
    pc, t = _start_consumer(settings)
    try:
        assert wait_for(lambda: pc.runs >= 1, 30), "no startup reconcile"
        assert pc.last_plan is not None and pc.last_plan.changes  # created the jobs
        runs = pc.runs
        # B's longer retention shrinks to 400: only active_windows' chunk job changes
        conn.execute("UPDATE monitoring.retention_policies SET retention_days = 400 WHERE organization_id = %s", (B,))
        _publish(settings, {"resource_type": "active_windows", "organization_id": B, "op": "set"})
        assert wait_for(lambda: pc.runs > runs, 40), "the change event was not reconciled"
        changes = [(c.action, c.key) for c in pc.last_plan.changes]
        assert changes == [("alter", "retention:monitoring.active_windows")]
        engine = make_engine(conn, settings)
        assert make_plan(conn, settings, engine).changes == []
        # an invalid event goes to the dead-letter topic with its reason, and the offsets move on
        from confluent_kafka import Producer

        runs = pc.runs
        p = Producer(kafka_conf(env.services.bootstrap_servers))
        p.produce(settings.policy_topic, value=b'{"resource_type": "x; DROP TABLE y", "op": "set"}')
        assert p.flush(10) == 0
        assert wait_for(lambda: pc.runs > runs, 40)
        assert pc.last_plan is not None and pc.last_plan.changes == []
        dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=1, timeout=15)
        assert [dict(m.headers())["gatestream.reason"] for m in dead] == [b"invalid-policy-event"]
        assert b"unknown resource_type" in dict(dead[0].headers())["gatestream.error"]
        # through the checkpoint every consumer shares: recorded once for the policy group,
        # and the stored offset moved past it in the reconcile's transaction
        group = settings.policy_group_id
        assert conn.execute("SELECT consumer_group, reason FROM gatestream.dead_letters").fetchall() == [
            (group, "invalid-policy-event")
        ]
        stored = conn.execute(
            "SELECT next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s AND topic = %s",
            (group, settings.policy_topic),
        ).fetchone()
        assert stored == (int(dict(dead[0].headers())["gatestream.source.offset"]) + 1,)
        # and mirrored to Kafka's group, so lag tools see the policy consumer caught up
        assert wait_for(lambda: _kafka_committed(env, group, settings.policy_topic) == stored[0], 15), (
            _kafka_committed(env, group, settings.policy_topic), stored
        )  # fmt: skip
    finally:
        pc.request_stop()
        t.join(20)

    # drift: a job deleted by hand and another's schedule altered; the periodic reconcile repairs both
    engine = make_engine(conn, settings)
    jobs = engine.actual()
    engine.delete(jobs["row-retention:monitoring.screenshots"])
    victim = jobs["retention:monitoring.user_sessions"]
    if _edition(conn) == "timescale":
        conn.execute("SELECT alter_job(%s, schedule_interval => interval '5 minutes')", (victim.job_id,))
    else:
        row = conn.execute("SELECT current_setting('cron.database_name')").fetchone()
        cron_url = psycopg.conninfo.make_conninfo(env.database_url, dbname=row[0])
        with psycopg.connect(cron_url, autocommit=True) as cron:
            cron.execute("SELECT cron.alter_job(%s, schedule => '*/5 * * * *')", (victim.job_id,))
    drift = make_plan(conn, settings, engine)
    assert sorted((c.action, c.key) for c in drift.changes) == [
        ("add", "row-retention:monitoring.screenshots"),
        ("alter", "retention:monitoring.user_sessions"),
    ]
    pc, t = _start_consumer(env.policy(full_reconcile_interval_s=1))
    try:
        assert wait_for(lambda: pc.runs >= 2, 30)
    finally:
        pc.request_stop()
        t.join(20)
    assert make_plan(conn, settings, engine).changes == []


def test_ten_thousand_organizations_reconcile_to_jobs_per_hypertable(env: Env, conn: Any) -> None:
    conn.execute(
        """INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days)
           SELECT o, r.resource_type, 30 + (o * 7) % 700
             FROM generate_series(1, 10000) o
             CROSS JOIN LATERAL (SELECT resource_type FROM gatestream.retention_resources
                                  ORDER BY resource_type OFFSET o % 5 LIMIT 1) r"""
    )
    settings = env.policy()
    engine = make_engine(conn, settings)
    engine.prepare()
    plans: list[Any] = []
    # a hang detector, not a speed figure (how fast it is belongs in a bench)
    worker = threading.Thread(
        target=lambda: plans.extend(reconcile(conn, settings, engine, with_impact=False) for _ in range(2)), daemon=True
    )
    worker.start()
    assert wait_for(lambda: not worker.is_alive(), 180), "two reconciles of 10,000 organizations did not finish"
    assert len(plans) == 2, "a reconcile failed (see the thread's traceback above)"
    plan, again = plans
    per_hypertable = 3 if _edition(conn) == "timescale" else 2
    # the dashboard aggregates' retention, and their refresh: per aggregate (continuous
    # aggregate policies) or per source hypertable (pg_cron, every level at once)
    n_aggregates = len(DASHBOARD_AGGREGATES)
    extra = n_aggregates + (n_aggregates if _edition(conn) == "timescale" else 2) + 1  # + the presence sweep
    assert len(plan.state.jobs) == 5 * per_hypertable + extra
    assert len(engine.actual()) == len(plan.state.jobs)
    assert again.changes == []
    assert sum(p.overrides for p in plan.state.policies.values()) == 10000


def test_pg_cron_jobs_carry_a_schedule_that_keeps_the_configured_interval(env: Env, conn: Any) -> None:
    """Every 15 minutes and every week, as the policy consumer schedules them: cron lines on
    pg_cron (Apache edition), intervals on TimescaleDB's jobs (Community edition)."""
    from tests.unit.test_cron import fire_times

    settings = env.policy(row_retention_interval_s=900, chunk_retention_interval_s=7 * 86400)
    pc, t = _start_consumer(settings)
    try:
        assert wait_for(lambda: pc.runs >= 1, 60), "no startup reconcile"
    finally:
        pc.request_stop()
        t.join(20)
    jobs = make_engine(conn, settings).actual()
    aw = "monitoring.active_windows"
    if _edition(conn) == Edition.COMMUNITY:
        assert jobs[f"row-retention:{aw}"].schedule == "900s"
        assert jobs[f"retention:{aw}"].schedule == f"{7 * 86400}s"
        intervals = dict(
            conn.execute(
                "SELECT job_id, extract(epoch FROM schedule_interval)::bigint FROM timescaledb_information.jobs "
                "WHERE job_id = ANY(%s)",
                ([jobs[f"row-retention:{aw}"].job_id, jobs[f"retention:{aw}"].job_id],),
            ).fetchall()
        )
        assert sorted(intervals.values()) == [900, 7 * 86400]
        return
    assert jobs[f"row-retention:{aw}"].schedule == "*/15 * * * *"
    weekly = jobs[f"retention:{aw}"].schedule
    assert re.fullmatch(r"\d{1,2} \d{1,2} \* \* [0-6]", weekly), weekly
    fires = fire_times(weekly, datetime(2026, 1, 1, tzinfo=UTC), 35)
    assert {(b - a).days for a, b in zip(fires, fires[1:], strict=False)} == {7}, weekly


def test_hostile_values_are_rejected_without_executing_anything(env: Env, conn: Any) -> None:
    hostile = "active_windows'); DROP TABLE monitoring.screenshots; --"
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(
            "INSERT INTO monitoring.retention_policies (resource_type, retention_days) VALUES (%s, 10)", (hostile,)
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
            "VALUES (-5, 'active_windows', 10)"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO monitoring.retention_policies (resource_type, retention_days) VALUES ('active_windows', 0)"
        )
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO monitoring.retention_policies (resource_type, retention_days) "
            "VALUES ('visited_sites', 10), ('visited_sites', 20)"
        )
    settings = env.policy()
    engine = make_engine(conn, settings)
    engine.prepare()
    reconcile(conn, settings, engine)
    before = {k: (j.job_id, j.schedule, j.params) for k, j in engine.actual().items()}
    # someone bypasses the constraints: the reconciler refuses the table and executes nothing
    conn.execute("ALTER TABLE monitoring.retention_policies DROP CONSTRAINT retention_policies_resource_type_fkey")
    conn.execute("INSERT INTO monitoring.retention_policies (resource_type, retention_days) VALUES (%s, 1)", (hostile,))
    conn.execute("UPDATE monitoring.retention_policies SET retention_days = 1")  # would delete almost everything
    with pytest.raises(PolicyError, match="cannot be reconciled"):
        reconcile(conn, settings, engine)
    assert {k: (j.job_id, j.schedule, j.params) for k, j in engine.actual().items()} == before
    assert conn.execute("SELECT to_regclass('monitoring.screenshots')").fetchone() == ("monitoring.screenshots",)


@pytest.mark.slow
def test_compression_and_the_daily_aggregate(env: Env, conn: Any) -> None:
    """Community edition: the compression policy's job compresses what is past 60 days and the
    daily aggregate refreshes. Apache edition: compression is reported unavailable (no such
    job) and the server refuses it; the aggregates are tables refreshed by pg_cron jobs."""
    _seed_rows(conn)
    settings = env.policy()
    engine = make_engine(conn, settings)
    engine.prepare()
    plan = reconcile(conn, settings, engine)
    if _edition(conn) != Edition.COMMUNITY:
        assert [u.split(" ", 1)[0] for u in plan.state.unavailable] == ["compression"]
        assert all("needs the TimescaleDB Community edition" in u for u in plan.state.unavailable)
        kinds = {k.split(":", 1)[0] for k in engine.actual()}
        assert kinds == {"retention", "row-retention", "cagg-retention", "aggregate-refresh", "presence-sweep"}
        assert conn.execute(
            "SELECT count(*) FROM gatestream.schema_migrations WHERE starts_with(name, 'tsl/')"
        ).fetchone() == (0,)
        # the daily aggregate is a hypertable here, refreshed and retained by pg_cron's jobs
        jobs = engine.actual()
        engine.run_now(jobs["aggregate-refresh:monitoring.active_windows"])
        engine.run_now(jobs["cagg-retention:monitoring.active_windows_daily"])  # keeps 400 days of 800
        days = conn.execute(
            "SELECT count(DISTINCT bucket), sum(total_windows)::bigint FROM monitoring.active_windows_daily"
        ).fetchone()
        assert days is not None and 400 <= days[0] <= 400 + 31  # whole 30-day chunks are dropped
        kept = conn.execute(
            "SELECT count(*) FROM monitoring.active_windows "
            "WHERE datetime >= (SELECT min(bucket) FROM monitoring.active_windows_daily)"
        ).fetchone()
        assert kept is not None and days[1] == kept[0]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="apache"):
            conn.execute(
                "ALTER TABLE monitoring.active_windows SET (timescaledb.enable_columnstore, "
                "timescaledb.segmentby = 'organization_id')"
            )
        return
    jobs = engine.actual()
    # TimescaleDB's scheduler starts a new policy at once; a run of ours may race it
    with contextlib.suppress(psycopg.errors.RaiseException):
        engine.run_now(jobs["compression:monitoring.active_windows"])
    uncompressed_old = (
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'active_windows' "
        "AND NOT is_compressed AND range_end < now() - interval '60 days'"
    )
    assert wait_for(lambda: conn.execute(uncompressed_old).fetchone() == (0,), 120)
    old, young = conn.execute(
        """SELECT count(*) FILTER (WHERE is_compressed AND range_end < now() - interval '60 days'),
                  count(*) FILTER (WHERE is_compressed AND range_start > now() - interval '59 days')
             FROM timescaledb_information.chunks WHERE hypertable_name = 'active_windows'"""
    ).fetchone()
    assert old > 200 and young == 0  # (the retention policy, also started at once, may have dropped the oldest)
    before, after = conn.execute(
        "SELECT sum(before_compression_total_bytes), sum(after_compression_total_bytes) "
        "FROM hypertable_columnstore_stats('monitoring.active_windows')"
    ).fetchone()
    print(f"\ncompression ratio {before / after:.1f}:1 ({before} -> {after} bytes)")
    assert before > after
    engine.run_now(jobs["cagg-refresh:monitoring.active_windows_hourly"])
    engine.run_now(jobs["cagg-refresh:monitoring.active_windows_daily"])
    conn.execute("CALL gatestream.refresh_dashboard_aggregates(NULL, NULL)")
    # the days every retention keeps (the hourly aggregate's 90 days; its retention job may run now)
    since = "time_bucket('1 day', now() - interval '80 days')"
    total = conn.execute(
        f"SELECT sum(total_windows)::bigint FROM monitoring.active_windows_daily WHERE bucket >= {since}"  # noqa: S608
    ).fetchone()
    assert total == conn.execute(f"SELECT count(*) FROM monitoring.active_windows WHERE datetime >= {since}").fetchone()  # noqa: S608


def test_the_presence_sweep_is_a_reconciled_job_that_marks_the_silent_offline(env: Env, conn: Any) -> None:
    """The OFFLINE sweep is a job like the others (a TimescaleDB job on the Community
    edition, pg_cron on the Apache one), its threshold in the job. Run as the scheduler
    would, it marks the gateway and the agent silent past the threshold OFFLINE and leaves
    the others; a changed threshold is drift that `policy plan` shows and the reconcile
    repairs in place; the next run uses it. (The scheduler may run the job on its own
    meanwhile: with the same threshold, to the same result.)"""
    old, mid, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO monitoring.gateway_instances (id, organization_id, status, last_seen_at) VALUES "
        "(%s, 1, 'ONLINE', now() - interval '10 minutes'), (%s, 1, 'ERROR', now() - interval '7 minutes'), "
        "(%s, 1, 'ONLINE', now())",
        (old, mid, new),
    )
    conn.execute(
        "INSERT INTO monitoring.agent_instances (id, agent_uid, gateway_id, status, last_seen_at) VALUES "
        "(gen_random_uuid(), 'quiet', %s, 'ONLINE', now() - interval '10 minutes'), "
        "(gen_random_uuid(), 'talking', %s, 'ONLINE', now())",
        (old, new),
    )

    def states() -> tuple[dict[uuid.UUID, str], dict[str, str]]:
        return (dict(conn.execute("SELECT id, status FROM monitoring.gateway_instances").fetchall()),
                dict(conn.execute("SELECT agent_uid, status FROM monitoring.agent_instances").fetchall()))  # fmt: skip

    key = "presence-sweep:monitoring.gateway_instances+agent_instances"
    settings = env.policy(presence_offline_after_s=600)
    engine = make_engine(conn, settings)
    engine.prepare()
    plan = reconcile(conn, settings, engine, with_impact=False)
    assert ("add", key) in [(c.action, c.key) for c in plan.changes]
    job = engine.actual()[key]
    assert job.schedule == ("60s" if _edition(conn) == Edition.COMMUNITY else "* * * * *")
    engine.run_now(job)
    assert states() == ({old: "OFFLINE", mid: "ERROR", new: "ONLINE"}, {"quiet": "OFFLINE", "talking": "ONLINE"})

    out = run_gatestream(env.environ(), "policy", "plan", "--no-impact")  # the default threshold: 300 s
    assert out.returncode == 0, out.stderr[-2000:]
    changed = [line.strip() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(changed) == 1 and changed[0].startswith(f"alter  {key}:"), out.stdout
    assert changed[0].endswith("presence-sweep on monitoring.gateway_instances+agent_instances every 1 min "
                               "(offline_after_s=300)"), changed  # fmt: skip
    settings = env.policy()
    repaired = reconcile(conn, settings, engine, with_impact=False)
    assert [(c.action, c.key) for c in repaired.changes] == [("alter", key)]
    again = engine.actual()[key]
    assert again.job_id == job.job_id and make_plan(conn, settings, engine).changes == []
    engine.run_now(again)
    assert states() == ({old: "OFFLINE", mid: "OFFLINE", new: "ONLINE"}, {"quiet": "OFFLINE", "talking": "ONLINE"})
