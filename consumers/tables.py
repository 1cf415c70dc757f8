"""Where each topic's events land: the hypertable, its columns and their types.

Columns are read from the database at start-up and matched by name to the reader
schema's fields, so the mapping needs no hand-kept list: a column the schema does not
carry (``created_at``) takes its default, a schema field without a column is not stored.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class TableSpec:
    schema: str
    table: str
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    row_of: Callable[[dict[str, Any]], tuple[Any, ...]] = field(compare=False, repr=False, default=tuple)

    @property
    def qualified(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


class TableMappingError(Exception):
    pass


def describe_table(conn: psycopg.Connection[Any], schema: str, table: str, fields: list[str]) -> TableSpec:
    """Build the spec of ``schema.table`` for records with ``fields``."""
    rows = conn.execute(
        """SELECT a.attname, a.atttypid
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (schema, table),
    ).fetchall()
    if not rows:
        raise TableMappingError(f"table {schema}.{table} does not exist; run `gatestream db migrate`")
    wanted = set(fields)
    cols = [(name, oid) for name, oid in rows if name in wanted]
    if not cols:
        raise TableMappingError(f"no column of {schema}.{table} matches the schema's fields {fields}")
    names = tuple(c[0] for c in cols)
    getter = operator.itemgetter(*names)
    return TableSpec(
        schema=schema,
        table=table,
        columns=names,
        type_oids=tuple(int(c[1]) for c in cols),
        row_of=getter,
    )
