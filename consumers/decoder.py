"""Confluent wire format + Avro decoding with writer/reader schema resolution.

Why not ``confluent_kafka``'s ``AvroDeserializer``: per message it re-expands the
reader schema and runs the rule engine, which costs more than the whole rest of the
ingest path; this decoder does the same resolution (fastavro, writer schema fetched by
id from the registry or catalog, read as the consumer's reader schema) with the parsed
schemas cached per id. A schema id it has not seen is fetched when first met, so a
producer may start writing a backward-compatible new version while consumers run.

Values of the logical types ``uuid`` and ``timestamp-millis`` are returned as they are
on the wire (``str`` and ``int`` milliseconds); ``consumers.pgtypes`` writes them to
PostgreSQL directly, which saves building Python objects per event.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader

from gatestream.consumers.deadletter import Reason
from gatestream.consumers.pgtypes import strip_logical_types
from gatestream.schemas.catalog import normalized

MAGIC = 0
_HEADER = struct.Struct(">bI")


class DecodeError(Exception):
    """An event that cannot be decoded; ``reason`` is a short stable code for the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


DecodeFn = Callable[[io.BytesIO], dict[str, Any]]


class Decoder:
    """Decodes values of one topic into dicts shaped by that topic's reader schema."""

    def __init__(self, registry: Any, reader_schema: dict[str, Any]) -> None:
        self.registry = registry
        self.reader_raw = reader_schema
        self.reader = _parse(reader_schema)
        self._reader_key = normalized(reader_schema)
        self._by_id: dict[int, DecodeFn] = {}

    def _fn_for(self, schema_id: int) -> DecodeFn:
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        try:
            writer_raw = self.registry.get_schema(schema_id)
        except Exception as exc:  # registry errors, network, unknown id
            raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id}: {exc}") from exc
        try:
            writer_json = json.loads(writer_raw.schema_str)
            writer = _parse(writer_json)
        except Exception as exc:
            raise DecodeError(Reason.BAD_WRITER_SCHEMA, f"schema id {schema_id}: {exc}") from exc
        reader = None if normalized(writer_json) == self._reader_key else self.reader
        if reader is not None and writer.get("name") != self.reader.get("name"):
            raise DecodeError(
                Reason.INCOMPATIBLE_SCHEMA,
                f"schema id {schema_id} is {writer.get('name')}, this topic carries {self.reader.get('name')}",
            )

        def fn(buf: io.BytesIO, _w: Any = writer, _r: Any = reader) -> dict[str, Any]:
            return cast(dict[str, Any], schemaless_reader(buf, _w, _r))

        self._by_id[schema_id] = fn
        return fn

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(Reason.NULL_VALUE, "message has no value (tombstone)")
        if len(value) < 6:
            raise DecodeError(Reason.NOT_WIRE_FORMAT, f"{len(value)} bytes is too short for the Confluent wire format")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC:
            raise DecodeError(Reason.NOT_WIRE_FORMAT, f"magic byte is {magic}, expected 0")
        fn = self._fn_for(schema_id)
        buf = io.BytesIO(value)
        buf.seek(5)
        try:
            record = fn(buf)
        except Exception as exc:
            raise DecodeError(Reason.MALFORMED_AVRO, f"schema id {schema_id}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(value):
            raise DecodeError(
                Reason.MALFORMED_AVRO,
                f"schema id {schema_id}: {len(value) - buf.tell()} bytes left after the record",
            )
        return record


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    """A fastavro-parsed record schema, with wire-level uuid and timestamp values."""
    parsed = parse_schema(strip_logical_types(schema))
    if not isinstance(parsed, dict):
        raise DecodeError(Reason.BAD_WRITER_SCHEMA, "a topic's schema must be an Avro record")
    return parsed
