"""The mapping checked against both databases: what to select from the legacy table, how to
cast it to the hypertable's types, and what to write.

Every cast is done by the source server (``CAST(col AS <target type>)``), so the values the
import copies and the text ``verify`` hashes are the same on both sides. Types are allowed
to meet when PostgreSQL's type categories agree (integer into integer, any text into text,
date/timestamp into timestamptz, ...); a timestamp without time zone is read in the
mapping's time zone. Anything else is refused before a row moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from gatestream.consumers.tables import TableSpec
from gatestream.legacy.mapping import Mapping, MappingError

# The target types the import writes, by OID: the SQL it casts to (ours, never input).
_TARGET_TYPES: dict[int, str] = {
    16: "boolean", 20: "bigint", 21: "smallint", 23: "integer", 25: "text", 700: "real", 701: "double precision",
    1043: "varchar", 1700: "numeric", 2950: "uuid", 1114: "timestamp", 1184: "timestamptz", 1082: "date",
    3802: "jsonb", 114: "json",
}  # fmt: skip
_INTEGERS = {20, 21, 23}
_TIMESTAMPTZ = 1184
_LOCAL_TIMES = {1114, 1082}  # timestamp without time zone, date


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_name: str
    category: str
    not_null: bool
    has_default: bool


@dataclass(frozen=True)
class ImportPlan:
    mapping: Mapping
    source: sql.Composed  # the legacy table, qualified
    pk: sql.Identifier
    source_exprs: tuple[sql.Composable, ...]  # one per target column, cast to its type
    target: TableSpec  # event_id first, then the mapped columns
    time_column: str  # the hypertable's time dimension

    @property
    def time_expr(self) -> sql.Composable:
        """The source expression that fills the time column."""
        return self.source_expr(self.time_column)

    @property
    def source_name(self) -> str:
        return ".".join(self.mapping.source_table)

    @property
    def target_name(self) -> str:
        return self.target.name

    def source_expr(self, target_column: str) -> sql.Composable:
        """The source expression that fills ``target_column`` (a mapped one)."""
        return self.source_exprs[self.target.columns.index(target_column) - 1]  # columns[0] is event_id


def utc_session(conn: psycopg.Connection[Any]) -> None:
    """Day boundaries and the text of timestamps in UTC, the same on both servers (verify hashes text)."""
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET DateStyle = 'ISO, YMD'")
    conn.execute("SET extra_float_digits = 1")


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Column] | None:
    """The table's columns, or None where there is no such table (or view)."""
    exists = conn.execute(
        """SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
        (schema, table),
    ).fetchone()
    if exists is None:
        return None
    rows = conn.execute(
        """SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), t.typcategory, a.attnotnull,
                  a.atthasdef
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (exists[0],),
    ).fetchall()
    return {r[0]: Column(r[0], int(r[1]), r[2], r[3], bool(r[4]), bool(r[5])) for r in rows}


def _unique_single_column(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> bool:
    row = conn.execute(
        """SELECT 1 FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
            WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s
              AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL LIMIT 1""",
        (schema, table, column),
    ).fetchone()
    return row is not None


def _time_dimension(conn: psycopg.Connection[Any], schema: str, table: str) -> str | None:
    row = conn.execute(
        """SELECT column_name FROM timescaledb_information.dimensions
            WHERE hypertable_schema = %s AND hypertable_name = %s AND dimension_type = 'Time'
            ORDER BY dimension_number LIMIT 1""",
        (schema, table),
    ).fetchone()
    return None if row is None else str(row[0])


def _compatible(src: Column, dst: Column) -> bool:
    if dst.type_oid in _INTEGERS:
        return src.type_oid in _INTEGERS
    if dst.type_oid == 2950:  # uuid: from uuid or its text
        return src.type_oid == 2950 or src.category == "S"
    return src.category == dst.category


def _cast(src: Column, dst: Column, timezone: str) -> sql.Composable:
    col = sql.Identifier(src.name)
    if dst.type_oid == _TIMESTAMPTZ and src.type_oid in _LOCAL_TIMES:
        return sql.SQL("(CAST({} AS timestamp) AT TIME ZONE {})").format(col, sql.Literal(timezone))
    return sql.SQL("CAST({} AS {})").format(col, sql.SQL(_TARGET_TYPES[dst.type_oid]))


def check_timezone(conn: psycopg.Connection[Any], timezone: str) -> None:
    if conn.execute("SELECT 1 FROM pg_timezone_names WHERE name = %s", (timezone,)).fetchone() is None:
        raise MappingError(f"unknown time zone {timezone!r} (source timezone)")


def make_plan(mapping: Mapping, source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> ImportPlan:
    """Check the mapping against both databases; MappingError (one line) says what is wrong."""
    s_schema, s_table = mapping.source_table
    t_schema, t_table = mapping.target_table
    s_cols = _columns(source, s_schema, s_table)
    if s_cols is None:
        raise MappingError(f"source table {s_schema}.{s_table} does not exist in the legacy database")
    t_cols = _columns(target, t_schema, t_table)
    if t_cols is None:
        raise MappingError(f"target table {t_schema}.{t_table} does not exist; run `gatestream db migrate`")
    time_column = _time_dimension(target, t_schema, t_table)
    if time_column is None:
        raise MappingError(f"target table {t_schema}.{t_table} is not a hypertable")
    for needed, type_oid in (("event_id", 2950), ("organization_id", None)):
        have = t_cols.get(needed)
        if have is None or (type_oid is not None and have.type_oid != type_oid):
            raise MappingError(f"target table {t_schema}.{t_table} has no {needed} column of the event tables")

    pk = s_cols.get(mapping.primary_key)
    if pk is None:
        raise MappingError(f"source table {s_schema}.{s_table} has no column {mapping.primary_key!r} (primary key)")
    if pk.type_oid not in _INTEGERS:
        raise MappingError(f"primary key {mapping.primary_key} is {pk.type_name}; the import pages on an integer key")
    if not _unique_single_column(source, s_schema, s_table, pk.name):
        raise MappingError(f"{mapping.primary_key} is not the primary key (nor unique) of {s_schema}.{s_table}")
    check_timezone(source, mapping.source_timezone)

    for target_col, source_col in mapping.columns.items():
        if target_col not in t_cols:
            raise MappingError(f"mapping names target column {target_col!r}, which {t_schema}.{t_table} does not have")
        if source_col not in s_cols:
            raise MappingError(f"mapping names source column {source_col!r}, which {s_schema}.{s_table} does not have")
    pairs: list[tuple[Column, Column]] = []
    for name, dst in t_cols.items():
        if name == "event_id":
            continue
        src_name = mapping.columns.get(name, name if name in s_cols else None)
        if src_name is None:
            if dst.not_null and not dst.has_default:
                raise MappingError(f"target column {name} is NOT NULL and no source column fills it; map it")
            continue
        src = s_cols[src_name]
        if dst.type_oid not in _TARGET_TYPES:
            raise MappingError(f"target column {name} has type {dst.type_name}, which the import does not write")
        if not _compatible(src, dst):
            raise MappingError(
                f"type mismatch: source column {src.name} is {src.type_name}, target column {name} is {dst.type_name}"
            )
        pairs.append((src, dst))
    mapped = {dst.name for _, dst in pairs}
    for needed in ("organization_id", time_column):
        if needed not in mapped:
            raise MappingError(f"no source column fills target column {needed}; map it")

    exprs = tuple(_cast(src, dst, mapping.source_timezone) for src, dst in pairs)
    columns = ("event_id", *(dst.name for _, dst in pairs))
    spec = TableSpec(
        schema=t_schema,
        table=t_table,
        columns=columns,
        type_oids=(2950, *(dst.type_oid for _, dst in pairs)),
    )
    return ImportPlan(
        mapping=mapping,
        source=sql.SQL("{}.{}").format(sql.Identifier(s_schema), sql.Identifier(s_table)),
        pk=sql.Identifier(pk.name),
        source_exprs=exprs,
        target=spec,
        time_column=time_column,
    )
