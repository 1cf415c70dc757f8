"""Applies the ordered SQL migrations in ``sql/`` once each, under an advisory lock.

The lock is a transaction-level one (``pg_advisory_xact_lock``), taken again by each
migration's own transaction, which then checks whether another runner applied that
migration meanwhile: two runners at once apply each migration once, in order. It holds
through a pooler in transaction mode (PgBouncer), where a session-level lock would stay
on whichever server connection took it, and its unlock could run on another.

Each file is idempotent on its own (IF NOT EXISTS ...); the runner also records what it
applied with a checksum, so an edited, already-applied migration is reported instead of
silently diverging between environments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from gatestream.database import connect_once
from gatestream.edition import Edition, timescaledb_edition

SQL_DIR = Path(__file__).parent / "sql"  # package data gatestream.sql (in a checkout: a link to sql/)
LOCK_KEY = 0x6761746573747265  # "gatestre"

log = structlog.get_logger("gatestream.migrate")


class MigrationError(Exception):
    pass


# Migrations edited after databases applied them, and the checksums of the forms those may have
# recorded: accepted (and the record brought up to date) instead of refused. Only for an edit
# that a later migration already applies to the old form's databases, never to change what a
# database ends up with. 050_roles.sql: it no longer makes gatestream_policy a member of
# gatestream_owner, which 054 revokes; roles are cluster-wide, so while another database on the
# server ran the old 050 before its 054 the policy role was briefly the owner's member again.
# 051_reader_views.sql: run again it no longer remakes reader.gateway_instances (SELECT *, api_key
# included) over 058's view without the key (the old form failed on it); a first run is unchanged.
AMENDED: dict[str, frozenset[str]] = {
    "050_roles.sql": frozenset({"a93b472ee64af80a92a3210cd3a4ba921dd215b334e13c0c496c7e34fc7e2e5f"}),
    "051_reader_views.sql": frozenset({"df72bddd0ce9c2d0f8995e644b2b83697b65af8a18e9cce2789e06f58c9163ea"}),
}


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


# Folders of migrations that only one edition can run, applied (and recorded) only there: the
# Community edition's (continuous aggregates) and the Apache edition's stand-ins for them.
EDITION_DIRS = {Edition.COMMUNITY: "tsl", Edition.APACHE: "apache"}


def discover(sql_dir: Path = SQL_DIR, edition: Edition | None = None) -> list[Migration]:
    """The migrations in order: the common ones, then those of ``edition`` (named
    ``<folder>/<file>``, e.g. ``tsl/010_active_windows_daily.sql``)."""
    files = sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())
    if not files:
        raise MigrationError(f"no migrations found in {sql_dir}")
    out = [Migration(p.name, p.read_text()) for p in files]
    folder = EDITION_DIRS.get(edition) if edition is not None else None
    if folder is not None:
        extra = sorted(p for p in (sql_dir / folder).glob("*.sql") if p.name[:3].isdigit())
        out += [Migration(f"{folder}/{p.name}", p.read_text()) for p in extra]
    return out


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; return the names applied now. Edition-specific migrations
    (sql/tsl/ on the Community edition, sql/apache/ on the Apache one) go through the same runner, checksummed and
    recorded; on another edition they are neither applied nor recorded, so they apply
    once the server runs the edition that has what they need.

    The edition is probed after the common migrations: sql/001 creates the extension, and
    only a database with the extension loaded states its edition (on a fresh database a
    probe before that reads "unknown" and would skip sql/tsl/ until a second run)."""
    applied_now: list[str] = []
    with connect_once(database_url) as conn:
        with conn.transaction():
            _lock(conn)
            conn.execute("CREATE SCHEMA IF NOT EXISTS gatestream")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS gatestream.schema_migrations (
                       name text PRIMARY KEY, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        common = discover(sql_dir)
        applied_now += _apply(conn, common)
        edition = _edition_after_extension(conn, database_url)
        applied_now += _apply(conn, discover(sql_dir, edition)[len(common) :])
    return applied_now


def _lock(conn: psycopg.Connection[Any]) -> None:
    """Wait for any other runner's migration transaction; ours holds the lock until it ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))


def _edition_after_extension(conn: psycopg.Connection[Any], database_url: str) -> Edition:
    """The edition, asked once the extension exists; where this session does not state it
    yet (the library loaded by the CREATE EXTENSION it ran), a new session does."""
    edition = timescaledb_edition(conn)
    if edition is Edition.UNKNOWN:
        with connect_once(database_url) as fresh:
            edition = timescaledb_edition(fresh)
    return edition


def _apply(conn: psycopg.Connection[Any], migrations: list[Migration]) -> list[str]:
    applied: list[str] = []
    for m in migrations:
        with conn.transaction():
            _lock(conn)
            row = conn.execute(
                "SELECT checksum FROM gatestream.schema_migrations WHERE name = %s", (m.name,)
            ).fetchone()
            if row is not None:
                if row[0] != m.checksum and row[0] in AMENDED.get(m.name, frozenset()):
                    conn.execute(
                        "UPDATE gatestream.schema_migrations SET checksum = %s WHERE name = %s", (m.checksum, m.name)
                    )
                    log.info("amended migration recorded", migration=m.name)
                elif row[0] != m.checksum:
                    raise MigrationError(
                        f"{m.name} was applied with different content; add a new migration instead of editing it"
                    )
                continue
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO gatestream.schema_migrations (name, checksum) VALUES (%s, %s)",
                (m.name, m.checksum),
            )
        log.info("migration applied", migration=m.name)
        applied.append(m.name)
    return applied
