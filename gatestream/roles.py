"""The PostgreSQL roles of the pipeline's principals (sql/050, sql/051), and the privileges
each process needs, checked at start.

- ``create_login``: a LOGIN user in one of the group roles (for tests and the stack; a
  password, when given, comes from settings and goes as a parameter, never into a log),
  with that role's settings (``copy_role_settings``: a login does not inherit them).
- ``require``: the process's privileges, asked of the server before it does anything; a
  missing one raises ``PrivilegeMissing`` with one line naming the role, the relation and
  the privilege (the CLI exits 2 with it).
- ``refusal``: the same one line for a refusal met later (psycopg's InsufficientPrivilege).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

OWNER = "gatestream_owner"
INGEST = "gatestream_ingest"
REPLAY = "gatestream_replay"
POLICY = "gatestream_policy"
EXPORTER = "gatestream_exporter"
READER = "gatestream_reader"
ROLES = (OWNER, INGEST, REPLAY, POLICY, EXPORTER, READER)
# COPY needs nothing more than INSERT; the writers' logins need no BYPASSRLS (no row-level
# security on the tables they write: sql/051).

EVENT_TABLES = ("active_windows", "visited_sites", "screenshots", "user_sessions", "gateway_status_snapshots")

# (relation, privilege) each process needs; checked at start by ``require``.
INGEST_NEEDS: tuple[tuple[str, str], ...] = (
    *((f"monitoring.{t}", p) for t in EVENT_TABLES for p in ("INSERT", "SELECT")),
    ("gatestream.consumer_offsets", "SELECT"), ("gatestream.consumer_offsets", "INSERT"),
    ("gatestream.consumer_offsets", "UPDATE"),
    ("gatestream.dead_letters", "SELECT"), ("gatestream.dead_letters", "INSERT"),
    ("monitoring.gateway_instances", "SELECT"), ("monitoring.gateway_instances", "INSERT"),
    ("monitoring.gateway_instances", "UPDATE"),
    ("monitoring.agent_instances", "SELECT"), ("monitoring.agent_instances", "INSERT"),
    ("monitoring.agent_instances", "UPDATE"),
)  # fmt: skip
REPLAY_NEEDS = (
    *INGEST_NEEDS,
    ("gatestream.replay_runs", "SELECT"), ("gatestream.replay_runs", "INSERT"), ("gatestream.replay_runs", "UPDATE"),
)  # fmt: skip
# `gatestream import` runs as gatestream_replay (a backfill, as a replay is): the events, and
# its checkpoints and rejects (sql/055).
IMPORT_NEEDS: tuple[tuple[str, str], ...] = (
    *((f"monitoring.{t}", p) for t in EVENT_TABLES for p in ("INSERT", "SELECT")),
    ("gatestream.import_checkpoints", "SELECT"), ("gatestream.import_checkpoints", "INSERT"),
    ("gatestream.import_checkpoints", "UPDATE"),
    ("gatestream.import_rejects", "SELECT"), ("gatestream.import_rejects", "INSERT"),
    ("gatestream.import_rejects", "UPDATE"),
)  # fmt: skip
# `gatestream dlq redrive` runs as gatestream_replay too (it re-processes what was dead-lettered):
# it reads the dead letters and marks them redriven (sql/055; publishing back to the event
# topics is its Kafka principal's WRITE).
REDRIVE_NEEDS: tuple[tuple[str, str], ...] = (
    ("gatestream.dead_letters", "SELECT"), ("gatestream.dead_letters", "INSERT"),
    ("gatestream.dead_letters", "UPDATE"),
)  # fmt: skip
# The database exporter: the server's statistics (pg_monitor) and the bookkeeping it reports.
EXPORTER_NEEDS: tuple[tuple[str, str], ...] = (
    ("pg_monitor", "MEMBER"),
    ("gatestream.retention_resources", "SELECT"), ("monitoring.retention_policies", "SELECT"),
)  # fmt: skip
# The policy consumer: the policies it reconciles, and the owner's routines it changes jobs
# through (sql/054; on the Community edition also sql/tsl/054's gatestream.policy_*, on the
# Apache one pg_cron's own grants in its database, sql/apache/055).
POLICY_NEEDS: tuple[tuple[str, str], ...] = (
    ("monitoring.retention_policies", "SELECT"), ("gatestream.retention_resources", "SELECT"),
    ("gatestream.org_retention_progress", "UPDATE"),
    ("gatestream.consumer_offsets", "SELECT"), ("gatestream.consumer_offsets", "INSERT"),
    ("gatestream.consumer_offsets", "UPDATE"),
    ("gatestream.dead_letters", "SELECT"), ("gatestream.dead_letters", "INSERT"),
    ("gatestream.drop_expired_chunks(regclass, integer)", "EXECUTE"),
)  # fmt: skip


@dataclass
class PrivilegeMissing(Exception):
    """The connected role lacks a privilege the process needs: waiting cannot fix it."""

    role: str
    relation: str
    privilege: str

    def __str__(self) -> str:
        if self.privilege == "MEMBER":
            return f"role {self.role} is not a member of {self.relation} (grant it, or log in as a role that is)"
        return (
            f"role {self.role} has no {self.privilege} privilege on {self.relation} "
            "(log in as a member of the gatestream_* role of this process, or grant it)"
        )


def require(conn: psycopg.Connection[Any], needs: tuple[tuple[str, str], ...]) -> None:
    """Raise PrivilegeMissing for the first of ``needs`` the current user lacks (a relation
    or routine that does not exist counts as missing: the migrations have not run). A need is
    (relation, privilege); for EXECUTE ("schema.routine(argument types)", "EXECUTE"); for a
    role's privileges (role, "MEMBER")."""
    rels = [r for r, _ in needs]
    privs = [p for _, p in needs]
    # CASE, in order: has_table_privilege raises on a schema the user may not use. SELECT,
    # INSERT and UPDATE may be granted on the columns a process uses (has_any_column_privilege
    # is true for the table's grant too).
    row = conn.execute(
        """SELECT current_user, v.rel, v.priv
             FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS v (rel, priv, n)
            WHERE CASE WHEN v.priv = 'MEMBER' THEN to_regrole(v.rel) IS NULL
                                                OR NOT pg_has_role(current_user, to_regrole(v.rel), 'USAGE')
                       WHEN NOT has_schema_privilege(split_part(v.rel, '.', 1), 'USAGE') THEN true
                       WHEN v.priv = 'EXECUTE' THEN to_regprocedure(v.rel) IS NULL
                                                 OR NOT has_function_privilege(to_regprocedure(v.rel), 'EXECUTE')
                       WHEN to_regclass(v.rel) IS NULL THEN true
                       WHEN v.priv IN ('SELECT', 'INSERT', 'UPDATE') THEN NOT has_any_column_privilege(v.rel, v.priv)
                       ELSE NOT has_table_privilege(v.rel, v.priv) END
            ORDER BY v.n LIMIT 1""",
        (rels, privs),
    ).fetchone()
    if row is not None:
        raise PrivilegeMissing(str(row[0]), str(row[1]), str(row[2]))


def refusal(exc: psycopg.errors.InsufficientPrivilege, role: str | None) -> str:
    """One line for a privilege the server refused later than ``require`` checks: who, and the
    server's own words (which name the relation)."""
    what = exc.diag.message_primary or (str(exc).splitlines() or ["permission denied"])[0]
    return f"role {role or '(the connection user)'} was refused: {what}"


def url_user(url: str) -> str | None:
    """The user a database URL logs in as (None: libpq's default)."""
    try:
        user = psycopg.conninfo.conninfo_to_dict(url).get("user")
    except psycopg.Error:
        return None
    return str(user) if user else None


def create_login(admin: psycopg.Connection[Any], name: str, role: str, password: str | None = None) -> None:
    """A LOGIN user ``name``, member of ``role`` (one of ROLES); idempotent. Without a
    password it can log in only where the server trusts (ops/stack's server trusts nobody on TCP)."""
    if role not in ROLES:
        raise ValueError(f"not a gatestream role: {role!r}; one of {', '.join(ROLES)}")
    exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    stmt = sql.SQL(verb + " ROLE {} LOGIN").format(sql.Identifier(name))
    if password is not None:
        stmt = stmt + sql.SQL(" PASSWORD {}").format(sql.Literal(password))
    admin.execute(stmt)
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(name)))
    copy_role_settings(admin, name, role)


def copy_role_settings(admin: psycopg.Connection[Any], login: str, role: str) -> None:
    """Give ``login`` the cluster-wide settings of ``role`` (sql/053's plan_cache_mode of the
    reader) that it has no value of its own for: PostgreSQL applies at login only the login's
    own settings, not its roles' (sql/059; ops/postgres/secure login does the same)."""
    rows = admin.execute(
        """SELECT split_part(cfg, '=', 1), substr(cfg, strpos(cfg, '=') + 1)
             FROM pg_db_role_setting d CROSS JOIN LATERAL unnest(d.setconfig) AS cfg
            WHERE d.setrole = to_regrole(%s) AND d.setdatabase = 0
              AND NOT EXISTS (SELECT 1 FROM pg_db_role_setting l CROSS JOIN LATERAL unnest(l.setconfig) AS own
                               WHERE l.setrole = to_regrole(%s) AND l.setdatabase = 0
                                 AND split_part(own, '=', 1) = split_part(cfg, '=', 1))""",
        (role, login),
    ).fetchall()
    for setting, value in rows:
        admin.execute(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(login), sql.Identifier(setting), sql.Literal(value)
            )
        )


def drop_login(admin: psycopg.Connection[Any], name: str) -> None:
    """Remove a login made by ``create_login`` (it must own nothing: objects and jobs go first)."""
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def login_url(url: str, user: str, password: str | None = None) -> str:
    """``url`` with another user: its ``password`` when given, else none (``url``'s password and
    passfile are the other user's; the TLS settings stay)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    info.pop("passfile", None)
    info["user"] = user
    if password is not None:
        info["password"] = password
    return psycopg.conninfo.make_conninfo("", **info)
