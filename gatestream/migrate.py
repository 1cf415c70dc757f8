"""Applies the ordered SQL migrations in ``sql/`` once each, under an advisory lock.

Each file is idempotent on its own (IF NOT EXISTS ...); the runner also records what it
applied with a checksum, so an edited, already-applied migration is reported instead of
silently diverging between environments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog

SQL_DIR = Path(__file__).parent / "sql"  # package data gatestream.sql (in a checkout: a link to sql/)
LOCK_KEY = 0x6761746573747265  # "gatestre"

log = structlog.get_logger("gatestream.migrate")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    files = sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())
    if not files:
        raise MigrationError(f"no migrations found in {sql_dir}")
    return [Migration(p.name, p.read_text()) for p in files]


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; return the names applied now."""
    migrations = discover(sql_dir)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS gatestream")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS gatestream.schema_migrations (
                       name text PRIMARY KEY, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done: dict[str, str] = dict(
                conn.execute("SELECT name, checksum FROM gatestream.schema_migrations").fetchall()
            )
            for m in migrations:
                if m.name in done:
                    if done[m.name] != m.checksum:
                        raise MigrationError(
                            f"{m.name} was applied with different content; add a new migration instead of editing it"
                        )
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO gatestream.schema_migrations (name, checksum) VALUES (%s, %s)",
                        (m.name, m.checksum),
                    )
                log.info("migration applied", migration=m.name)
                applied_now.append(m.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def timescaledb_edition(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """'apache' or 'timescale' (Community/TSL), from the server's license setting."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    return str(row[0]) if row and row[0] else "unknown"
