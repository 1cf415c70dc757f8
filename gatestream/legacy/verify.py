"""Compares a legacy table with what the import put into its hypertable, per organization and
day (UTC): the row count, and a digest of the rows' canonical text.

The canonical text of a row is its mapped columns, cast to the hypertable's types by the
source server (the import's own casts, ``plan``), as ``ROW(...)::text`` — the same text on
both servers when both sessions render times in UTC (``plan.utc_session``). The digest is
the sum of ``hashtextextended`` of those texts: independent of row order, so neither side
sorts, and one changed, missing or extra row changes it. Both sums are computed in SQL; a
day's figures are a few bytes on the wire however many rows it has.

On the target only imported rows count: their event_ids are UUIDv5 (``mapping.event_id_of``),
gateways' are UUIDv7, so rows streamed in during a dual-write period do not show as extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from gatestream.legacy.importer import Window
from gatestream.legacy.plan import ImportPlan

Day = tuple[int | None, date | None]  # (organization_id, UTC day)


@dataclass(frozen=True)
class Digest:
    rows: int
    digest: Decimal


@dataclass(frozen=True)
class DayDifference:
    organization_id: int | None
    day: date | None
    source: Digest | None
    target: Digest | None

    def describe(self) -> str:
        src = self.source.rows if self.source else 0
        dst = self.target.rows if self.target else 0
        what = f"source {src} rows, target {dst} rows" if src != dst else f"{src} rows each, contents differ"
        return f"organization {self.organization_id} day {self.day}: {what}"


def _digest(columns: sql.Composable) -> sql.Composed:
    return sql.SQL("count(*), coalesce(sum(hashtextextended(ROW({}) :: text, 0) :: numeric), 0)").format(columns)


def _digests(conn: psycopg.Connection[Any], query: sql.Composed) -> dict[Day, Digest]:
    return {(r[0], r[1]): Digest(int(r[2]), Decimal(r[3])) for r in conn.execute(query).fetchall()}


def source_digests(conn: psycopg.Connection[Any], plan: ImportPlan, window: Window) -> dict[Day, Digest]:
    conds = window.condition(plan.time_expr)
    query = sql.SQL("SELECT {org}, CAST(date_trunc('day', {t}) AS date), {digest} FROM {src}{where} GROUP BY 1, 2")
    return _digests(
        conn,
        query.format(
            digest=_digest(sql.SQL(", ").join(plan.source_exprs)),
            org=plan.source_expr("organization_id"),
            t=plan.time_expr,
            src=plan.source,
            where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL(""),
        ),
    )


def target_digests(conn: psycopg.Connection[Any], plan: ImportPlan, window: Window) -> dict[Day, Digest]:
    t = sql.Identifier(plan.time_column)
    conds = [sql.SQL("substr(event_id :: text, 15, 1) = '5'"), *window.condition(t)]  # UUIDv5: imported rows
    query = sql.SQL(
        "SELECT organization_id, CAST(date_trunc('day', {t}) AS date), {digest} FROM {dst} WHERE {where} GROUP BY 1, 2"
    )
    return _digests(
        conn,
        query.format(
            digest=_digest(sql.SQL(", ").join(map(sql.Identifier, plan.target.columns[1:]))),
            t=t,
            dst=plan.target.qualified,
            where=sql.SQL(" AND ").join(conds),
        ),
    )


def differences(source: dict[Day, Digest], target: dict[Day, Digest]) -> list[DayDifference]:
    days = sorted(
        source.keys() | target.keys(), key=lambda d: (d[0] is None, d[0] or 0, d[1] is None, d[1] or date.min)
    )
    return [
        DayDifference(org, day, source.get((org, day)), target.get((org, day)))
        for org, day in days
        if source.get((org, day)) != target.get((org, day))
    ]


def rejected_count(conn: psycopg.Connection[Any], source_identity: str, plan: ImportPlan) -> int:
    row = conn.execute(
        """SELECT count(*) FROM gatestream.import_rejects
            WHERE source = %s AND source_table = %s AND target_table = %s""",
        (source_identity, plan.source_name, plan.target_name),
    ).fetchone()
    return int(row[0]) if row else 0
