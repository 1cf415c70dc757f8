"""Metrics, health and alerting against the real services."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import gatestream.consumers.metrics  # noqa: F401 - registers the ingest metrics
import gatestream.producers.metrics  # noqa: F401 - registers the producer metrics
from gatestream import roles
from gatestream.dbmetrics import DatabaseCollector
from gatestream.edition import Edition
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env, free_port, gatestream_cmd
from tests.helpers import http_get, publish, wait_for
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return {}
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _ingest(env: Env, port: int, log: Path, **over: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        gatestream_cmd("ingest", "--metrics-port", str(port)),
        env=env.environ(**over),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def test_metrics_endpoint_counts_what_was_produced_and_lag_falls_to_zero(env: Env, tmp_path: Path) -> None:
    per_type = 400
    n = per_type * len(EventType)
    publish(env, tmp_path / "spool.sqlite3", list(generate(n, Fleet(), list(EventType), seed=5)))
    from confluent_kafka import Producer

    raw = Producer(kafka_conf(env.services.bootstrap_servers))
    raw.produce(env.topic(EventType.SCREENSHOTS), value=b"not Avro")  # consumed, then dead-lettered
    assert raw.flush(10) == 0
    port = free_port()
    proc = _ingest(env, port, tmp_path / "ingest.log")
    try:
        assert wait_for(lambda: _sum(_samples(port), "gatestream_ingest_rows_inserted_total") == n, 60)
        assert wait_for(lambda: _sum(_samples(port), "gatestream_ingest_dead_lettered_total") == 1, 20)
        s = _samples(port)
        for et in EventType:
            read = per_type + (et is EventType.SCREENSHOTS)  # a dead-lettered event was consumed too
            assert s[("gatestream_ingest_events_consumed_total", (("topic", env.topic(et)),))] == read
            assert s[("gatestream_ingest_rows_inserted_total", (("hypertable", f"monitoring.{et.value}"),))] == per_type
        assert _sum(s, "gatestream_ingest_event_to_commit_seconds_count") > 0
        # lag is computed from the offsets stored in the database; it falls to 0
        assert wait_for(
            lambda: (
                lambda t: (
                    _sum(t, "gatestream_ingest_lag_messages") == 0
                    and any(n_ == "gatestream_ingest_lag_messages" for n_, _ in t)
                )
            )(_samples(port)),
            20,
        )
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and "partitions" in body
        assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404
        # gatestream status agrees: stored offsets cover everything, no lag
        out = subprocess.run(
            gatestream_cmd("status", "--json"), env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        rows = json.loads(out.stdout)
        assert sum(r["stored_offset"] or 0 for r in rows) == n + 1
        assert all(r["lag_messages"] == 0 and r["lag_seconds"] == 0 for r in rows)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    # JSON logs when not on a terminal; batch lines carry topic, partition and offset range
    lines = [json.loads(line) for line in (tmp_path / "ingest.log").read_text().splitlines() if line.startswith("{")]
    assert any(line["event"] == "ingest stopped" for line in lines)


def _old_rows(db_url: str, days_ago: int, n: int) -> None:
    start = datetime.now(UTC) - timedelta(days=days_ago)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO monitoring.visited_sites (event_id, organization_id, users_on_computers_id, datetime, url) "
            "SELECT gen_random_uuid(), 1 + i %% 4, 1 + i %% 30, %s + i * interval '1 minute', "
            "'https://example.com/' || i FROM generate_series(1, %s) i",
            (start, n),
        )
        conn.execute("ANALYZE monitoring.visited_sites")


def _collect(db_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in DatabaseCollector(db_url, min_interval_s=0).collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_database_collector_reports_chunks_rows_and_retention_lag(env: Env) -> None:
    _old_rows(env.database_url, days_ago=400, n=3000)  # ~2 days of rows, a year and a month ago
    m = _collect(env.database_url)
    vs = (("hypertable", "monitoring.visited_sites"),)
    assert m[("gatestream_db_up", ())] == 1
    assert m[("gatestream_db_hypertable_chunks", vs)] == 3
    assert m[("gatestream_db_hypertable_rows_estimate", vs)] == pytest.approx(3000, rel=0.2)
    # default retention is 365 days: the oldest chunk ended ~34 days past it
    lag_days = m[("gatestream_db_hypertable_retention_lag_seconds", vs)] / 86400
    assert 33 <= lag_days <= 36
    # the oldest chunk's age is its end's (a chunk can only go once all of it expired)
    assert 399 <= m[("gatestream_db_hypertable_oldest_chunk_age_seconds", vs)] / 86400 <= 400
    aw = (("hypertable", "monitoring.active_windows"),)
    assert aw not in {labels for (_, labels) in m if _ == "gatestream_db_hypertable_retention_lag_seconds"}, (
        "no chunks, no lag series"
    )
    assert m[("gatestream_db_size_bytes", ())] > 0
    assert 0 < m[("gatestream_db_disk_used_ratio", ())] < 1


def test_retention_lag_follows_the_policies_in_both_directions(env: Env) -> None:
    """Measured against the longest retention the table has (its chunks are dropped at that
    age), from monitoring.retention_policies, not against 365 days for every table."""
    _old_rows(env.database_url, days_ago=400, n=3000)
    vs = (("hypertable", "monitoring.visited_sites"),)
    lag = "gatestream_db_hypertable_retention_lag_seconds"
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        # one organization keeps 730 days: nothing is overdue (365 would say ~34 days)
        conn.execute(
            "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
            "VALUES (2, 'visited_sites', 730)"
        )
        assert _collect(env.database_url)[(lag, vs)] == 0
        # every organization 30 days: the oldest chunk is ~368 days overdue (365 would say ~34)
        conn.execute("DELETE FROM monitoring.retention_policies")
        conn.execute(
            "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
            "VALUES (NULL, 'visited_sites', 30)"
        )
        assert 366 <= _collect(env.database_url)[(lag, vs)] / 86400 <= 370


def test_database_collector_reports_the_compression_ratio(edition: Edition, edition_env: Env) -> None:
    """Community edition: chunks moved to the columnstore, the exporter reports their ratio.
    Apache edition: the server refuses the columnstore and the exporter reports no ratio
    (absent, not zero)."""
    url = edition_env.database_url
    _old_rows(url, days_ago=100, n=20000)
    vs = (("hypertable", "monitoring.visited_sites"),)
    with psycopg.connect(url, autocommit=True) as conn:
        enable = (
            "ALTER TABLE monitoring.visited_sites SET (timescaledb.enable_columnstore, "
            "timescaledb.segmentby = 'organization_id', timescaledb.orderby = 'datetime DESC')"
        )
        if edition is not Edition.COMMUNITY:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="apache"):
                conn.execute(enable)
            m = _collect(url)
            assert m[("gatestream_db_hypertable_compressed_chunks", vs)] == 0
            assert ("gatestream_db_hypertable_compression_ratio", vs) not in m
            return
        conn.execute(enable)
        for (chunk,) in conn.execute("SELECT show_chunks('monitoring.visited_sites')::text").fetchall():
            conn.execute("CALL convert_to_columnstore(%s::regclass)", (chunk,))
    m = _collect(url)
    assert m[("gatestream_db_hypertable_compressed_chunks", vs)] >= 1
    assert m[("gatestream_db_hypertable_compression_ratio", vs)] > 1.5
    before = m[("gatestream_db_hypertable_before_compression_bytes", vs)]
    assert before > m[("gatestream_db_hypertable_after_compression_bytes", vs)]


@pytest.mark.slow
def test_timescaledb_job_failures_are_exported(edition: Edition, edition_env: Env) -> None:
    """The Community edition's jobs run under TimescaleDB's scheduler: a failing one reaches the
    metrics the GatestreamJobFailures alert reads. The Apache edition has no scheduler of its
    own (add_job refuses): no job series but pg_cron's (test_pg_cron_job_failures_are_exported)."""
    url = edition_env.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE PROCEDURE public.always_fails(job_id integer, config jsonb) LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'failing on purpose'; END $$"
        )
        if edition is not Edition.COMMUNITY:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="apache"):
                conn.execute("SELECT add_job('public.always_fails', interval '1 hour')")
            assert not [k for k in _collect(url) if k[0].startswith("gatestream_db_job_")]
            return
        row = conn.execute("SELECT add_job('public.always_fails', interval '1 hour')").fetchone()
        assert row is not None
        job = int(row[0])

        def failed() -> bool:
            q = "SELECT total_failures FROM timescaledb_information.job_stats WHERE job_id = %s"
            r = conn.execute(q, (job,)).fetchone()
            return r is not None and (r[0] or 0) >= 1

        assert wait_for(failed, 90, interval=1), "TimescaleDB's scheduler did not run the job within 90 s"
    m = _collect(url)
    labels = (("job_id", str(job)), ("proc", "always_fails"))
    assert m[("gatestream_db_job_last_run_success", labels)] == 0
    assert m[("gatestream_db_job_failures_total", labels)] >= 1


# ---------------------------------------------------------------------- alert rules and dashboard
OPS = ROOT / "ops"
REQUIRED_ALERTS = {
    "GatestreamIngestLagHigh",
    "GatestreamDeadLetters",
    "GatestreamJobFailures",
    "GatestreamRetentionLag",
    "GatestreamDiskUsageHigh",
    "GatestreamNoIngest",
}


def _known_metric_names(db_url: str) -> set[str]:
    """Every series name our processes can expose (families without samples yet included)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names: set[str] = set()
    families = list(REGISTRY.collect()) + list(DatabaseCollector(db_url, min_interval_s=0).collect())
    for fam in families:
        names.update(s.name for s in fam.samples)
        names.update(fam.name + suffix for suffix in suffixes.get(fam.type, [""]))
    return names


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bgatestream_[a-z_]+", expr))


def test_alert_rules_are_valid_and_use_metrics_that_exist(db_url: str) -> None:
    rules_file = OPS / "prometheus" / "alerts.yml"
    promtool = shutil.which("promtool") or str(ROOT / ".venv" / "bin" / "promtool")
    if Path(promtool).exists():
        out = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    doc = yaml.safe_load(rules_file.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    lag = next(r for r in rules if r["alert"] == "GatestreamIngestLagHigh")
    assert "> 300" in lag["expr"], "ingest lag alert fires above 5 minutes"
    assert "> 0.8" in next(r for r in rules if r["alert"] == "GatestreamDiskUsageHigh")["expr"]
    assert "600" in next(r for r in rules if r["alert"] == "GatestreamNoIngest")["expr"]
    known = _known_metric_names(db_url)
    for r in rules:
        assert {"summary", "description"} <= set(r["annotations"]), r["alert"]
        assert r["labels"]["severity"] in {"page", "ticket"}
        missing = _metric_names_in(r["expr"]) - known
        assert not missing, f"{r['alert']} uses metrics nobody exports: {missing}"


def test_dashboard_panels_query_metrics_that_exist(db_url: str) -> None:
    dash = json.loads((OPS / "grafana" / "dashboards" / "timescaledb-performance.json").read_text())
    assert dash["title"] == "TimescaleDB Performance"
    known = _known_metric_names(db_url)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    for e in exprs:
        assert not (_metric_names_in(e) - known), e
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"kafka", "timescaledb", "prometheus", "grafana"} <= set(compose["services"])


def test_a_member_without_partitions_is_ready_and_log_lines_say_who_logs(env: Env, tmp_path: Path) -> None:
    """Readiness means "can work" (broker and database reachable): a standby member that
    owns no partition is ready, and readiness does not flap with rebalances."""
    from gatestream.settings import ProducerSettings
    from gatestream.topics import ensure_topics

    prefix = f"{env.prefix}one."
    ps = ProducerSettings(**{**env.common(), "topic_prefix": prefix})
    ensure_topics(ps, [ps.topic_for(EventType.ACTIVE_WINDOWS)], partitions=1)
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            gatestream_cmd("ingest", "--types", "active_windows", "--metrics-port", str(port)),
            env=env.environ(topic_prefix=prefix),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"m{i}.log").open("wb"),
        )  # fmt: skip
        for i, port in enumerate(ports)
    ]
    try:
        assert wait_for(lambda: all(http_get(f"http://127.0.0.1:{p}/readyz")[0] == 200 for p in ports), 40)
        settled = ["ok: 0 partitions assigned", "ok: 1 partitions assigned"]  # one member owns it, the other none

        def readyz() -> list[tuple[int, str]]:
            return [http_get(f"http://127.0.0.1:{p}/readyz") for p in ports]

        assert wait_for(lambda: sorted(body.strip() for _, body in readyz()) == settled, 40), readyz()
        bodies = readyz()
        assert all(code == 200 for code, _ in bodies), bodies
        assert sorted(body.strip() for _, body in bodies) == ["ok: 0 partitions assigned", "ok: 1 partitions assigned"]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    lines = [json.loads(line) for i in range(2) for line in (tmp_path / f"m{i}.log").read_text().splitlines()]
    assert all("host" in line and "pid" in line for line in lines)
    assigned = [line for line in lines if line["event"] == "partitions assigned"]
    assert assigned and all(line.get("member") and line.get("group") for line in assigned)


@pytest.mark.slow
def test_librdkafka_log_lines_go_through_structlog(env: Env, tmp_path: Path) -> None:
    """With the broker unreachable, librdkafka logs connection failures; in a JSON log
    every line must still be JSON."""
    log = tmp_path / "ingest.log"
    proc = subprocess.Popen(
        gatestream_cmd("ingest", "--types", "active_windows"),
        env=env.environ(bootstrap_servers=f"127.0.0.1:{free_port()}"), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        assert wait_for(lambda: '"librdkafka"' in log.read_text(), 30), "librdkafka logged nothing"
    finally:
        proc.terminate()
        proc.wait(30)
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line[:200]}")
    assert any(p.get("logger") == "librdkafka" for p in parsed), "librdkafka's lines are there, as JSON"


@pytest.mark.slow
def test_pg_cron_job_failures_are_exported(edition_env: Env) -> None:
    """The Apache edition's jobs run under pg_cron; a failing one must reach the metrics
    the GatestreamCronJobFailures alert reads, on either edition's server (the exporter does
    not ask which engine the policy consumer uses). pg_cron runs at most once a minute."""
    env = edition_env
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
    if not row or not row[0]:
        pytest.skip("pg_cron is not loaded on this server (ops/stack loads it)")
    cron_url = psycopg.conninfo.make_conninfo(env.database_url, dbname=row[0])
    name = f"gatestream:test-{env.prefix}"
    with psycopg.connect(cron_url, autocommit=True) as cron:
        cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")  # as the policy engine does on its first start
        job = cron.execute(
            "SELECT cron.schedule_in_database(%s, '* * * * *', 'SELECT 1/0', %s)", (name, row[1])
        ).fetchone()
        assert job is not None
        try:

            def failed() -> bool:
                q = "SELECT count(*) FROM cron.job_run_details WHERE jobid = %s AND status = 'failed'"
                return cron.execute(q, (job[0],)).fetchone() != (0,)

            assert wait_for(failed, 90, interval=1), "pg_cron did not run the job within 90 s"
            labels = (("job", name), ("job_id", str(job[0])))
            # as the admin scrapes, and as the exporter's own login (least privilege: pg_cron's
            # row security hides other users' jobs from it; sql/061's function shows it ours)
            tag = uuid.uuid4().hex[:8]
            login, password = f"gs_t_{tag}_exporter", secrets.token_hex(16)
            with psycopg.connect(env.database_url, autocommit=True) as admin:
                roles.create_login(admin, login, roles.EXPORTER, password)
            try:
                for url in (env.database_url, roles.login_url(env.database_url, login, password)):
                    m = _collect(url)
                    assert m[("gatestream_db_cron_job_last_run_success", labels)] == 0, url
                    assert m[("gatestream_db_cron_job_failures_total", labels)] >= 1, url
            finally:
                with psycopg.connect(env.database_url, autocommit=True) as admin:
                    roles.drop_login(admin, login)
        finally:
            cron.execute("SELECT cron.unschedule(%s)", (job[0],))


@pytest.mark.slow
def test_a_database_down_at_start_is_waited_for_and_a_wrong_one_is_one_clear_line(env: Env, tmp_path: Path) -> None:
    port = free_port()
    down = env.environ(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gatestream", log_level="debug")
    # (at debug level every attempt is a line: the first is a warning, the rest debug)
    log = tmp_path / "ingest.log"
    proc = subprocess.Popen(
        gatestream_cmd("ingest", "--metrics-port", str(port)), env=down, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        assert wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20), "alive while waiting"
        code, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and "waiting for the database" in body

        def retries() -> int:
            return log.read_text().count("database unreachable; retrying")

        assert wait_for(lambda: retries() >= 2, 30), f"{retries()} retries"
        assert proc.poll() is None, "it waits instead of exiting"
    finally:
        proc.terminate()
        proc.wait(30)
    err = log.read_text()
    assert proc.returncode == 0 and "database unreachable; retrying" in err and "Traceback" not in err
    # permanent mistakes: one clear line and a non-zero exit, at once
    missing_db = psycopg.conninfo.make_conninfo(env.database_url, dbname="no_such_database")
    cases = {
        "missing database": ({"database_url": missing_db}, "does not exist"),
        "malformed URL": ({"database_url": "postgresql://[::1"}, "database"),
        "illegal topic prefix": ({"topic_prefix": "bad prefix/"}, "topic"),
    }
    for case, (over, says) in cases.items():
        done = subprocess.run(
            gatestream_cmd("ingest"), env=env.environ(**over), cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2, f"{case}: rc {done.returncode} {done.stderr[-1000:]}"
        assert "Traceback" not in done.stderr and says in done.stderr, f"{case}: {done.stderr[-1000:]}"
