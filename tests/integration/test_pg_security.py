"""PostgreSQL over TLS + scram-sha-256 with one login user per principal (issue 25), on a private
server secured by the script ops/stack runs on its own (ops/postgres/secure), so this proves the
stack's setup without touching the shared server: each principal logs in as its own user with
sslmode=verify-full and the password from its passfile; the server trusts nobody on TCP; a wrong
password, a plaintext client, a server certificate for another host name and a role without a
grant are refused at start with one line naming the user, the server and what was refused
(exit 2); no password reaches a log line."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.postgres import PrivatePostgres
from gatestream import database, roles
from gatestream.migrate import migrate
from tests.conftest import gatestream_cmd
from tests.helpers import private_postgres
from tests.services import ROOT, Services, _from_env_file

pytestmark = pytest.mark.integration

# the stack's login users (ops/stack pg_user) and the sql/050 group each is a member of
LOGINS = {f"gs_{r.removeprefix('gatestream_')}": r for r in roles.ROLES if r != roles.OWNER}
DB = "gatestream"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A migrated private server, secured as ops/stack secures its own, with the stack's logins."""
    with private_postgres() as pg:
        pg.secure(tmp_path_factory.mktemp("tls"), tmp_path_factory.mktemp("secrets"))
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        migrate(pg.login_url("postgres", DB))  # the admin over verify-full, as `ops/stack up` migrates
        for user, group in LOGINS.items():
            pg.add_login(user, group)
        yield pg


def passwords(pg: PrivatePostgres) -> list[str]:
    assert pg.secrets is not None
    return [f.read_text().strip().split(":", 4)[4] for f in pg.secrets.glob("pg-*")]


def test_each_principal_logs_in_as_its_user_over_verified_tls_and_nothing_is_trusted(server: PrivatePostgres) -> None:
    assert server.secrets is not None
    for user, group in {"postgres": None, **LOGINS}.items():
        passfile = server.secrets / f"pg-{user}"
        assert passfile.stat().st_mode & 0o777 == 0o600, f"{passfile} is readable by others"
        with psycopg.connect(server.login_url(user, DB)) as conn:
            row = conn.execute(
                "SELECT current_user, ssl, pg_has_role(current_user, coalesce(%s, current_user), 'member') "
                "FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                (group,),
            ).fetchone()
            assert row == (user, True, True), row
            if group == roles.REPLAY:  # its job's privileges, as the process checks them at start
                roles.require(conn, roles.REPLAY_NEEDS)
            # its group's settings, made after the migrations (sql/053's plan_cache_mode of the
            # reader): ops/postgres/secure login copies them, a login inherits none (sql/059)
            plans = "force_custom_plan" if group == roles.READER else "auto"
            assert conn.execute("SHOW plan_cache_mode").fetchone() == (plans,), user
    # a second run of the stack's login step keeps each password (made once) and the login
    before = passwords(server)
    server.add_login("gs_ingest", roles.INGEST)
    assert passwords(server) == before
    psycopg.connect(server.login_url("gs_ingest", DB)).close()
    with psycopg.connect(server.url) as conn:
        # every password is a SCRAM verifier; no rule trusts or takes a password in clear; TCP is hostssl
        hashes = conn.execute(
            "SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = ANY(%s)",
            (["postgres", *LOGINS],),
        ).fetchall()
        assert sorted(hashes) == sorted((u, True) for u in ["postgres", *LOGINS])
        rules = conn.execute("SELECT type, auth_method, user_name FROM pg_hba_file_rules").fetchall()
    assert rules and not [r for r in rules if r[1] in ("trust", "password", "md5")], rules
    tcp = {(t, m) for t, m, _ in rules if t.startswith("host")}
    assert tcp == {("hostssl", "scram-sha-256"), ("hostnossl", "reject")}
    assert [r for r in rules if r[0] == "local"] == [("local", "peer", ["postgres"])]
    # a physical replication connection (pg_basebackup, a standby) has its own TLS + scram line
    done = subprocess.run(["psql", "-X", "-tA", f"{server.url}&replication=true", "-c", "IDENTIFY_SYSTEM"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _refused(environ: dict[str, str], url: str, *args: str) -> str:
    """A command's stderr when it is refused at start: exit 2 and one line."""
    done = subprocess.run(gatestream_cmd(*args), env={**environ, "GATESTREAM_DATABASE_URL": url},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr)
    return lines[0] + done.stdout


def test_refusals_are_one_line_naming_user_server_and_what_and_no_password_is_logged(
    server: PrivatePostgres, tmp_path: Path
) -> None:
    assert server.tls is not None and server.secrets is not None
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GATESTREAM_", "PG"))}
    environ["GATESTREAM_LOG_FORMAT"] = "json"
    good = server.login_url("gs_ingest", DB)
    where = f"127.0.0.1:{server.port}/{DB}"
    wrong_password = "not-the-password-4f1c"  # in the URL itself: it must not be echoed either
    cases = {
        "a wrong password": (
            good.replace("gs_ingest@", f"gs_ingest:{wrong_password}@"), where, "its password (wrong password)"
        ),
        "a plaintext client": (
            good.replace("sslmode=verify-full", "sslmode=disable"), where,
            "a plaintext connection: the server takes TLS only",
        ),
        "a certificate for another host name": (
            good.replace("@127.0.0.1:", "@db.example.com:") + "&hostaddr=127.0.0.1",
            f"db.example.com:{server.port}/{DB}",
            'does not match host name "db.example.com"',
        ),
    }  # fmt: skip
    output = []
    for case, (url, shown, what) in cases.items():
        # a long-running process does not wait these out: they are settings, not an outage
        t0 = time.monotonic()
        with pytest.raises(database.DatabaseSettingError) as refused:
            database.connect(url)
        assert time.monotonic() - t0 < database.CONNECT_TIMEOUT_S, case
        line = str(refused.value)
        assert line.startswith(f"the database at {shown} refused user gs_ingest: ") and what in line, (case, line)
        assert "\n" not in line
        output.append(line)
    # a command exits 2 with that line alone (one run: each costs an interpreter's start)
    line = _refused(environ, cases["a wrong password"][0], "show")
    assert line == f"gatestream show: {output[0]} (check GATESTREAM_DATABASE_URL)", line
    output.append(line)
    # a role without a grant: the reader cannot run the admin's migrations (one line, the role and the refusal)
    line = _refused(environ, server.login_url("gs_reader", DB), "db", "migrate")
    assert line.startswith("gatestream db: role gs_reader was refused: permission denied"), line
    assert line.endswith(f"[database {where}]"), line
    output.append(line)
    # no password in any of it, nor in the server's log (the login step hides its statement)
    logged = "\n".join(output) + server.log.read_text()
    for secret in [wrong_password, *passwords(server)]:
        assert secret not in logged


def test_the_stacks_settings_log_each_principal_in_as_its_own_user_over_verified_tls(services: Services) -> None:
    """`ops/stack env PRINCIPAL` on the secured stack: each principal's URL names its user, verify-full
    and a passfile, and logs in that way (as the group's member) on each server; the gateway has none."""
    admin = services.database_url
    if services.source != "ops/stack" or "sslmode=verify-full" not in admin:
        pytest.skip("the services are not ops/stack's secured PostgreSQL (TLS + scram-sha-256)")
    stack = Path(os.environ.get("GATESTREAM_STACK_DIR", ROOT / ".stack"))
    assert "GATESTREAM_DATABASE_URL" not in _from_env_file(stack / "env.gateway")
    for user, group in LOGINS.items():
        settings = _from_env_file(stack / f"env.{group.removeprefix('gatestream_')}")
        for key in ("GATESTREAM_DATABASE_URL", "GATESTREAM_APACHE_DATABASE_URL"):
            if key not in settings:
                continue  # no Apache edition server beside this stack
            url = settings[key]
            info = psycopg.conninfo.conninfo_to_dict(url)
            assert (info["user"], info["sslmode"], "password" in info) == (user, "verify-full", False), url
            assert Path(str(info["passfile"])).stat().st_mode & 0o777 == 0o600
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT current_user, ssl, pg_has_role(current_user, %s, 'member') "
                    "FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    (group,),
                ).fetchone()
            assert row == (user, True, True), (key, row)
