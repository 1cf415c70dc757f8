"""The PostgreSQL roles of issue 25 (sql/050, sql/051): each principal does its job as a
login in its role, and one step outside it is refused by the database."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gatestream import roles
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env, gatestream_cmd
from tests.helpers import count_all, publish, start_ingest_thread

pytestmark = pytest.mark.integration


@pytest.fixture
def logins(db_url: str) -> Iterator[dict[str, str]]:
    """role -> a URL of db_url logged in as a fresh LOGIN user in that role (dropped after), with a
    password of its own (ops/stack's server asks every TCP client for one: scram-sha-256)."""
    made: dict[str, str] = {}
    tag = uuid.uuid4().hex[:8]
    password = secrets.token_hex(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        for role in roles.ROLES:
            name = f"gs_t_{tag}_{role.removeprefix('gatestream_')}"
            roles.create_login(admin, name, role, password)
            made[role] = name
    yield {role: roles.login_url(db_url, name, password) for role, name in made.items()}
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in made.values():
            roles.drop_login(admin, name)


def _refused(url: str, statement: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        conn.execute(statement)
    return str(exc.value)


def test_each_role_does_its_job_and_is_refused_one_step_outside(db_url: str, logins: dict[str, str]) -> None:
    row = "(gen_random_uuid(), {org}, {org}, now() - interval '1 hour', 'app', 5)"
    insert = "INSERT INTO monitoring.active_windows (event_id, organization_id, users_on_computers_id, datetime, " \
             "process_name, active_time) VALUES "  # fmt: skip
    # ingest writes and reads events; it cannot delete them nor drop the hypertable
    with psycopg.connect(logins[roles.INGEST], autocommit=True) as conn:
        roles.require(conn, roles.INGEST_NEEDS)
        conn.execute(insert + ", ".join(row.format(org=o) for o in (1, 1, 2)))
        assert conn.execute("SELECT count(*) FROM monitoring.active_windows").fetchone() == (3,)
    assert "active_windows" in _refused(logins[roles.INGEST], "DELETE FROM monitoring.active_windows")
    assert "active_windows" in _refused(logins[roles.INGEST], "DROP TABLE monitoring.active_windows")
    # the exporter reads the bookkeeping, writes nothing
    with psycopg.connect(logins[roles.EXPORTER], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM gatestream.retention_resources").fetchone() == (5,)
        conn.execute("SELECT * FROM pg_stat_activity")  # pg_monitor
    _refused(logins[roles.EXPORTER], "INSERT INTO gatestream.consumer_offsets VALUES ('g', 't', 0, 0)")
    _refused(logins[roles.EXPORTER], "SELECT * FROM monitoring.active_windows")
    # a role that lacks a grant is named at start with the relation and the privilege
    with psycopg.connect(logins[roles.EXPORTER]) as conn, pytest.raises(roles.PrivilegeMissing) as missing:
        roles.require(conn, roles.INGEST_NEEDS)
    assert (missing.value.relation, missing.value.privilege) == ("monitoring.active_windows", "INSERT")
    # the policy consumer manages jobs on the hypertables (TimescaleDB's jobs API)
    with psycopg.connect(logins[roles.POLICY], autocommit=True) as conn:
        job = conn.execute("SELECT add_retention_policy('monitoring.screenshots', interval '30 days')").fetchone()
        assert job is not None
        conn.execute("SELECT alter_job(%s, schedule_interval => interval '2 hours')", (job[0],))
        conn.execute("SELECT delete_job(%s)", (job[0],))
    # the reader: its organization, through schema reader; nothing without the setting; no way round
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("CALL gatestream.refresh_dashboard_aggregates(now() - interval '2 days', now())")
    with psycopg.connect(logins[roles.READER], autocommit=True) as conn:
        counts = "SELECT (SELECT count(*) FROM reader.active_windows), (SELECT sum(total_windows) FROM reader.active_windows_app_daily)"  # noqa: E501
        assert conn.execute(counts).fetchone() == (0, None)
        conn.execute("SET gatestream.organization_id = '1'")
        assert conn.execute(counts).fetchone() == (2, 2)
        conn.execute("SET gatestream.organization_id = '2'")
        assert conn.execute(counts).fetchone() == (1, 1)
        chunk = conn.execute(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'active_windows' LIMIT 1"
        ).fetchone()
    assert chunk is not None
    for relation in ("monitoring.active_windows", "monitoring.active_windows_app_daily", chunk[0]):
        _refused(logins[roles.READER], f"SELECT count(*) FROM {relation}")  # noqa: S608 - our names


def test_ingest_runs_as_its_role_and_a_role_without_grants_exits_2(
    env: Env, logins: dict[str, str], tmp_path: Path
) -> None:
    events = list(generate(200, Fleet(orgs=2, devices_per_org=5), list(EventType), seed=5))
    publish(env, tmp_path / "spool.sqlite3", events)
    settings = env.ingest(database_url=logins[roles.INGEST], stop_after_idle_s=1.5)
    ing, t = start_ingest_thread(settings)
    t.join(60)
    assert not t.is_alive(), "ingest did not go idle"
    assert sum(count_all(env.database_url).values()) == 200 and ing.summary.dead_lettered == 0

    done = subprocess.run(
        gatestream_cmd("ingest", "--stop-after-idle", "1"),
        env=env.environ(database_url=logins[roles.READER]), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "gatestream ingest: role gs_t_" in last and "no INSERT privilege on monitoring.active_windows" in last
