"""Writes one micro-batch: rows of several hypertables and the new offsets, one transaction.

Fast path: (binary) COPY straight into each hypertable. If the database refuses the
COPY, the table's rows take a slower path inside the same transaction:
- a duplicate ``event_id`` (a gateway resent an event): COPY into a temporary staging
  table, then ``INSERT ... ON CONFLICT DO NOTHING``; the duplicates are counted;
- a row the database rejects (a CHECK, a NUL byte in text, ...): rows are inserted one by
  one under savepoints and the rejected ones are handed back with the database's reason,
  for the dead-letter topic; the rest of the batch commits.
The caller's ``before_commit`` runs last (it publishes dead letters and waits for the
broker's acknowledgement); if it raises, nothing of the batch commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from consumers.offsets import TopicPartition, advance_offsets
from consumers.tables import TableSpec

Origin = Any  # the source confluent_kafka.Message (topic, partition, offset, key, value)


@dataclass
class TableBatch:
    spec: TableSpec
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    origin: Origin
    reason: str
    detail: str


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    inserted_by_table: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


class BatchWriter:
    def __init__(self, conn: psycopg.Connection[Any], group: str, *, binary: bool = True) -> None:
        self.conn = conn
        self.group = group
        self.binary = binary
        self._staging: set[str] = set()

    def write(
        self,
        tables: Sequence[TableBatch],
        moves: dict[TopicPartition, tuple[int | None, int]],
        before_commit: Callable[[WriteResult], None] | None = None,
        *,
        upsert: bool = False,
    ) -> WriteResult:
        """Write all rows and offset moves atomically. ``upsert`` always takes the
        duplicate-tolerant path (replay), reporting inserted vs already present."""
        result = WriteResult()
        with self.conn.transaction():
            for tb in tables:
                if tb.rows:
                    before = result.inserted
                    self._write_table(tb, result, upsert)
                    result.inserted_by_table[tb.spec.name] = result.inserted - before
            if moves:
                advance_offsets(self.conn, self.group, moves)
            if before_commit is not None:
                before_commit(result)
        return result

    # ------------------------------------------------------------------ paths
    def _copy(self, target: sql.Composable, spec: TableSpec, rows: list[tuple[Any, ...]]) -> None:
        stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, spec.columns)),
            sql.SQL(" (FORMAT BINARY)") if self.binary else sql.SQL(""),
        )
        with self.conn.cursor().copy(stmt) as cp:
            if self.binary:
                cp.set_types(list(spec.type_oids))
            for row in rows:
                cp.write_row(row)

    def _write_table(self, tb: TableBatch, result: WriteResult, upsert: bool) -> None:
        if not upsert:
            try:
                with self.conn.transaction():
                    self._copy(tb.spec.qualified, tb.spec, tb.rows)
                result.inserted += len(tb.rows)
                return
            except psycopg.errors.UniqueViolation:
                pass
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                self._row_by_row(tb, result)
                return
        try:
            with self.conn.transaction():
                inserted = self._staged_insert(tb)
            result.inserted += inserted
            result.duplicates += len(tb.rows) - inserted
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
            self._row_by_row(tb, result)

    def _staging_table(self, spec: TableSpec) -> sql.Identifier:
        name = f"stage_{spec.schema}_{spec.table}"
        if name not in self._staging:
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                    sql.Identifier(name), spec.qualified
                )
            )
            self._staging.add(name)
        return sql.Identifier(name)

    def _staged_insert(self, tb: TableBatch) -> int:
        spec = tb.spec
        stage = self._staging_table(spec)
        self.conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._copy(stage, spec, tb.rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
        cur = self.conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                spec.qualified, cols, cols, stage
            )
        )
        return cur.rowcount

    def _row_by_row(self, tb: TableBatch, result: WriteResult) -> None:
        spec = tb.spec
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
            spec.qualified,
            sql.SQL(", ").join(map(sql.Identifier, spec.columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(spec.columns)),
        )
        for row, origin in zip(tb.rows, tb.origins, strict=True):
            try:
                with self.conn.transaction():
                    cur = self.conn.execute(stmt, row)
                if cur.rowcount:
                    result.inserted += 1
                else:
                    result.duplicates += 1
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                diag = exc.diag
                result.rejected.append(
                    Rejected(
                        origin,
                        "rejected-by-database",
                        f"{spec.name}: {diag.sqlstate} {diag.message_primary}"
                        + (f" ({diag.constraint_name})" if diag.constraint_name else ""),
                    )
                )
