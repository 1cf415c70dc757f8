"""Writes one micro-batch: rows of several hypertables, then the caller's checkpoint, one transaction.

Fast path: binary COPY straight into each hypertable. If the database refuses the
COPY, the table's rows take a slower path inside the same transaction:
- a duplicate ``event_id`` (a gateway resent an event): COPY into a temporary staging
  table, then ``INSERT ... ON CONFLICT DO NOTHING``; the duplicates are counted;
- a row the database rejects (a CHECK, a NUL byte in text, ...): the rows are split in
  halves under savepoints until each rejected row stands alone (a few statements per
  bad row, not one per row); rejected rows are handed back with the database's reason,
  for the dead-letter topic, and the rest of the batch commits;
- a row that fails for any other reason on its way into the COPY (a value a dumper
  cannot encode, a bug nobody foresaw): isolated the same way, handed back as
  ``internal-error`` with the exception's class. Only infrastructure failures (the
  connection is gone) end the write, so no single event can stop a partition.
The caller's ``before_rows`` runs first (presence and the tenant check: it may take
rows out), its ``before_commit`` last, in the same transaction (the checkpoint:
offsets under the fence, dead letters; see ``consumers.checkpoint``); if it raises,
nothing of the batch commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from gatestream.consumers.deadletter import Reason
from gatestream.consumers.pgtypes import COPY_SIGNATURE, COPY_TRAILER, register_wire_dumpers
from gatestream.consumers.tables import TableSpec

Origin = Any  # the source confluent_kafka.Message (topic, partition, offset, key, value)


@dataclass
class TableBatch:
    """Rows are tuples of values (psycopg writes them) or COPY tuples the native
    transcoder made (``bytes``, written as they are)."""

    spec: TableSpec
    rows: list[Any] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    origin: Origin
    reason: str
    detail: str
    exception: str | None = None
    sqlstate: str | None = None


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    inserted_by_table: dict[str, int] = field(default_factory=dict)
    duplicates_by_table: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def _infrastructure(exc: BaseException) -> bool:
    """Failures of the connection, not of a row: the batch is retried, never dead-lettered."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or not isinstance(exc, Exception)


def _reason(exc: Exception) -> str:
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return Reason.REJECTED_BY_DATABASE
    return Reason.INTERNAL_ERROR


class BatchWriter:
    def __init__(self, conn: psycopg.Connection[Any], *, async_commit: bool = False) -> None:
        """``async_commit``: the batch transaction commits without waiting for its WAL
        flush. Safe here because the offsets commit with the rows: a server crash can only
        rewind both together, and the rows are read again."""
        self.conn = conn
        self.async_commit = async_commit
        register_wire_dumpers(conn)

    def write(
        self,
        tables: Sequence[TableBatch],
        before_commit: Callable[[WriteResult], None] | None = None,
        *,
        upsert: bool = False,
        before_rows: Callable[[], None] | None = None,
    ) -> WriteResult:
        """``before_rows`` (it may take rows out of ``tables``), all rows, then
        ``before_commit``, atomically. ``upsert`` always takes the duplicate-tolerant path,
        reporting inserted vs already present."""
        result = WriteResult()
        with self.conn.transaction():  # (a savepoint, inside a dry run's transaction)
            if self.async_commit:
                self.conn.execute("SET LOCAL synchronous_commit = off")
            if before_rows is not None:
                before_rows()
            for tb in tables:
                if tb.rows:
                    before, dups = result.inserted, result.duplicates
                    self._write_table(tb, result, upsert)
                    result.inserted_by_table[tb.spec.name] = result.inserted - before
                    result.duplicates_by_table[tb.spec.name] = result.duplicates - dups
            if before_commit is not None:
                before_commit(result)
        return result

    # ------------------------------------------------------------------ paths
    def _copy(self, target: sql.Composable, spec: TableSpec, rows: list[Any]) -> None:
        stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, spec.columns))
        )
        encoded = [row for row in rows if type(row) is bytes]
        with self.conn.cursor().copy(stmt) as cp:
            cp.set_types(list(spec.type_oids))
            if encoded:  # the stream's header, then the native COPY tuples as one block
                cp.write(COPY_SIGNATURE)
                cp.write(b"".join(encoded))
            if len(encoded) == len(rows):
                if encoded:
                    cp.write(COPY_TRAILER)  # (psycopg adds it only after rows of its own)
                return
            write_row = cp.write_row
            for row in rows:
                if type(row) is not bytes:
                    write_row(row)

    def _write_table(self, tb: TableBatch, result: WriteResult, upsert: bool) -> None:
        if not upsert:
            try:
                with self.conn.transaction():
                    self._copy(tb.spec.qualified, tb.spec, tb.rows)
                result.inserted += len(tb.rows)
                return
            except psycopg.errors.UniqueViolation:
                pass  # a resent event: the duplicate-tolerant path below
            except Exception as exc:  # a refused or unencodable row: isolate it below
                if _infrastructure(exc):
                    raise
        self._isolate(tb, result)

    def _staging_table(self, spec: TableSpec) -> sql.Identifier:
        # Not cached: its creation may be rolled back with the savepoint it ran in.
        name = sql.Identifier(f"stage_{spec.schema}_{spec.table}")
        self.conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                name, spec.qualified
            )
        )
        return name

    def _staged_insert(self, spec: TableSpec, rows: list[Any]) -> int:
        stage = self._staging_table(spec)
        self.conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._copy(stage, spec, rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
        cur = self.conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                spec.qualified, cols, cols, stage
            )
        )
        return cur.rowcount

    def _isolate(self, tb: TableBatch, result: WriteResult) -> None:
        """Insert what the database accepts, skip duplicates, and collect each refused row."""
        spans = [(0, len(tb.rows))]
        while spans:
            lo, hi = spans.pop()
            try:
                with self.conn.transaction():
                    inserted = self._staged_insert(tb.spec, tb.rows[lo:hi])
                result.inserted += inserted
                result.duplicates += (hi - lo) - inserted
            except Exception as exc:
                if _infrastructure(exc):
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    spans += [(mid, hi), (lo, mid)]
                    continue
                result.rejected.append(
                    Rejected(
                        tb.origins[lo], _reason(exc), _describe(tb.spec, exc), _class_name(exc),
                        getattr(getattr(exc, "diag", None), "sqlstate", None),
                    )
                )  # fmt: skip


def _class_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _describe(spec: TableSpec, exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    if diag is None or diag.sqlstate is None:
        return f"{spec.name}: {_class_name(exc)}: {exc}"
    text = f"{spec.name}: {diag.sqlstate} {diag.message_primary}"
    return text + (f" ({diag.constraint_name})" if diag.constraint_name else "")
