"""BatchWriter: a row the database refuses is isolated by halving, the rest of the batch commits."""

from __future__ import annotations

import math
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql

from gatestream.consumers.batch_writer import BatchWriter, TableBatch, WriteResult
from gatestream.consumers.deadletter import Reason
from gatestream.consumers.tables import TableSpec
from tests.unit.fakes import FakeConnection

SPEC = TableSpec("monitoring", "active_windows", ("id",), (25,))


class ScriptedWriter(BatchWriter):
    """A writer whose COPYs fail as scripted: ``refuse`` ids raise ``error``, ``present`` ids are
    duplicates (a COPY with one fails; the staged insert skips it)."""

    def __init__(self, refuse: set[int], error: Exception, present: frozenset[int] = frozenset()) -> None:
        super().__init__(cast(Any, FakeConnection()))
        self.refuse, self.error, self.present = refuse, error, present
        self.statements = 0

    def _check(self, rows: list[tuple[Any, ...]]) -> None:
        self.statements += 1
        if any(r[0] in self.refuse for r in rows):
            raise self.error

    def _copy(self, target: sql.Composable, spec: TableSpec, rows: list[tuple[Any, ...]]) -> None:
        self._check(rows)
        if any(r[0] in self.present for r in rows):
            raise psycopg.errors.UniqueViolation("duplicate key")

    def _staged_insert(self, spec: TableSpec, rows: list[tuple[Any, ...]]) -> int:
        self._check(rows)
        return sum(1 for r in rows if r[0] not in self.present)


def _write(writer: BatchWriter, n: int) -> WriteResult:
    rows = [(i,) for i in range(n)]
    return writer.write([TableBatch(SPEC, rows, [f"origin {i}" for i in range(n)])])


def test_one_refused_row_is_isolated_in_a_few_statements_and_the_rest_is_written() -> None:
    n = 64
    writer = ScriptedWriter({37}, psycopg.errors.CheckViolation("new row violates check constraint"))
    result = _write(writer, n)
    assert result.inserted == n - 1 and result.duplicates == 0
    assert [(r.origin, r.reason) for r in result.rejected] == [("origin 37", Reason.REJECTED_BY_DATABASE)]
    assert "monitoring.active_windows" in result.rejected[0].detail
    # the COPY, the whole table again on the slow path, then two halves per level down to the
    # single row: 14 statements for 64 rows, not one per row
    assert writer.statements <= 2 + 2 * math.ceil(math.log2(n))


def test_several_refused_rows_are_each_isolated() -> None:
    writer = ScriptedWriter({0, 13, 14, 99}, psycopg.errors.DataError("invalid byte sequence"))
    result = _write(writer, 100)
    assert sorted(r.origin for r in result.rejected) == ["origin 0", "origin 13", "origin 14", "origin 99"]
    assert result.inserted == 96


def test_a_row_that_fails_for_another_reason_is_an_internal_error() -> None:
    result = _write(ScriptedWriter({5}, ValueError("cannot encode")), 8)
    assert [(r.origin, r.reason, r.exception) for r in result.rejected] == [
        ("origin 5", Reason.INTERNAL_ERROR, "ValueError")
    ]
    assert result.inserted == 7


def test_a_lost_connection_ends_the_write_and_rejects_nothing() -> None:
    with pytest.raises(psycopg.OperationalError):
        _write(ScriptedWriter({3}, psycopg.OperationalError("server closed the connection")), 8)


def test_resent_events_are_counted_as_duplicates_not_rejected() -> None:
    writer = ScriptedWriter(set(), ValueError("unused"), present=frozenset({2, 4}))
    result = _write(writer, 10)
    assert (result.inserted, result.duplicates, result.rejected) == (8, 2, [])
    assert result.inserted_by_table == {"monitoring.active_windows": 8}


def test_the_checkpoint_runs_last_and_sees_the_result() -> None:
    seen: list[tuple[int, int]] = []
    writer = ScriptedWriter({1}, psycopg.errors.DataError("bad"))
    rows = [(i,) for i in range(4)]
    writer.write(
        [TableBatch(SPEC, rows, list(range(4))), TableBatch(SPEC, [], [])],
        lambda result: seen.append((result.inserted, len(result.rejected))),
    )
    assert seen == [(3, 1)]
