"""Durable local spool (SQLite): what the gateway accepted but Kafka has not yet acknowledged.

Rows are kept in acceptance order (``seq``); the publisher hands them to Kafka in that
order and deletes them only after the broker acknowledged them, so a broker outage or
a gateway restart loses nothing (a resend after a lost acknowledgement may duplicate an
event; consumers drop the duplicate by its ``event_id``).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple


class SpooledEvent(NamedTuple):
    seq: int
    topic: str
    key: bytes
    value: bytes


class Spool:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"spool synchronous mode must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB NOT NULL, value BLOB NOT NULL,"
            " accepted_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0))"
        )
        self._depth: int = int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def append(self, events: list[tuple[str, bytes, bytes]]) -> None:
        """Store events durably (one transaction); returns once they are on disk."""
        if not events:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO spool (topic, key, value) VALUES (?, ?, ?)", events)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += len(events)

    def read_after(self, seq: int, limit: int) -> list[SpooledEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [SpooledEvent(*r) for r in rows]

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= len(seqs)

    def min_seq(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT min(seq) FROM spool").fetchone()
        return None if row[0] is None else int(row[0])

    @property
    def depth(self) -> int:
        """Events accepted and not yet acknowledged by the broker."""
        return self._depth

    def close(self) -> None:
        with self._lock:
            self._db.close()
