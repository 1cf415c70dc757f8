"""The columnstore (compression) settings of our hypertables: one definition, applied by
the policy consumer and measured by ``gatestream bench storage``.

``segmentby organization_id``: every dashboard reads one organization. ``orderby <key>,
<time> DESC``, the key being the catalog's key field of the table (the device,
``users_on_computers_id``, or the gateway): one device's rows lie together in a segment,
so its id is a run of one value, its titles and applications repeat from row to row and
its event times and UUIDv7 ids rise in small steps, which is what the columnstore's
run-length, dictionary and delta encodings compress; a device's timeline and a
gateway's latest status read a few batches (min/max metadata on the key). Measured on
the generated dataset (README, Benchmarks): see ``bench storage``.

``sparse_index bloom(event_id)``, and nothing else: left alone, TimescaleDB 2.2x derives
sparse indexes from the btree indexes, a bloom on event_id and composite blooms on
(event_id, datetime) and (<device>, datetime) — about 1 byte per row each, a third of
what a compressed row's non-id columns take. The bloom on event_id lets a late or replayed
row's duplicate check (the primary key) skip the batches that cannot hold its id; the
composites add nothing to it (the time is the orderby's min/max already), and a device's
rows are found by the orderby's min/max too.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gatestream.edition import timescaledb_has
from gatestream.schemas import SchemaCatalog

SEGMENTBY = "organization_id"
SPARSE_INDEX = "bloom(event_id)"


def key_columns(catalog: SchemaCatalog) -> dict[str, str]:
    """schema.table -> the column that keys its rows (the catalog's key field)."""
    out = {}
    for et in catalog.event_types():
        info = catalog.info(et)
        out[f"{info.schema}.{info.table}"] = info.key_field
    return out


def orderby(time_column: str, key_column: str | None) -> str:
    """The columnstore orderby of a hypertable (a table the catalog does not know: time only)."""
    return f"{key_column}, {time_column} DESC" if key_column else f"{time_column} DESC"


def sparse_index_text(entries: list[dict[str, str]] | None) -> str:
    """The configured sparse indexes as ``SPARSE_INDEX`` spells them, from
    ``hypertable_columnstore_settings.index`` (entries with source "config"; the ones the
    orderby implies are not settings). One column per entry, as TimescaleDB lists a
    composite bloom's columns."""
    return ", ".join(f"{e['type']}({e['column']})" for e in entries or () if e.get("source") == "config")


def apply(conn: psycopg.Connection[Any], table: str, segmentby: str, orderby: str, sparse_index: str) -> bool:
    """Set a hypertable's (``schema.table``) columnstore settings: segmentby, orderby and,
    where the server has them as a setting (2.22+), the sparse indexes. Chunks compressed
    before keep theirs until recompressed. Whether the server has the columnstore names (2.18+)."""
    columnstore_api = timescaledb_has(conn, "add_columnstore_policy")
    options = (
        "timescaledb.enable_columnstore, timescaledb.segmentby = {}, timescaledb.orderby = {}"
        if columnstore_api
        else "timescaledb.compress, timescaledb.compress_segmentby = {}, timescaledb.compress_orderby = {}"
    )
    values = [sql.Literal(segmentby), sql.Literal(orderby)]
    if has_sparse_index_setting(conn):
        options += ", timescaledb.sparse_index = {}"
        values.append(sql.Literal(sparse_index))
    conn.execute(sql.SQL("ALTER TABLE {} SET (" + options + ")").format(sql.Identifier(*table.split(".")), *values))
    return columnstore_api


def has_sparse_index_setting(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server states (and takes) sparse indexes as a columnstore setting (2.22+)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'timescaledb_information' "
        "AND table_name = 'hypertable_columnstore_settings' AND column_name = 'index')"
    ).fetchone()
    return bool(row and row[0])
