"""``gatestream db restore``: a backup into a fresh database, TimescaleDB's way, in parallel.

TimescaleDB's procedure (its docs: "Logical backup with pg_dump and pg_restore"): create
the database, create the extension (at the version the backup was taken with) *before*
restoring, ``SELECT timescaledb_pre_restore()`` (stops its background workers and sets
``timescaledb.restoring`` for the database), pg_restore, ``SELECT timescaledb_post_restore()``.
pg_restore runs in four steps so that most of it can run in parallel: the schema
(pre-data, one process), the data of TimescaleDB's catalog (its tables reference each
other: one process, in order), the data of every other table (``jobs`` processes, one
chunk at a time each), then indexes and constraints (post-data, ``jobs`` processes).

The target is refused when it exists and holds tables, unless told to drop it; an empty
one (or none) is used. The restored consumer offsets are checked against the manifest.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

from gatestream.backup import BackupError, Manifest, stored_offsets
from gatestream.database import connect_once, where
from gatestream.pg_tools import ToolError, conninfo_and_env, find_tool, run_tool, server_major

log = structlog.get_logger("gatestream.restore")

TS_SCHEMAS = ("_timescaledb_catalog", "_timescaledb_config")


class RestoreRefused(Exception):
    """The target database holds data and was not to be dropped (one line)."""


@dataclass
class RestoreResult:
    manifest: Manifest
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.steps.values())


def _user_tables(url: str) -> list[str]:
    """Tables, views and sequences of a database that no extension owns, outside the system schemas."""
    with connect_once(url) as conn:
        rows = conn.execute(
            """SELECT n.nspname || '.' || c.relname FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname !~ '^pg_(toast|temp)'
                  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype = 'e')
                ORDER BY n.nspname LIKE '\\_timescaledb%', 1"""
        ).fetchall()
    return [str(r[0]) for r in rows]


def _prepare_database(url: str, maintenance_db: str, drop_existing: bool) -> None:
    """Make sure ``url``'s database exists and is empty: create it, or drop a full one when told."""
    name = str(psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "")
    if not name or name == maintenance_db:
        raise RestoreRefused(f"restore into {name or 'no database'!r}: name the target database in the URL")
    admin = psycopg.conninfo.make_conninfo(url, dbname=maintenance_db)
    with connect_once(admin) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    if exists:
        tables = _user_tables(url)
        if tables and not drop_existing:
            shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
            raise RestoreRefused(
                f"database {name} on {where(url)} exists and is not empty ({shown}): restore into another "
                "database, drop it, or pass --drop-existing to drop it (and everything in it) first"
            )
        if not tables:
            return
        log.warning("dropping the existing database", database=name, tables=len(tables))
        with connect_once(admin) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    with connect_once(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _create_extension(conn: psycopg.Connection[Any], version: str) -> None:
    available = [str(r[0]) for r in conn.execute(
        "SELECT version FROM pg_available_extension_versions WHERE name = 'timescaledb'").fetchall()]  # fmt: skip
    if version not in available:
        raise BackupError(
            f"the backup needs TimescaleDB {version}, which this server does not have (it has: "
            f"{', '.join(sorted(available)) or 'none'}): restore on a server with {version}, then update the extension"
        )
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if row is None:
        conn.execute(sql.SQL("CREATE EXTENSION timescaledb VERSION {}").format(sql.Literal(version)))
    elif row[0] != version:
        raise BackupError(f"the target database has TimescaleDB {row[0]}, the backup {version}: use a fresh database")


def _toc(pg_restore: Path, folder: Path, env: dict[str, str], out: Path) -> None:
    """The backup's table of contents without the comment on the timescaledb extension (only
    a superuser may set it, and the extension created it anyway)."""
    lines = run_tool([str(pg_restore), "--list", str(folder)], env, "pg_restore --list", stdout=True)
    out.write_text("\n".join(ln for ln in lines if "COMMENT - EXTENSION timescaledb" not in ln) + "\n")


def restore(
    url: str,
    folder: Path,
    *,
    jobs: int = 2,
    drop_existing: bool = False,
    maintenance_db: str = "postgres",
    bindir: Path | None = None,
) -> RestoreResult:
    """Restore the backup in ``folder`` into ``url``'s database (see the module's docstring)."""
    manifest = Manifest.read(folder)
    result = RestoreResult(manifest)
    admin = psycopg.conninfo.make_conninfo(url, dbname=maintenance_db)
    with connect_once(admin) as conn:
        major = server_major(conn)
    if major < manifest.postgres_major:
        raise BackupError(f"the backup is of PostgreSQL {manifest.postgres_major}, this server runs {major}")
    pg_restore = find_tool("pg_restore", major, bindir)
    started = time.monotonic()
    _prepare_database(url, maintenance_db, drop_existing)
    with connect_once(url) as conn:
        _create_extension(conn, manifest.timescaledb_version)
        conn.execute("SELECT timescaledb_pre_restore()")
    result.steps["create"] = time.monotonic() - started
    conninfo, env = conninfo_and_env(url)
    try:
        with tempfile.TemporaryDirectory(prefix="gatestream-restore-") as tmp:
            toc = Path(tmp) / "toc.list"
            _toc(pg_restore, folder, env, toc)
            base = [str(pg_restore), "--format=directory", "--exit-on-error", f"--use-list={toc}",
                    f"--dbname={conninfo}"]  # fmt: skip
            parallel = [f"--jobs={max(1, jobs)}"]
            catalog = [f"--schema={s}" for s in TS_SCHEMAS]
            steps = {
                "schema": ["--section=pre-data"],
                "timescaledb catalog": ["--section=data", *catalog],
                "data": ["--section=data", *[f"--exclude-schema={s}" for s in TS_SCHEMAS], *parallel],
                "indexes and constraints": ["--section=post-data", *parallel],
            }
            for step, args in steps.items():
                t0 = time.monotonic()
                try:
                    result.notes += run_tool([*base, *args, str(folder)], env, f"pg_restore ({step})")
                except ToolError as exc:
                    raise ToolError(f"{exc} (the database is incomplete: restore again with --drop-existing)") from exc
                result.steps[step] = time.monotonic() - t0
                log.info("restore step done", step=step, seconds=round(result.steps[step], 2))
    finally:
        t0 = time.monotonic()
        with connect_once(url) as conn:
            conn.execute("SELECT timescaledb_post_restore()")
        result.steps["post-restore"] = time.monotonic() - t0
    with connect_once(url) as conn:
        restored = stored_offsets(conn)
    if restored != manifest.offsets:
        raise BackupError(
            f"the restored consumer offsets differ from the backup's manifest ({sum(map(len, restored.values()))} "
            f"partitions restored, {manifest.partitions()} in the manifest): do not start consumers on it"
        )
    return result
