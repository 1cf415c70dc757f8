"""Copies a legacy table into its hypertable: batches in primary-key order, a checkpoint
with each, so a killed run resumes where the last committed batch ended.

Per batch: one ``COPY (SELECT ... WHERE pk > last ORDER BY pk LIMIT n) TO STDOUT`` on the
source (keyset pagination: every batch is an index range scan, never an OFFSET that reads
all the rows before it; each batch is its own short statement, so no snapshot is held on
the source for the whole import), then the target's ``BatchWriter``: binary COPY into the
hypertable, and where rows are already there (a re-import, a resumed run) the
duplicate-tolerant ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key
(event_id, time). Rows the hypertable refuses (a CHECK, a NOT NULL) are recorded in
``gatestream.import_rejects`` with the reason. The checkpoint and the rejects commit in
the batch's transaction: rows and position can never disagree.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql

from gatestream.consumers.batch_writer import BatchWriter, TableBatch, WriteResult
from gatestream.legacy.mapping import MappingError, event_id_of
from gatestream.legacy.plan import ImportPlan

log = structlog.get_logger("gatestream.legacy.importer")


@dataclass(frozen=True)
class Window:
    """Only legacy rows whose time is in [since, until): e.g. up to the dual-write cut-over."""

    since: datetime | None = None
    until: datetime | None = None

    def condition(self, time_expr: sql.Composable) -> list[sql.Composable]:
        out: list[sql.Composable] = []
        if self.since is not None:
            out.append(sql.SQL("{} >= {}").format(time_expr, sql.Literal(self.since)))
        if self.until is not None:
            out.append(sql.SQL("{} < {}").format(time_expr, sql.Literal(self.until)))
        return out


@dataclass
class ImportSummary:
    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    resumed_after: int | None = None  # the checkpoint's primary key this run started after
    seconds: float = 0.0
    finished: bool = False

    @property
    def consumed(self) -> int:  # what gatestream.progress counts
        return self.read

    @property
    def rows_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Checkpoint:
    last_pk: int | None
    since: datetime | None
    until: datetime | None
    rows_read: int


@dataclass
class Importer:
    plan: ImportPlan
    source: psycopg.Connection[Any]  # autocommit
    target: psycopg.Connection[Any]  # autocommit (each batch is its own transaction)
    source_identity: str
    batch_rows: int = 50_000
    pause_s: float = 0.0
    window: Window = field(default_factory=Window)
    on_batch: Callable[[ImportSummary], None] | None = None

    @property
    def _key(self) -> tuple[str, str, str]:
        return (self.source_identity, self.plan.source_name, self.plan.target_name)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> Checkpoint | None:
        row = self.target.execute(
            """SELECT last_pk, time_from, time_to, rows_read FROM gatestream.import_checkpoints
                WHERE source = %s AND source_table = %s AND target_table = %s""",
            self._key,
        ).fetchone()
        return None if row is None else Checkpoint(row[0], row[1], row[2], int(row[3]))

    def _reset(self) -> None:
        self.target.execute(
            """INSERT INTO gatestream.import_checkpoints AS c (source, source_table, target_table, time_from, time_to)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (source, source_table, target_table) DO UPDATE SET
                   last_pk = NULL, time_from = EXCLUDED.time_from, time_to = EXCLUDED.time_to, rows_read = 0,
                   rows_inserted = 0, rows_duplicate = 0, rows_rejected = 0, started_at = now(), updated_at = now(),
                   finished_at = NULL""",
            (*self._key, self.window.since, self.window.until),
        )

    def _save(self, result: WriteResult, *, last_pk: int, read: int) -> None:
        cur = self.target.cursor()
        cur.execute(
            """UPDATE gatestream.import_checkpoints SET last_pk = %s, rows_read = rows_read + %s,
                      rows_inserted = rows_inserted + %s, rows_duplicate = rows_duplicate + %s,
                      rows_rejected = rows_rejected + %s, updated_at = now(), finished_at = NULL
                WHERE source = %s AND source_table = %s AND target_table = %s""",
            (last_pk, read, result.inserted, result.duplicates, len(result.rejected), *self._key),
        )
        if cur.rowcount != 1:  # reset by another run meanwhile: do not commit this batch's position over it
            raise RuntimeError("the import checkpoint row vanished; is another import of this table running?")
        if result.rejected:
            cur.executemany(
                """INSERT INTO gatestream.import_rejects (source, source_table, target_table, pk, reason, detail)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (source, source_table, target_table, pk) DO UPDATE SET
                       reason = EXCLUDED.reason, detail = EXCLUDED.detail, rejected_at = now()""",
                [(*self._key, int(r.origin), str(r.reason), r.detail) for r in result.rejected],
            )

    def _finish(self) -> None:
        self.target.execute(
            """UPDATE gatestream.import_checkpoints SET finished_at = now(), updated_at = now()
                WHERE source = %s AND source_table = %s AND target_table = %s""",
            self._key,
        )

    # ------------------------------------------------------------------ source
    def _read_batch(self, after: int | None) -> list[tuple[Any, ...]]:
        plan = self.plan
        conds = self.window.condition(plan.time_expr)
        if after is not None:
            conds.insert(0, sql.SQL("{} > {}").format(plan.pk, sql.Literal(after)))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
        stmt = sql.SQL(
            "COPY (SELECT CAST({pk} AS bigint), {exprs} FROM {src}{where} ORDER BY {pk} LIMIT {n}) "
            "TO STDOUT (FORMAT BINARY)"
        ).format(
            pk=plan.pk, exprs=sql.SQL(", ").join(plan.source_exprs), src=plan.source, where=where,
            n=sql.Literal(self.batch_rows),
        )  # fmt: skip
        with self.source.cursor().copy(stmt) as cp:
            cp.set_types([20, *plan.target.type_oids[1:]])
            return list(cp.rows())

    def remaining_estimate(self, done: int) -> int | None:
        """The source's row estimate (pg_class.reltuples, no scan) less what is done; None if unknown."""
        if self.window.since is not None or self.window.until is not None:
            return None
        schema, table = self.plan.mapping.source_table
        row = self.source.execute(
            """SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s""",
            (schema, table),
        ).fetchone()
        if row is None or row[0] is None or row[0] < 0:
            return None
        return max(int(row[0]) - done, 0)

    # ------------------------------------------------------------------ run
    def start(self, *, restart: bool = False) -> tuple[int | None, int]:
        """Where this run begins: (last committed primary key or None, rows already read). Holds a
        session advisory lock on the target for this source table (until the connection closes):
        two runs of one import would interleave their checkpoints."""
        locked = self.target.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", ("gatestream-import|" + "|".join(self._key),)
        ).fetchone()
        if not locked or not locked[0]:
            raise MappingError(
                f"another import of {self.plan.source_name} -> {self.plan.target_name} from this source is running"
            )
        ck = self.checkpoint()
        if ck is not None and not restart and (ck.since, ck.until) != (self.window.since, self.window.until):
            raise MappingError(
                f"the checkpoint of {self.plan.source_name} -> {self.plan.target_name} was made for another "
                f"--since/--until window ({ck.since} .. {ck.until}); run with --restart to start over"
            )
        if ck is None or restart:
            self._reset()
            return None, 0
        return ck.last_pk, ck.rows_read

    def run(self, *, restart: bool = False) -> ImportSummary:
        after, _ = self.start(restart=restart)
        summary = ImportSummary(resumed_after=after)
        writer = BatchWriter(self.target)
        scope = self.plan.mapping.scope
        began = time.monotonic()
        log.info("import started", source=self.source_identity, table=self.plan.source_name,
                 target=self.plan.target_name, after_pk=after, batch_rows=self.batch_rows)  # fmt: skip
        while True:
            rows = self._read_batch(after)
            if not rows:
                break
            pks = [int(r[0]) for r in rows]
            batch = TableBatch(self.plan.target, rows=[(event_id_of(scope, r[0]), *r[1:]) for r in rows], origins=pks)
            last = pks[-1]
            result = writer.write([batch], before_commit=functools.partial(self._save, last_pk=last, read=len(rows)))
            after = last
            summary.batches += 1
            summary.read += len(rows)
            summary.inserted += result.inserted
            summary.duplicates += result.duplicates
            summary.rejected += len(result.rejected)
            summary.seconds = time.monotonic() - began
            if self.on_batch is not None:
                self.on_batch(summary)
            if len(rows) < self.batch_rows:
                break
            if self.pause_s > 0:
                time.sleep(self.pause_s)
        self._finish()
        summary.finished = True
        summary.seconds = time.monotonic() - began
        log.info("import finished", table=self.plan.source_name, target=self.plan.target_name, read=summary.read,
                 inserted=summary.inserted, duplicates=summary.duplicates, rejected=summary.rejected,
                 rows_per_s=round(summary.rows_per_s))  # fmt: skip
        return summary
