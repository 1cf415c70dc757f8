"""``gatestream db backup``: a consistent pg_dump of the database, and what it knows.

The dump is pg_dump's directory format, written by ``jobs`` processes in parallel (one
table, i.e. one chunk, at a time each). All of them read one snapshot, which this module
exports from a REPEATABLE READ transaction of its own and reads the consumer offsets in:
the manifest (``gatestream-backup.json`` beside pg_dump's files) holds exactly the offsets
the dumped rows stop at. Restoring the dump therefore rewinds rows *and* offsets to that
instant, and the consumers re-read the rest from Kafka, none twice (as long as the topics
still hold it: retention must outlast the interval between backups).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gatestream.database import connect_once, where
from gatestream.edition import timescaledb_edition
from gatestream.pg_tools import conninfo_and_env, find_tool, run_tool, server_major

log = structlog.get_logger("gatestream.backup")

MANIFEST = "gatestream-backup.json"
FORMAT = 1  # the manifest's layout


class BackupError(Exception):
    """The backup cannot be taken or read (one line)."""


@dataclass
class Manifest:
    database: str  # the source database's name
    source: str  # host:port/dbname (never the password)
    taken_at: str  # ISO time of the snapshot
    postgres_major: int
    timescaledb_version: str
    edition: str
    # consumer group -> "topic/partition" -> next offset, as of the dump's snapshot
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    format: int = FORMAT

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not (folder / "toc.dat").exists():
            raise BackupError(f"{folder} is not a pg_dump directory (no toc.dat)")
        if not path.exists():
            raise BackupError(f"{folder} has no {MANIFEST}: not a backup made by gatestream db backup")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise BackupError(f"{path}: manifest format {data.get('format')!r}, this gatestream reads {FORMAT}")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise BackupError(f"{path} is not a readable manifest: {exc}") from exc

    def partitions(self) -> int:
        return sum(len(parts) for parts in self.offsets.values())


@dataclass
class BackupResult:
    folder: Path
    manifest: Manifest
    seconds: float
    bytes: int
    notes: list[str]


def stored_offsets(conn: Any) -> dict[str, dict[str, int]]:
    """Every group's stored next offsets, keyed "topic/partition" (the manifest's shape)."""
    out: dict[str, dict[str, int]] = {}
    for group, topic, part, offset in conn.execute(
        "SELECT consumer_group, topic, partition, next_offset FROM gatestream.consumer_offsets ORDER BY 1, 2, 3"
    ).fetchall():
        out.setdefault(str(group), {})[f"{topic}/{part}"] = int(offset)
    return out


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def backup(url: str, folder: Path, *, jobs: int = 2, bindir: Path | None = None) -> BackupResult:
    """Dump the database at ``url`` into ``folder`` (which must not exist, or be empty)."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BackupError(f"{folder} exists and is not an empty folder: a backup goes into a new one")
    started = time.monotonic()
    with connect_once(url) as conn:  # autocommit: the BEGIN below is ours
        pg_dump = find_tool("pg_dump", server_major(conn), bindir)
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if row is None:
            raise BackupError(f"{where(url)} has no TimescaleDB extension: not a gatestream database")
        edition = timescaledb_edition(conn).value
        # One snapshot for pg_dump's processes and for the offsets in the manifest: held open
        # (this transaction) until pg_dump is done with it.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot is not None
        offsets = stored_offsets(conn)
        meta = conn.execute(
            "SELECT current_database(), now(), current_setting('server_version_num')::int / 10000"
        ).fetchone()
        assert meta is not None
        manifest = Manifest(
            database=str(meta[0]), source=where(url), taken_at=meta[1].astimezone(UTC).isoformat(),
            postgres_major=int(meta[2]), timescaledb_version=str(row[0]), edition=edition, offsets=offsets,
        )  # fmt: skip
        conninfo, env = conninfo_and_env(url)
        argv = [str(pg_dump), "--format=directory", f"--jobs={max(1, jobs)}", f"--snapshot={snapshot[0]}",
                f"--file={folder}", f"--dbname={conninfo}"]  # fmt: skip
        log.info("backup started", folder=str(folder), jobs=jobs, snapshot=snapshot[0])
        try:
            notes = run_tool(argv, env, "pg_dump")
        finally:
            conn.execute("COMMIT")
    manifest.write(folder)
    result = BackupResult(folder, manifest, time.monotonic() - started, _size(folder), notes)
    log.info("backup done", folder=str(folder), seconds=round(result.seconds, 2), bytes=result.bytes)
    return result


def describe(m: Manifest) -> str:
    when = datetime.fromisoformat(m.taken_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        f"database {m.database} as of {when} (PostgreSQL {m.postgres_major}, TimescaleDB "
        f"{m.timescaledb_version} {m.edition}), offsets of {len(m.offsets)} consumer group(s) "
        f"over {m.partitions()} partition(s)"
    )
