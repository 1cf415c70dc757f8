"""gatestream through PgBouncer in transaction mode (ops/pgbouncer/pgbouncer, Debian's 1.18), in
front of the stack's main server: a server connection is a client's for one transaction only.

- ingest (exactly once: N events -> N rows, the offsets stored with them) and replay work through it;
- ``gatestream db migrate`` works through it, two runners at once (the migrations' lock is a
  transaction's, not a session's);
- the policy consumer reconciles its jobs through it;
- what gatestream leaves on a shared server connection is nothing: no prepared statement, no
  statement_timeout, while the same use without GATESTREAM_DATABASE_POOLER (the control) leaves both
  (so the test can fail), and the pooler refuses a wrong password and a client without TLS.

The pooler authenticates with SCRAM against secrets read from pg_authid (what works once the server
turns trust off): the tests log in as a role of their own with a password, made for the session.
All tests here run on one xdist worker (one pooler).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.postgres import PrivatePostgres, pg_bindir
from gatestream.consumers.replay import ReplaySelection, replay
from gatestream.database import connect_once, limited
from gatestream.dbmetrics import DatabaseCollector
from gatestream.migrate import discover
from gatestream.producers.events import ActiveWindow
from gatestream.schemas import EventType
from tests.conftest import Env, free_port, run_gatestream
from tests.helpers import count_rows, publish, start_ingest_thread, stored_offsets, wait_for
from tests.services import ROOT, Services

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pooler")]

LAUNCHER = ROOT / "ops" / "pgbouncer" / "pgbouncer"
CERTS = ROOT / "ops" / "tls" / "certs"
AW = EventType.ACTIVE_WINDOWS


@dataclass
class Pooler:
    port: int
    ca: Path
    user: str
    password: str

    def url(self, direct_url: str) -> str:
        """The same database as ``direct_url``, through the pooler, with TLS checked against its CA."""
        dbname = psycopg.conninfo.conninfo_to_dict(direct_url)["dbname"]
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, dbname=dbname, user=self.user, password=self.password,
            sslmode="verify-full", sslrootcert=str(self.ca),
        )  # fmt: skip


@pytest.fixture(scope="session")
def pooler(services: Services) -> Iterator[Pooler]:
    if os.geteuid() != 0 and shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer, or run as root: the launcher installs it)")
    info = psycopg.conninfo.conninfo_to_dict(services.database_url)
    user, password = f"gs_pooler_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    admin = psycopg.conninfo.make_conninfo(services.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        # owner powers in the test databases (migrations, jobs): the roles' own limits are another test's
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                psycopg.sql.Identifier(user), psycopg.sql.Literal(password)
            )
        )
    # reachable by the postgres user pgbouncer runs as (not /tmp/pytest-of-root)
    state = Path(tempfile.mkdtemp(prefix="gatestream-pgbouncer-", dir="/var/tmp" if os.geteuid() == 0 else None))
    state.chmod(0o755)
    port = free_port()
    # one server connection per database and user: every client shares it, transaction by transaction, so
    # whatever state a client left on it the next one would find (the hazard, at its most likely)
    environ = {**os.environ, "GATESTREAM_POOLER_DEFAULT_POOL_SIZE": "1", "GATESTREAM_POOLER_ADMIN_URL": admin}
    if info.get("sslrootcert"):  # a server with TLS (the secured stack): check its certificate too
        environ["GATESTREAM_POOLER_SERVER_SSLMODE"] = "verify-full"
        environ["GATESTREAM_POOLER_SERVER_CA_FILE"] = str(info["sslrootcert"])
    host, upstream_port = str(info.get("host") or "127.0.0.1"), str(info.get("port") or 5432)
    started = subprocess.run(
        [str(LAUNCHER), "start", str(state), str(port), host, upstream_port],
        capture_output=True, text=True, timeout=300, env=environ,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        yield Pooler(port, state / "tls" / "ca.pem", user, password)
    finally:
        subprocess.run([str(LAUNCHER), "stop", str(state)], capture_output=True, timeout=60)
        shutil.rmtree(state, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(user)))


@pytest.fixture
def through(pooler: Pooler, env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """This test's settings with the database reached through the pooler, as GATESTREAM_DATABASE_POOLER=transaction
    says (database.py reads it for every connection, in this process and in the gatestream processes started)."""
    monkeypatch.setenv("GATESTREAM_DATABASE_POOLER", "transaction")
    return Env(env.services, pooler.url(env.database_url), env.prefix, {**env.extra, "database_pooler": "transaction"})


def _events(n: int) -> list[ActiveWindow]:
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    return [
        ActiveWindow(organization_id=1 + i % 3, users_on_computers_id=1 + i % 12,
                     datetime=base + i * timedelta(seconds=7), title=f"w{i}", active_time=i % 50)
        for i in range(n)
    ]  # fmt: skip


def test_ingest_exactly_once_and_replay_through_pgbouncer(env: Env, through: Env, tmp_path: Path) -> None:
    n = 2000
    events = _events(n)
    publish(through, tmp_path / "spool.sqlite3", events)
    settings = through.ingest(stop_after_idle_s=2.0)
    ing, t = start_ingest_thread(settings)
    t.join(60)
    assert not t.is_alive(), "ingest did not finish"
    assert count_rows(env.database_url, AW) == n
    offsets = stored_offsets(env.database_url, settings.group_id)
    assert sum(o for (topic, _), o in offsets.items() if topic == through.topic(AW)) == n, offsets

    with psycopg.connect(env.database_url, autocommit=True) as conn:
        deleted = conn.execute("DELETE FROM monitoring.active_windows WHERE organization_id = 2").rowcount
    assert deleted > 100
    summary = replay(
        settings, ReplaySelection(event_types=(AW,), since=events[0].datetime, until=events[-1].datetime + timedelta(1))
    )
    assert summary.inserted == deleted, summary
    assert count_rows(env.database_url, AW) == n


def test_migrations_run_through_pgbouncer_two_at_once(services: Services, pooler: Pooler) -> None:
    """Two runners at once on an empty database, both through the pooler: each migration once, both end well."""
    admin = psycopg.conninfo.make_conninfo(services.database_url, dbname="postgres")
    name = f"gs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name is ours
    direct = psycopg.conninfo.make_conninfo(services.database_url, dbname=name)
    try:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
        environ.update(GATESTREAM_DATABASE_URL=pooler.url(direct), GATESTREAM_DATABASE_POOLER="transaction")
        runs: list[subprocess.CompletedProcess[str]] = []
        threads = [threading.Thread(target=lambda: runs.append(run_gatestream(environ, "db", "migrate"))) for _ in "ab"]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
        with psycopg.connect(direct) as conn:
            recorded = sorted(r[0] for r in conn.execute("SELECT name FROM gatestream.schema_migrations"))
            edition = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
            # and no lock stays behind on a pooled server connection (a session lock's unlock may run on another)
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
        assert held == (0,)
        from gatestream.edition import Edition

        expected = sorted(m.name for m in discover(edition=Edition(edition[0]) if edition else None))
        assert recorded == expected
        # every migration reported applied by exactly one of the two runners
        said = [r.stdout.split(":", 1)[1] for r in runs]
        applied = sorted(m.strip() for s in said for m in s.split(",") if "none" not in m)
        assert applied == expected, said
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_policy_consumer_reconciles_through_pgbouncer(env: Env, through: Env) -> None:
    from gatestream.consumers.policy.consumer import PolicyConsumer
    from gatestream.consumers.policy.reconcile import make_engine, make_plan

    settings = through.policy(full_reconcile_interval_s=3600)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
            "VALUES (1, 'active_windows', 90), (2, 'active_windows', 730)"
        )
    pc = PolicyConsumer(settings)
    t = threading.Thread(target=pc.run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: pc.runs >= 1, 30), "no reconcile through the pooler"
        assert pc.last_plan is not None and pc.last_plan.changes, "the startup reconcile made no jobs"
    finally:
        pc.request_stop()
        t.join(20)
    with psycopg.connect(env.database_url, autocommit=True) as conn:  # directly: nothing left to do
        assert make_plan(conn, env.policy(), make_engine(conn, env.policy())).changes == []


def _backend(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _left_behind(url: str) -> tuple[int, int, str]:
    """What the next client of the pool finds on its server connection: (backend pid, prepared statements,
    statement_timeout)."""
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as probe:
        row = probe.execute(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements), "
            "current_setting('statement_timeout')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), str(row[2])


def test_nothing_is_left_on_a_shared_server_connection(
    pooler: Pooler, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client after another on this test's own database and pool: PgBouncer hands the next one the same
    server connection (checked by its backend pid). gatestream's connection (database.py, transaction mode)
    leaves nothing there; the same work on a default psycopg connection (the control) leaves a prepared
    statement and a setting, which is the hazard."""
    url = pooler.url(db_url)
    monkeypatch.setenv("GATESTREAM_DATABASE_POOLER", "transaction")
    with connect_once(url) as conn:
        pid = _backend(conn)
        for i in range(10):  # psycopg would prepare from the 5th run on
            conn.execute("SELECT %s::int + 1", (i,))
        with limited(conn, 2):  # a statement timeout for one transaction
            conn.execute("SELECT pg_sleep(0)")
    assert _left_behind(url) == (pid, 0, "0")
    # the exporter's scrape (its queries under a statement timeout) through the pooler: it answers, leaves nothing
    scraped = {s.name: s.value for fam in DatabaseCollector(url, min_interval_s=0).collect() for s in fam.samples}
    assert scraped["gatestream_db_up"] == 1 and "gatestream_db_hypertable_rows_estimate" in scraped, sorted(scraped)
    assert _left_behind(url) == (pid, 0, "0")

    with psycopg.connect(url, autocommit=True) as control:  # psycopg's defaults, as a direct connection has them
        assert _backend(control) == pid
        for i in range(10):
            control.execute("SELECT %s::int + 1", (i,))
        control.execute("SET statement_timeout = 1234")
    assert _left_behind(url) == (pid, 1, "1234ms"), "the control left nothing: the check above proves nothing"

    # the pooler refuses a wrong password and a client without TLS, each in one line
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(psycopg.conninfo.make_conninfo(url, password="wrong")).close()
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(psycopg.conninfo.make_conninfo(url, sslmode="disable")).close()


def test_the_pooler_logs_in_to_a_scram_and_tls_server_with_the_secrets_of_pg_authid() -> None:
    """What the secured stack will be: a server of the test's own that takes only TLS and scram-sha-256. The
    pooler, given only the SCRAM secrets read from pg_authid (no password in any of its files), checks the
    client and logs in to the server as that role (SCRAM pass-through), over TLS with the server's certificate
    verified; a wrong password is refused, and a changed password works once `userlist` has re-read pg_authid."""
    bindir = pg_bindir("15")
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries here")
    pg = PrivatePostgres(bindir)
    ca = pg.state / "tls"
    pooled = pg.state / "pgbouncer"
    port = free_port()
    try:
        pg.start()
        subprocess.run([str(CERTS), "issue", str(ca), "server"], check=True, capture_output=True, timeout=60)
        for part in ("key", "pem"):  # the server's own copy, owned by the user it runs as
            copy = pg.data / f"server.{part}"
            shutil.copy(ca / f"server.{part}", copy)
            copy.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(copy, "postgres", "postgres")
        (pg.data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 scram-sha-256\n")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("ALTER SYSTEM SET ssl_cert_file = 'server.pem'")
            conn.execute("ALTER SYSTEM SET ssl_key_file = 'server.key'")
            conn.execute("ALTER ROLE postgres PASSWORD 'admin-secret'")
            conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret'")
            conn.execute("SELECT pg_reload_conf()")
        tls = {"sslmode": "verify-full", "sslrootcert": str(ca / "ca.pem")}
        admin = psycopg.conninfo.make_conninfo(pg.url, password="admin-secret", **tls)
        with pytest.raises(psycopg.OperationalError):  # the server itself: no more trust
            psycopg.connect(pg.url).close()

        environ = {**os.environ, "GATESTREAM_POOLER_CA_DIR": str(ca), "GATESTREAM_POOLER_SERVER_SSLMODE": "verify-full",
                   "GATESTREAM_POOLER_ADMIN_URL": admin}  # fmt: skip
        started = subprocess.run(
            [str(LAUNCHER), "start", str(pooled), str(port), "127.0.0.1", str(pg.port)],
            capture_output=True, text=True, timeout=120, env=environ,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert "app-secret" not in (pooled / "userlist.txt").read_text()  # secrets, not passwords
        for said in (started.stdout + started.stderr, (pooled / "pgbouncer.log").read_text()):
            assert "admin-secret" not in said and "app-secret" not in said

        def through(password: str) -> psycopg.Connection[Any]:
            return psycopg.connect(
                psycopg.conninfo.make_conninfo(
                    "", host="127.0.0.1", port=port, dbname="postgres", user="app", password=password, **tls
                )
            )

        with through("app-secret") as conn:
            row = conn.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == ("app", True), "the pooler's server connection is app's own, over TLS"
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
            through("wrong").close()

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("ALTER ROLE app PASSWORD 'new-secret'")
        refreshed = subprocess.run(
            [str(LAUNCHER), "userlist", str(pooled)], capture_output=True, text=True, timeout=60, env=environ
        )
        assert refreshed.returncode == 0, refreshed.stderr
        assert wait_for(lambda: _logs_in(through, "new-secret"), 5), "the new password does not work after userlist"
    finally:
        subprocess.run([str(LAUNCHER), "stop", str(pooled)], capture_output=True, timeout=60)
        pg.remove()


def _logs_in(connect: Any, password: str) -> bool:
    try:
        connect(password).close()
    except psycopg.OperationalError:
        return False
    return True
