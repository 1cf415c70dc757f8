"""The PostgreSQL roles of issue 25 (sql/050, sql/051): each principal does its job as a
login in its role, and one step outside it is refused by the database."""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from gatestream import roles
from gatestream.consumers.deadletter import Redriven, mark_redriven
from gatestream.consumers.offsets import advance_offsets
from gatestream.consumers.policy.consumer import PolicyConsumer
from gatestream.consumers.policy.reconcile import make_engine, make_plan, reconcile
from gatestream.edition import Edition
from gatestream.migrate import SQL_DIR
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env, gatestream_cmd
from tests.helpers import count_all, publish, start_ingest_thread, unschedule_cron_jobs, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def logins(db_url: str) -> Iterator[dict[str, str]]:
    """role -> a URL of db_url logged in as a fresh LOGIN user in that role (dropped after), with a
    password of its own (ops/stack's server asks every TCP client for one: scram-sha-256)."""
    yield from _logins(db_url)


@pytest.fixture
def edition_logins(edition_db_url: str) -> Iterator[dict[str, str]]:
    """As ``logins``, on the database of the ``edition`` under test."""
    yield from _logins(edition_db_url)


def _logins(db_url: str) -> Iterator[dict[str, str]]:
    made: dict[str, str] = {}
    tag = uuid.uuid4().hex[:8]
    password = secrets.token_hex(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        for role in roles.ROLES:
            name = f"gs_t_{tag}_{role.removeprefix('gatestream_')}"
            roles.create_login(admin, name, role, password)
            made[role] = name
    yield {role: roles.login_url(db_url, name, password) for role, name in made.items()}
    unschedule_cron_jobs(db_url)  # pg_cron's jobs of a login go with it (they are its own)
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
    # offsets: each principal its own rows (sql/057); a row nobody has taken yet (the admin's)
    # goes to the first that moves it
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("INSERT INTO gatestream.consumer_offsets VALUES ('gi', 't', 1, 3)")
    for role, group in ((roles.INGEST, "gi"), (roles.REPLAY, "gr"), (roles.POLICY, "gp")):
        with psycopg.connect(logins[role], autocommit=True) as conn, conn.transaction():
            advance_offsets(conn, group, {("t", 0): (None, 5), **({("t", 1): (3, 4)} if group == "gi" else {})})
            advance_offsets(conn, group, {("t", 0): (5, 9)})
    with psycopg.connect(logins[roles.INGEST], autocommit=True) as conn:
        mine = "SELECT consumer_group, partition, next_offset, principal FROM gatestream.consumer_offsets ORDER BY 2"
        assert conn.execute(mine).fetchall() == [("gi", 0, 9, roles.INGEST), ("gi", 1, 4, roles.INGEST)]
        moved = conn.execute("UPDATE gatestream.consumer_offsets SET next_offset = 0 WHERE consumer_group = 'gr'")
        assert moved.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO gatestream.consumer_offsets VALUES ('gr', 't', 1, 0, now(), 'gatestream_replay')")
    with psycopg.connect(logins[roles.POLICY], autocommit=True) as conn:
        assert conn.execute("UPDATE gatestream.consumer_offsets SET next_offset = next_offset").rowcount == 1
    with psycopg.connect(logins[roles.REPLAY], autocommit=True) as conn:  # a member of ingest: its rows too
        assert conn.execute("DELETE FROM gatestream.consumer_offsets WHERE consumer_group = 'gp'").rowcount == 0
    with psycopg.connect(db_url, autocommit=True) as admin:
        left = admin.execute("SELECT consumer_group, principal FROM gatestream.consumer_offsets ORDER BY 1, partition")
        assert left.fetchall() == [
            ("gi", roles.INGEST),
            ("gi", roles.INGEST),
            ("gp", roles.POLICY),
            ("gr", roles.REPLAY),
        ]
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
    # the reader: its organization, through schema reader; nothing without the setting; no way round.
    # The setting is the transaction's (set_config(..., true)), as behind PgBouncer in transaction mode.
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("CALL gatestream.refresh_dashboard_aggregates(now() - interval '2 days', now())")
        for org, gateway in ((1, uuid.uuid4()), (1, uuid.uuid4()), (2, uuid.uuid4())):
            admin.execute(
                "INSERT INTO monitoring.gateway_instances (id, organization_id, name, api_key) VALUES (%s, %s, %s, %s)",
                (gateway, org, f"gw-{gateway}", f"secret-{gateway}"),
            )
            admin.execute(
                "INSERT INTO monitoring.gateway_status_snapshots (event_id, organization_id, gateway_id, timestamp, "
                "cpu_usage, disk_usage, memory_usage, queue_depth, connected_agents) "
                "SELECT gen_random_uuid(), %s, %s, now() - make_interval(days => d), d, 1, 1, 0, d "
                "FROM generate_series(1, 3) d",
                (org, gateway),
            )
    with psycopg.connect(logins[roles.READER], autocommit=True) as conn:
        counts = "SELECT (SELECT count(*) FROM reader.active_windows), (SELECT sum(total_windows) FROM reader.active_windows_app_daily)"  # noqa: E501
        latest = "SELECT count(*), sum(connected_agents), count(DISTINCT organization_id) FROM reader.gateways_latest"
        assert conn.execute(counts).fetchone() == (0, None)
        assert conn.execute(latest).fetchone() == (0, None, 0)
        for reader_org, seen, gateways in (("1", (2, 2), (2, 2, 1)), ("2", (1, 1), (1, 1, 1))):
            with conn.transaction():
                conn.execute("SELECT set_config('gatestream.organization_id', %s, true)", (reader_org,))
                assert conn.execute(counts).fetchone() == seen
                assert conn.execute(latest).fetchone() == gateways  # each gateway's newest snapshot (1 agent)
            assert conn.execute(counts).fetchone() == (0, None)  # the setting ended with its transaction
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


def test_the_policy_role_reconciles_jobs_without_the_owners_powers(
    edition: Edition, edition_env: Env, edition_logins: dict[str, str]
) -> None:
    """gatestream_policy is no member of gatestream_owner (sql/054): it adds, alters and deletes
    gatestream's jobs through the owner's wrappers (Community edition, sql/tsl/054) or as its own
    pg_cron jobs whose commands run as the owner (Apache edition, apache/054); its jobs run; it
    is refused DROP TABLE, DELETE of event rows, a job that is not gatestream's and a routine
    called on a table that is not gatestream's."""
    url, admin_url = edition_logins[roles.POLICY], edition_env.database_url
    with psycopg.connect(admin_url, autocommit=True) as admin:
        # Roles are cluster-wide: a checkout whose sql/050 is the first form (before the merge of
        # this branch) grants the membership again whenever it migrates a database on this server.
        # What 054 does, done here too, so that the checks below are this checkout's.
        admin.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_auth_members WHERE roleid = 'gatestream_owner'::regrole "
            "AND member = 'gatestream_policy'::regrole) THEN REVOKE gatestream_owner FROM gatestream_policy; "
            "END IF; END $$"
        )
        cron_db = admin.execute("SELECT current_setting('cron.database_name', true)").fetchone()
        admin.execute(
            "INSERT INTO monitoring.active_windows (event_id, organization_id, users_on_computers_id, datetime, title) "
            "SELECT gen_random_uuid(), 1, 10, now() - make_interval(days => d, hours => 12), 'w' "
            "FROM generate_series(0, 49) d"
        )
        if edition is Edition.APACHE:  # what pg_cron's installer grants in its database (apache/055)
            assert cron_db is not None and cron_db[0]
            cron_url = psycopg.conninfo.make_conninfo(admin_url, dbname=cron_db[0])
            with psycopg.connect(cron_url, autocommit=True) as cron:
                cron.execute((SQL_DIR / "apache" / "055_policy_cron_grants.sql").read_text().encode())
                foreign = cron.execute(
                    "SELECT cron.schedule_in_database('someone-elses', '0 3 * * *', 'SELECT 1', %s)",
                    (psycopg.conninfo.conninfo_to_dict(admin_url)["dbname"],),
                ).fetchone()
        else:
            admin.execute(
                "CREATE PROCEDURE public.someone_elses(job_id integer, config jsonb) LANGUAGE sql AS 'SELECT 1'"
            )
            foreign = admin.execute("SELECT add_job('public.someone_elses', interval '1 day')").fetchone()
        assert foreign is not None
    with psycopg.connect(url, autocommit=True) as conn:
        roles.require(conn, roles.POLICY_NEEDS)
        assert conn.execute("SELECT pg_has_role(current_user, 'gatestream_owner', 'MEMBER')").fetchone() == (False,)
        settings = edition_env.policy(database_url=url)
        engine = make_engine(conn, settings)
        engine.prepare()
        first = reconcile(conn, settings, engine, with_impact=False)  # adds every job
        assert first.changes and len(engine.actual()) == len(first.state.jobs)
        sweep = next(job for key, job in engine.actual().items() if key.startswith("presence-sweep:"))
        engine.delete(sweep)
        assert sweep.key not in engine.actual()
        shorter = edition_env.policy(database_url=url, default_retention_days=30)
        second = reconcile(conn, shorter, engine, with_impact=False)  # alters the retention jobs, adds the sweep
        assert {c.action for c in second.changes} == {"alter", "add"}, second.changes
        assert make_plan(conn, shorter, engine).changes == []
        if edition is Edition.APACHE:  # its jobs run as it (pg_cron): their commands are the owner's
            for key, job in engine.actual().items():
                if key.startswith(("retention:", "row-retention:", "presence-sweep:", "aggregate-refresh:")):
                    engine.run_now(job)
            with psycopg.connect(admin_url) as admin:  # the policy role cannot read event rows
                assert admin.execute("SELECT count(*) FROM monitoring.active_windows").fetchone() == (30,)  # < 30 d
    if edition is Edition.COMMUNITY:  # the consumer itself as the policy login: reconciles, dead-letters, its offsets
        _policy_consumer_as_its_role(edition_env, url, admin_url)
    # one step outside
    refused = [(url, s) for s in (
        "DROP TABLE monitoring.active_windows",
        "DELETE FROM monitoring.active_windows",
        "SELECT count(*) FROM monitoring.active_windows",  # no event row, not even read
        "CALL gatestream.drop_expired_chunks('gatestream.consumer_offsets', 1)",
        "SELECT gatestream.delete_expired_batch('gatestream.consumer_offsets', '-infinity', now() - interval '2 days', "
        "'{}', NULL, 10)",
    )]  # fmt: skip
    if edition is Edition.APACHE:  # pg_cron: another user's job is not found
        refused.append(
            (
                roles.login_url(
                    cron_url, roles.url_user(url) or "", str(psycopg.conninfo.conninfo_to_dict(url)["password"])
                ),
                f"SELECT cron.unschedule({int(foreign[0])})",
            )
        )
    else:
        refused += [(url, s) for s in (
            f"SELECT gatestream.policy_delete_job({int(foreign[0])})", f"SELECT delete_job({int(foreign[0])})",
            "SELECT gatestream.policy_add_retention('gatestream.consumer_offsets', '1 day', '1 day')",
        )]  # fmt: skip
    for where, statement in refused:
        with psycopg.connect(where, autocommit=True) as conn, pytest.raises(psycopg.Error) as exc:
            conn.execute(statement.encode())
        assert isinstance(exc.value, psycopg.errors.InsufficientPrivilege) or "could not find valid entry" in str(
            exc.value
        ), (statement, exc.value)
    # the job that is not gatestream's is still there (the fixture's teardown removes pg_cron's)
    where, jobs = (
        (cron_url, "cron.job WHERE jobid")
        if edition is Edition.APACHE
        else (admin_url, "timescaledb_information.jobs WHERE job_id")
    )
    with psycopg.connect(where, autocommit=True) as admin:
        assert admin.execute(f"SELECT count(*) FROM {jobs} = %s", (foreign[0],)).fetchone() == (1,)  # noqa: S608 - ours


def _policy_consumer_as_its_role(env: Env, url: str, admin_url: str) -> None:
    settings = env.policy(database_url=url, full_reconcile_interval_s=3600)
    pc = PolicyConsumer(settings)  # its require() passes
    t = threading.Thread(target=pc.run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: pc.runs >= 1, 30), "no startup reconcile"
        runs = pc.runs
        p = Producer(env.services.kafka_conf())  # the suite's (admin's) user on a secured stack
        p.produce(settings.policy_topic, value=b'{"resource_type": "nope", "op": "set"}')
        assert p.flush(10) == 0
        assert wait_for(lambda: pc.runs > runs, 40), "the change event was not handled"
    finally:
        pc.request_stop()
        t.join(20)
    with psycopg.connect(admin_url) as admin:
        group = settings.policy_group_id
        assert admin.execute(
            "SELECT count(*) FROM gatestream.dead_letters WHERE consumer_group = %s", (group,)
        ).fetchone() == (1,)
        stored = admin.execute("SELECT principal FROM gatestream.consumer_offsets WHERE consumer_group = %s", (group,))
        assert stored.fetchall() == [(roles.POLICY,)]


def test_every_command_checks_its_role_at_start(env: Env, logins: dict[str, str]) -> None:
    """replay, the policy consumer and `policy apply`, the exporter, import and dlq redrive each
    check their privileges before they do anything: as a role without the grants (the reader),
    one line naming it and exit 2. The roles they run as pass (import and redrive: replay), and
    replay can write what import and redrive write (sql/055)."""
    for role, needs in ((roles.REPLAY, roles.REPLAY_NEEDS), (roles.REPLAY, roles.IMPORT_NEEDS),
                        (roles.REPLAY, roles.REDRIVE_NEEDS), (roles.POLICY, roles.POLICY_NEEDS),
                        (roles.EXPORTER, roles.EXPORTER_NEEDS)):  # fmt: skip
        with psycopg.connect(logins[role]) as conn:
            roles.require(conn, needs)
    with psycopg.connect(logins[roles.REPLAY], autocommit=True) as conn:
        mark_redriven(conn, [Redriven(("t", 0, 7), "bad-avro", "g", None)])
        mark_redriven(conn, [Redriven(("t", 0, 7), "bad-avro", "g", None)])  # again: the mark moves
        assert conn.execute("SELECT redrives FROM gatestream.dead_letters").fetchone() == (2,)
        for _ in range(2):  # a reject seen again is updated
            conn.execute("INSERT INTO gatestream.import_rejects VALUES ('s', 't', 'u', 1, 'r', 'd') ON CONFLICT "
                         "(source, source_table, target_table, pk) DO UPDATE SET reason = 'r2'")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    reader = logins[roles.READER]
    commands = {
        "replay": ("replay", "--from", "-1h"),
        "policy-consumer": ("policy-consumer",),
        "policy apply": ("policy", "apply"),
        "db": ("db", "exporter", "--port", port),
        "import": ("import", "--source-url", reader, "--source-table", "public.legacy", "--target", "active_windows"),
        "dlq": ("dlq", "redrive", "--all"),
    }
    running = {
        name: subprocess.Popen(
            gatestream_cmd(*argv), env=env.environ(database_url=reader), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for name, argv in commands.items()
    }  # fmt: skip
    for name, proc in running.items():
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert proc.returncode == 2, (name, err)
        assert last.startswith(f"gatestream {name.split()[0]}: role gs_t_") and (
            " privilege on " in last or " not a member of " in last
        ), (
            name,
            last,
        )


def test_a_database_that_applied_the_first_050_migrates(db_url: str) -> None:
    """050 was amended (it no longer makes gatestream_policy a member of gatestream_owner; 054
    revokes it where the first form granted it): a database that recorded the first form's
    checksum migrates and records the new one; any other edit is still refused."""
    from gatestream.migrate import AMENDED, MigrationError, migrate

    (first,) = AMENDED["050_roles.sql"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        now = conn.execute("SELECT checksum FROM gatestream.schema_migrations WHERE name = '050_roles.sql'").fetchone()
        conn.execute("UPDATE gatestream.schema_migrations SET checksum = %s WHERE name = '050_roles.sql'", (first,))
        assert migrate(db_url) == []
        again = conn.execute(
            "SELECT checksum FROM gatestream.schema_migrations WHERE name = '050_roles.sql'"
        ).fetchone()
        assert again == now
        conn.execute("UPDATE gatestream.schema_migrations SET checksum = 'edited' WHERE name = '050_roles.sql'")
    with pytest.raises(MigrationError, match="050_roles.sql was applied with different content"):
        migrate(db_url)
