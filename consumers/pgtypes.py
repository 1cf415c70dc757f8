"""Binary COPY dumpers for Avro's wire-level values, so decoding skips Python objects.

The decoder leaves ``uuid`` as its string and ``timestamp-millis`` as its integer:
building ``uuid.UUID`` and ``datetime`` objects only to take them apart again for
PostgreSQL cost about a third of the ingest path. These dumpers turn the wire values
into PostgreSQL's binary forms directly. They are registered on the ingest
connections only, for the COPY column types (by OID); ordinary query parameters keep
psycopg's standard adaptation.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format

UUID_OID = 2950
TIMESTAMPTZ_OID = 1184
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z in Unix milliseconds
_PG_EPOCH_DT = datetime(2000, 1, 1, tzinfo=UTC)
_pack_int8 = struct.Struct(">q").pack
# binary COPY's stream header (signature, flags, no extension) and trailer, around the
# COPY tuples the native transcoder makes (consumers.transcoder)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"


class WireUuid:
    """Marker type: the dumpers below are found by OID, never by a Python type."""


class WireMillis:
    """Marker type, as ``WireUuid``."""


class UuidTextBinaryDumper(Dumper):
    format = Format.BINARY
    oid = UUID_OID

    def dump(self, obj: Any) -> Buffer | None:
        if isinstance(obj, str):
            try:
                raw = bytes.fromhex(obj.replace("-", ""))
            except ValueError:
                raw = b""
            if len(raw) != 16:
                raise psycopg.DataError(f"invalid UUID {obj[:60]!r}")
            return raw
        return bytes(obj.bytes)  # a uuid.UUID


class MillisTimestamptzBinaryDumper(Dumper):
    format = Format.BINARY
    oid = TIMESTAMPTZ_OID

    def dump(self, obj: Any) -> Buffer | None:
        if isinstance(obj, int):
            return _pack_int8((obj - _PG_EPOCH_MS) * 1000)
        delta = obj - _PG_EPOCH_DT  # a datetime
        return _pack_int8(delta.microseconds + 1_000_000 * (86_400 * delta.days + delta.seconds))


def register_wire_dumpers(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(WireUuid, UuidTextBinaryDumper)
    conn.adapters.register_dumper(WireMillis, MillisTimestamptzBinaryDumper)


WIRE_LOGICAL_TYPES = {"uuid", "timestamp-millis"}


def strip_logical_types(schema: Any) -> Any:
    """A copy of an Avro schema without the logical types that the dumpers handle."""
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        if schema.get("logicalType") in WIRE_LOGICAL_TYPES:
            return {k: v for k, v in schema.items() if k != "logicalType"}
        return {k: strip_logical_types(v) for k, v in schema.items()}
    return schema
