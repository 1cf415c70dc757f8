"""The principals of issue 25 as the logins the stack gives them (ops/stack env PRINCIPAL):
what the principal table marked untested. A reader never sees a gateway's API key (sql/058);
a whole `gatestream replay` runs as the replay principal, database and Kafka (its login and its
SCRAM user); the group roles' settings reach their logins (sql/059); migrations run as a member of
gatestream_owner once a DBA has done ops/postgres/before-migrate.sql."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AclBindingFilter, AdminClient  # type: ignore[attr-defined]

from gatestream import roles
from gatestream.consumers.deadletter import Redriven, mark_redriven
from gatestream.kafka_acls import Acl, create
from gatestream.producers.events import ActiveWindow
from gatestream.schemas import EventType
from tests.conftest import Env, gatestream_cmd
from tests.helpers import count_rows, private_postgres, publish, start_ingest_thread
from tests.integration.test_roles import _logins, _refused
from tests.services import ROOT, Services, _from_env_file

pytestmark = pytest.mark.integration

AW = EventType.ACTIVE_WINDOWS


def _stack_principal(services: Services, principal: str) -> dict[str, str]:
    """What `ops/stack env PRINCIPAL` prints (.stack/env.PRINCIPAL), or a skip where the
    services are not ops/stack's."""
    path = Path(os.environ.get("GATESTREAM_STACK_DIR", ROOT / ".stack")) / f"env.{principal}"
    if services.source != "ops/stack" or not path.exists():
        pytest.skip(f"no {path}: the principals' logins are ops/stack's (ops/stack up writes them)")
    return _from_env_file(path)


def _on_database(url: str, like: str) -> str:
    """``url`` (a principal's, on the stack's database) on the database of ``like`` (the test's clone)."""
    return psycopg.conninfo.make_conninfo(url, dbname=psycopg.conninfo.conninfo_to_dict(like)["dbname"])


@pytest.fixture
def logins(db_url: str) -> Iterator[dict[str, str]]:
    yield from _logins(db_url)


def test_a_reader_never_sees_a_gateways_api_key_and_its_login_plans_each_query(
    services: Services, db_url: str, logins: dict[str, str]
) -> None:
    """sql/058: reader.gateway_instances has no api_key (selecting it is an error, not an
    empty column), the reader still sees its organization's gateways, the owner still has the
    keys. sql/059: the reader's plan_cache_mode (set on gatestream_reader by sql/053) is what a
    reader's login runs with, for a login made now (roles.create_login) and for the stack's
    gs_reader (made before sql/059: the migration gave it)."""
    mine, other = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as admin:
        for gateway, org in ((mine, 1), (other, 2)):
            admin.execute(
                "INSERT INTO monitoring.gateway_instances (id, organization_id, name, api_key) VALUES (%s, %s, %s, %s)",
                (gateway, org, f"gw-{org}", f"secret-{gateway}"),
            )
        admin.execute("GRANT SELECT ON reader.gateway_instances TO gatestream_exporter")  # a DBA's grant...
        admin.execute((ROOT / "sql" / "058_reader_gateways_without_api_key.sql").read_text().encode())  # ...kept
        assert admin.execute(
            "SELECT has_table_privilege('gatestream_exporter', 'reader.gateway_instances', 'SELECT'), "
            "has_table_privilege('gatestream_reader', 'reader.gateway_instances', 'SELECT')"
        ).fetchone() == (True, True)
    with psycopg.connect(logins[roles.READER], autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('gatestream.organization_id', '1', true)")
        assert conn.execute("SELECT id, name FROM reader.gateway_instances").fetchall() == [(mine, "gw-1")]
        columns = conn.execute("SELECT * FROM reader.gateway_instances LIMIT 0").description or []
        assert "api_key" not in [c.name for c in columns] and "name" in [c.name for c in columns]
        with pytest.raises(psycopg.errors.UndefinedColumn), conn.transaction():
            conn.execute("SELECT api_key FROM reader.gateway_instances")
    assert "gateway_instances" in _refused(logins[roles.READER], "SELECT api_key FROM monitoring.gateway_instances")
    with psycopg.connect(db_url) as admin:
        key = admin.execute("SELECT api_key FROM monitoring.gateway_instances WHERE id = %s", (mine,)).fetchone()
        assert key == (f"secret-{mine}",)
    # plan_cache_mode: the login's, not only the group role's
    stack_reader = _stack_principal(services, "reader")["GATESTREAM_DATABASE_URL"]
    for url in (logins[roles.READER], _on_database(stack_reader, db_url)):
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW plan_cache_mode").fetchone() == ("force_custom_plan",), url.split("password")[0]
    with psycopg.connect(logins[roles.INGEST]) as conn:  # the other roles' logins: unchanged
        assert conn.execute("SHOW plan_cache_mode").fetchone() == ("auto",)


@pytest.fixture
def replay_principal(services: Services, env: Env) -> Iterator[dict[str, str]]:
    """The stack's replay principal (ops/stack env replay), on this test's database, with the
    ACLs `gatestream kafka acls ensure` gives it on the stack's topics given on this test's
    (READ its event topic, WRITE its dead-letter topic; its groups' prefix ACL is the stack's),
    removed after."""
    found = _stack_principal(services, "replay")
    if not found.get("GATESTREAM_KAFKA_SASL_USERNAME"):
        pytest.skip("the stack's broker is plain (GATESTREAM_KAFKA_PLAIN=1): no Kafka user to run replay as")
    acls = [
        Acl("User:replay", "TOPIC", "LITERAL", env.topic(AW), "READ"),
        Acl("User:replay", "TOPIC", "LITERAL", env.dlq_topic, "WRITE"),
    ]
    admin = AdminClient(services.kafka_conf())
    create(admin, acls)
    try:
        yield {**found, "GATESTREAM_DATABASE_URL": _on_database(found["GATESTREAM_DATABASE_URL"], env.database_url)}
    finally:
        exact = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                  b.permission_type) for b in (a.binding() for a in acls)]  # fmt: skip
        for fut in admin.delete_acls(exact, request_timeout=15).values():
            fut.result()


def test_a_whole_replay_runs_as_the_replay_login_and_backfills_without_duplicates(
    env: Env, replay_principal: dict[str, str], tmp_path: Path
) -> None:
    """`gatestream replay` (the CLI) with the replay principal's database URL (gs_replay, TLS,
    its passfile) and Kafka user: a deleted slice comes back, a second replay adds nothing, the
    run and its offsets are the replay role's."""
    n, base = 600, datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    events = [
        ActiveWindow(organization_id=1 + i % 3, users_on_computers_id=1 + i % 12,
                     datetime=base + i * timedelta(hours=6) / n, title=f"w{i}", active_time=i % 50)
        for i in range(n)
    ]  # fmt: skip
    publish(env, tmp_path / "spool.sqlite3", events)
    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=1.5))  # as the suite's admin
    t.join(60)
    assert not t.is_alive() and count_rows(env.database_url, AW) == n
    with psycopg.connect(env.database_url, autocommit=True) as admin:
        deleted = admin.execute("DELETE FROM monitoring.active_windows WHERE organization_id = 2").rowcount
    assert deleted == n // 3

    environ = env.environ()
    mine = ("GATESTREAM_DATABASE_URL", "GATESTREAM_KAFKA_")  # its login and its Kafka user; the rest is the test's
    environ.update({k: v for k, v in replay_principal.items() if k.startswith(mine)})
    assert roles.url_user(environ["GATESTREAM_DATABASE_URL"]) == "gs_replay"
    assert environ["GATESTREAM_KAFKA_SASL_USERNAME"] == "replay"
    outputs = []
    for expected in (deleted, 0):
        done = subprocess.run(
            gatestream_cmd("replay", "--no-progress", "--types", "active_windows", "--from", "-30h"),
            env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["complete"], summary["inserted"]) == (True, expected), summary
    assert count_rows(env.database_url, AW) == n
    with psycopg.connect(env.database_url) as admin:
        assert admin.execute("SELECT count(DISTINCT event_id) FROM monitoring.active_windows").fetchone() == (n,)
        offsets = admin.execute(
            "SELECT DISTINCT principal FROM gatestream.consumer_offsets WHERE consumer_group LIKE 'gatestream-replay%%'"
        ).fetchall()
        assert offsets == [(roles.REPLAY,)]
        assert admin.execute("SELECT count(*) FROM gatestream.replay_runs").fetchone() == (2,)
    secret = replay_principal["GATESTREAM_KAFKA_SASL_PASSWORD"]
    assert not any(secret in out for out in outputs), "the Kafka password reached the output"


ROLES_STATE = """
    SELECT r.rolname, r.rolcanlogin, r.rolreplication,
           array(SELECT g.rolname::text FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
                  WHERE a.member = r.oid AND g.rolname NOT LIKE 'gs\\_%' ORDER BY 1),
           (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0)
      FROM pg_roles r WHERE r.rolname LIKE 'gatestream\\_%' ORDER BY 1"""


def test_migrations_run_as_a_member_of_gatestream_owner_after_the_dbas_steps(services: Services) -> None:
    """On a server where nothing of gatestream's exists (a private one: the stack's has the
    roles already), a superuser runs ops/postgres/before-migrate.sql (and nothing else), then a
    login that is a member of gatestream_owner runs `gatestream db migrate`: every migration
    applies, everything in gatestream's schemas is the owner's, and the roles end as a
    superuser's migrations leave them on the stack's server."""
    with private_postgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as dba:
            dba.execute("CREATE DATABASE gatestream")
        url = pg.login_url("postgres", "gatestream")
        script = ROOT / "ops" / "postgres" / "before-migrate.sql"
        for _ in range(2):  # idempotent
            done = subprocess.run(
                [str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "migrator=gs_migrate", "-d", url,
                 "-f", str(script)], capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        migrator = pg.login_url("gs_migrate", "gatestream")
        done = subprocess.run(
            gatestream_cmd("db", "migrate"), env={**os.environ, "GATESTREAM_DATABASE_URL": migrator}, cwd=ROOT,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        with psycopg.connect(migrator) as conn:
            assert conn.execute("SELECT current_user, session_user").fetchone() == (roles.OWNER, "gs_migrate")
            applied = conn.execute("SELECT name FROM gatestream.schema_migrations").fetchall()
            assert {"001_schemas.sql", "059_login_role_settings.sql"} <= {n for (n,) in applied}
            not_owners = conn.execute(
                "SELECT format('%s %I.%I', c.relkind, n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE (n.nspname IN ('monitoring', 'gatestream', 'reader') OR "
                "(n.nspname = '_timescaledb_internal' AND (c.relname LIKE '_materialized_hypertable_%' "
                "OR c.relname LIKE '_hyper_%_chunk'))) "  # the aggregates' tables, the chunks
                "AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
                "AND c.relowner <> 'gatestream_owner'::regrole"
            )
            assert not_owners.fetchall() == []
            not_owners = conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'gatestream' AND p.proowner <> 'gatestream_owner'::regrole"
            )
            assert not_owners.fetchall() == []
            here = conn.execute(ROLES_STATE).fetchall()
            assert len(here) == 7 and (roles.EXPORTER, False, False, ["pg_monitor"], None) in here, here
        with psycopg.connect(services.database_url) as stack:  # migrated by the superuser
            assert here == stack.execute(ROLES_STATE).fetchall()


def test_each_principal_sees_and_marks_only_its_own_dead_letters(db_url: str, logins: dict[str, str]) -> None:
    """sql/060: ingest, replay and the policy consumer each record dead letters as their own;
    ingest sees only its own, replay its own and ingest's (it re-processes and redrives ingest's
    topics), the policy consumer only its own; an event another principal recorded is not
    recorded again (published once) and cannot be marked; nobody's rows (the admin's, or from
    before) stay visible to all and nobody's when marked."""
    record = (
        "INSERT INTO gatestream.dead_letters (source_topic, source_partition, source_offset, reason, consumer_group) "
        "VALUES (%s, 0, %s, 'bad-avro', %s) ON CONFLICT DO NOTHING RETURNING source_offset"
    )  # as consumers/deadletter.py first_time records them
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(record, ("old", 1, "g"))
    for role, topic in ((roles.INGEST, "events"), (roles.REPLAY, "events"), (roles.POLICY, "policy")):
        with psycopg.connect(logins[role], autocommit=True) as conn:
            offset = {roles.INGEST: 1, roles.REPLAY: 2, roles.POLICY: 1}[role]
            assert conn.execute(record, (topic, offset, role)).fetchall() == [(offset,)]
    seen = "SELECT source_topic, source_offset, principal FROM gatestream.dead_letters ORDER BY 1, 2"
    ingest, replay = ("events", 1, roles.INGEST), ("events", 2, roles.REPLAY)
    policy, old = ("policy", 1, roles.POLICY), ("old", 1, None)
    visible = {roles.INGEST: [ingest, old], roles.REPLAY: [ingest, replay, old], roles.POLICY: [old, policy]}
    for role, rows in visible.items():
        with psycopg.connect(logins[role], autocommit=True) as conn:
            assert conn.execute(seen).fetchall() == rows, role
    with psycopg.connect(logins[roles.INGEST], autocommit=True) as conn:
        assert conn.execute(record, ("policy", 1, "x")).fetchall() == []  # recorded already: not published again
        as_policy = record.replace("consumer_group)", "consumer_group, principal)").replace("%s) ON", "%s, %s) ON")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # naming another principal
            conn.execute(as_policy, ("policy", 9, "x", roles.POLICY))
    with psycopg.connect(logins[roles.REPLAY], autocommit=True) as conn:
        mark_redriven(conn, [Redriven(("events", 0, 1), "r", "g", None), Redriven(("old", 0, 1), "r", "g", None)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            mark_redriven(conn, [Redriven(("policy", 0, 1), "bad-avro", "g", None)])
    with psycopg.connect(db_url) as admin:
        marks = admin.execute("SELECT source_topic, source_offset, principal, redrives FROM gatestream.dead_letters "
                              "ORDER BY 1, 2").fetchall()  # fmt: skip
        assert marks == [("events", 1, roles.INGEST, 1), ("events", 2, roles.REPLAY, 0), ("old", 1, None, 1),
                         ("policy", 1, roles.POLICY, 0)]  # fmt: skip


@pytest.fixture
def edition_logins(edition_db_url: str) -> Iterator[dict[str, str]]:
    yield from _logins(edition_db_url)


def test_the_exporters_scrape_as_its_login_reports_what_the_admins_does(
    edition_db_url: str, edition_logins: dict[str, str]
) -> None:
    """The exporter's own login (pg_monitor, no event data) gets the whole scrape on either
    edition: the aggregates' staleness (tsl/062: the Community edition's scrape failed whole,
    gatestream_db_up 0) and the fleet per state (sql/063: the family was missing), the same
    families and, for the counts, the same values as the admin's scrape."""
    from gatestream.dbmetrics import DatabaseCollector

    with psycopg.connect(edition_db_url, autocommit=True) as conn:  # a fleet to count
        conn.execute(
            "INSERT INTO monitoring.gateway_instances (id, organization_id, status, last_seen_at) "
            "VALUES (gen_random_uuid(), 1, 'ONLINE', now()), "
            "(gen_random_uuid(), 2, 'OFFLINE', now() - interval '2 days')"
        )

    def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in DatabaseCollector(url, min_interval_s=0).collect()
            for s in family.samples
        }

    admin, exporter = scrape(edition_db_url), scrape(edition_logins[roles.EXPORTER])
    assert exporter[("gatestream_db_up", ())] == 1
    assert set(exporter) == set(admin), sorted(set(admin) ^ set(exporter))
    counts = [k for k in admin if k[0] in ("gatestream_gateways", "gatestream_agents", "gatestream_gateways_silent")]
    assert counts and all(exporter[k] == admin[k] for k in counts)
    assert admin[("gatestream_gateways", (("state", "ONLINE"),))] == 1
    # the columns the counts read, nothing that names a gateway
    _refused(edition_logins[roles.EXPORTER], "SELECT api_key FROM monitoring.gateway_instances")
