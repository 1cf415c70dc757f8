"""What differs between TimescaleDB's editions, on both: a fresh database migrates in one
run, the policy engine's refusals are one line, the jobs engine leaves other tables' jobs
alone, ``gatestream show`` names the edition, and a database made with 2.19.3 (Debian's
Apache build) keeps its rows through ``ALTER EXTENSION timescaledb UPDATE`` to the
Community edition's build."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from gatestream.consumers.policy.consumer import PolicyConsumer
from gatestream.edition import Edition
from gatestream.migrate import discover, migrate
from tests.conftest import Env, _Templates, edition_server, run_gatestream
from tests.helpers import unschedule_cron_jobs, wait_for
from tests.services import Services

pytestmark = pytest.mark.integration

TSL_MIGRATIONS = [m.name for m in discover(edition=Edition.COMMUNITY) if m.name.startswith("tsl/")]
OLD_VERSION = "2.19.3"  # Debian's Apache-only build: what an existing stack's databases were made with


def _admin(url: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname="postgres")


@contextmanager
def _plain_database(server_url: str) -> Iterator[str]:
    """A database made with a plain CREATE DATABASE (no extension, nothing migrated), dropped after."""
    name = f"gs_plain_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # our own name, not input
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        yield url
    finally:
        unschedule_cron_jobs(url)
        with psycopg.connect(_admin(server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _environ(services: Services, url: str) -> dict[str, str]:
    return Env(services, url, f"t{uuid.uuid4().hex[:8]}.").environ()


def _recorded_tsl(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name FROM gatestream.schema_migrations WHERE starts_with(name, 'tsl/') ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _daily_aggregate(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('monitoring.active_windows_daily')::text").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def test_one_migrate_on_a_fresh_database_is_enough(edition: Edition, services: Services, templates: _Templates) -> None:
    """The edition is known only once sql/001 created the extension: the same run then
    applies sql/tsl/ (Community) or leaves it out (Apache), and the policy engine works."""
    server = edition_server(services, templates, edition)
    assert server is not None
    with _plain_database(server) as url:
        environ = _environ(services, url)
        migrated = run_gatestream(environ, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        assert _daily_aggregate(url) == "monitoring.active_windows_daily", "the same relation on both editions"
        if edition is Edition.COMMUNITY:
            assert _recorded_tsl(url) == TSL_MIGRATIONS, "one db migrate applies the Community edition's migrations"
        else:  # the Apache edition has no continuous aggregates; sql/tsl/ waits for the Community one
            assert _recorded_tsl(url) == []
        plan = run_gatestream(environ, "policy", "plan", "--json")
        assert plan.returncode == 0, plan.stderr[-2000:]
        assert "Traceback" not in plan.stderr
        shown = json.loads(plan.stdout)
        assert shown["edition"] == edition.value
        assert shown["engine"] == ("timescaledb-jobs" if edition is Edition.COMMUNITY else "pg_cron")


def _one_line(done: Any) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    return str(lines[0])


def test_a_refusal_of_the_policy_engine_is_one_line(edition: Edition, edition_env: Env) -> None:
    url = edition_env.database_url
    environ = edition_env.environ()
    with psycopg.connect(url, autocommit=True) as conn:
        # a policy table the reconciler refuses (a writer bypassed the constraints)
        conn.execute("ALTER TABLE monitoring.retention_policies DROP CONSTRAINT retention_policies_resource_type_fkey")
        conn.execute("INSERT INTO monitoring.retention_policies (resource_type, retention_days) VALUES ('nope', 1)")
        refused = run_gatestream(environ, "policy", "apply")
        assert refused.returncode == 1
        assert _one_line(refused).startswith("gatestream policy apply: retention_policies has rows that cannot be")
        conn.execute("DELETE FROM monitoring.retention_policies")
        # the edition's migrations not applied (a database migrated before the upgrade, or
        # before the Apache edition had migrations of its own)
        folder, name = ("tsl/", "Community") if edition is Edition.COMMUNITY else ("apache/", "Apache")
        conn.execute("DELETE FROM gatestream.schema_migrations WHERE starts_with(name, %s)", (folder,))
        missing = run_gatestream(environ, "policy", "plan")
        assert missing.returncode == 1
        assert _one_line(missing) == (
            f"gatestream policy plan: the {name} edition's migrations are not applied: run gatestream db migrate"
        )
        assert run_gatestream(environ, "db", "migrate").returncode == 0
    plan = run_gatestream(environ, "policy", "plan")
    assert plan.returncode == 0, plan.stderr[-2000:]


def _foreign_jobs(conn: psycopg.Connection[Any], edition: Edition, url: str) -> dict[int, str]:
    """Another application's jobs in our database, by id: a hypertable public.app_metrics with a
    30-day retention and a columnstore (compression) policy (Community edition), or a pg_cron
    job of its own (Apache edition, which has no job scheduler)."""
    conn.execute("CREATE TABLE public.app_metrics (time timestamptz NOT NULL, device_id integer, value float8)")
    conn.execute("SELECT create_hypertable('public.app_metrics', 'time')")
    if edition is Edition.COMMUNITY:
        conn.execute("SELECT add_retention_policy('public.app_metrics', INTERVAL '30 days')")
        conn.execute(
            "ALTER TABLE public.app_metrics SET (timescaledb.enable_columnstore, timescaledb.segmentby = 'device_id')"
        )
        conn.execute("CALL add_columnstore_policy('public.app_metrics', after => INTERVAL '7 days')")
        rows = conn.execute(
            "SELECT job_id, proc_name FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = 'public' AND hypertable_name = 'app_metrics'"
        ).fetchall()
        assert sorted(str(p) for _, p in rows) == ["policy_compression", "policy_retention"]
        return {int(j): str(p) for j, p in rows}
    row = conn.execute("SELECT current_setting('cron.database_name'), current_database()").fetchone()
    assert row is not None
    with psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname=row[0]), autocommit=True) as cron:
        cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        job = cron.execute(
            "SELECT cron.schedule_in_database('app-metrics-vacuum', '0 3 * * *', 'VACUUM public.app_metrics', %s)",
            (row[1],),
        ).fetchone()
    assert job is not None
    return {int(job[0]): "app-metrics-vacuum"}


def _still_there(conn: psycopg.Connection[Any], edition: Edition, url: str, jobs: dict[int, str]) -> dict[int, str]:
    if edition is Edition.COMMUNITY:
        rows = conn.execute(
            "SELECT job_id, proc_name FROM timescaledb_information.jobs WHERE job_id = ANY(%s)", (list(jobs),)
        ).fetchall()
        return {int(j): str(p) for j, p in rows}
    row = conn.execute("SELECT current_setting('cron.database_name')").fetchone()
    assert row is not None
    with psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname=row[0]), autocommit=True) as cron:
        rows = cron.execute("SELECT jobid, jobname FROM cron.job WHERE jobid = ANY(%s)", (list(jobs),)).fetchall()
    return {int(j): str(n) for j, n in rows}


def test_another_tables_jobs_survive_every_reconcile_and_are_listed_as_foreign(
    edition: Edition, edition_env: Env
) -> None:
    url = edition_env.database_url
    environ = edition_env.environ()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            theirs = _foreign_jobs(conn, edition, url)
            plan = run_gatestream(environ, "policy", "plan", "--json")
            assert plan.returncode == 0, plan.stderr[-2000:]
            shown = json.loads(plan.stdout)
            assert not [c for c in shown["changes"] if "app_metrics" in c or "app-metrics" in c], shown["changes"]
            if edition is Edition.COMMUNITY:
                by_proc = {p: j for j, p in theirs.items()}
                assert sorted(shown["foreign"]) == [
                    f"compression:public.app_metrics (job {by_proc['policy_compression']})",
                    f"retention:public.app_metrics (job {by_proc['policy_retention']})",
                ]
            else:
                assert shown["foreign"] == [f"app-metrics-vacuum (job {next(iter(theirs))})"]
            applied = run_gatestream(environ, "policy", "apply")
            assert applied.returncode == 0, applied.stderr[-2000:]
            assert "foreign" in applied.stdout
            assert _still_there(conn, edition, url, theirs) == theirs, "policy apply removed another table's job"
            # the policy consumer: its startup reconcile and a periodic one
            pc = PolicyConsumer(edition_env.policy(full_reconcile_interval_s=1))
            t = threading.Thread(target=pc.run, daemon=True)
            t.start()
            try:
                assert wait_for(lambda: pc.runs >= 2, 60), "no periodic reconcile"
            finally:
                pc.request_stop()
                t.join(20)
            assert pc.last_plan is not None and pc.last_plan.changes == []
            assert [j.job_id for j in pc.last_plan.foreign] == sorted(theirs)
            assert _still_there(conn, edition, url, theirs) == theirs, "the policy consumer removed another table's job"
    finally:
        unschedule_cron_jobs(url)


def test_show_names_the_edition_and_version(edition: Edition, edition_env: Env) -> None:
    with psycopg.connect(edition_env.database_url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert row is not None
    shown = run_gatestream(edition_env.environ(), "show")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines()[0] == f"TimescaleDB {row[0]} ({edition.value} edition)"


# ---------------------------------------------------------------------- the upgrade of an existing stack
@pytest.fixture
def community_server(services: Services, templates: _Templates) -> str:
    server = edition_server(services, templates, Edition.COMMUNITY)
    if server is None:  # the Apache fallback of ops/stack: one version installed, nothing to upgrade to
        pytest.skip("no server runs the Community edition here (ops/stack fell back to Debian's Apache edition)")
    with psycopg.connect(_admin(server)) as conn:
        have = conn.execute(
            "SELECT default_version, %s = ANY(array_agg(version)) FROM pg_available_extension_versions "
            "JOIN pg_available_extensions USING (name) WHERE name = 'timescaledb' GROUP BY 1",
            (OLD_VERSION,),
        ).fetchone()
    assert have is not None and have[1], f"TimescaleDB {OLD_VERSION} is not installed beside {have}"
    return server


@pytest.mark.slow
def test_a_database_made_with_2_19_3_keeps_its_rows_through_the_update_to_the_community_edition(
    community_server: str, services: Services
) -> None:
    with _plain_database(community_server) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE EXTENSION timescaledb VERSION '{OLD_VERSION}'")  # a constant, not input
        # today's stack: Debian's Apache build, migrated (sql/tsl/ not applied there), rows ingested
        applied = migrate(url)
        assert not [m for m in applied if m.startswith("tsl/")]
        now = datetime.now(UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT current_setting('timescaledb.license')").fetchone() == ("apache",)
            conn.execute(
                """INSERT INTO monitoring.active_windows (event_id, organization_id, users_on_computers_id, datetime,
                                                          title, active_time)
                   SELECT gen_random_uuid(), 1 + k %% 4, 10 + k %% 7, %s - make_interval(hours => k), 'w', k %% 60
                     FROM generate_series(0, 24 * 120 - 1) k""",
                (now,),
            )
            before = conn.execute("SELECT count(*), sum(active_time) FROM monitoring.active_windows").fetchone()
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        # the update: the first statement of a fresh session
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER EXTENSION timescaledb UPDATE")
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            default = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            assert version == default and version != (OLD_VERSION,)
            assert conn.execute("SELECT current_setting('timescaledb.license')").fetchone() == ("timescale",)
        assert migrate(url) == TSL_MIGRATIONS, "the second migrate adds exactly the Community edition's migrations"
        assert migrate(url) == []
        environ = _environ(services, url)
        applied_jobs = run_gatestream(environ, "policy", "apply")
        assert applied_jobs.returncode == 0, applied_jobs.stderr[-2000:]
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*), sum(active_time) FROM monitoring.active_windows").fetchone() == before
            job = conn.execute(
                "SELECT job_id, config ->> 'compress_after' FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_compression' AND hypertable_schema = 'monitoring' "
                "AND hypertable_name = 'active_windows'"
            ).fetchone()
            assert job is not None and job[1] == "60 days", job
            settings = conn.execute(
                "SELECT segmentby FROM timescaledb_information.hypertable_columnstore_settings "
                "WHERE hypertable = 'monitoring.active_windows'::regclass"
            ).fetchone()
            assert settings == ("organization_id",)
            # the policy's job compresses what is older than 60 days; every row is still there
            with contextlib.suppress(psycopg.errors.RaiseException):  # TimescaleDB's scheduler may run it too
                conn.execute("CALL run_job(%s)", (job[0],))
            old_uncompressed = (
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'monitoring' "
                "AND hypertable_name = 'active_windows' AND NOT is_compressed "
                "AND range_end < now() - interval '60 days'"
            )
            assert wait_for(lambda: conn.execute(old_uncompressed).fetchone() == (0,), 120)
            compressed = conn.execute(
                "SELECT count(*) FILTER (WHERE is_compressed), count(*) FILTER (WHERE is_compressed "
                "AND range_start > now() - interval '59 days') FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = 'monitoring' AND hypertable_name = 'active_windows'"
            ).fetchone()
            assert compressed is not None and compressed[0] >= 55 and compressed[1] == 0, compressed
            assert conn.execute("SELECT count(*), sum(active_time) FROM monitoring.active_windows").fetchone() == before
        replanned = run_gatestream(environ, "policy", "plan", "--json")
        assert replanned.returncode == 0 and json.loads(replanned.stdout)["changes"] == [], replanned.stdout
