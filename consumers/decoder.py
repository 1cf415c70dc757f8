"""Confluent wire format + Avro decoding with writer/reader schema resolution.

Why not ``confluent_kafka``'s ``AvroDeserializer``: per message it re-expands the
reader schema and runs the rule engine, which costs more than the whole rest of the
ingest path; this decoder does the same resolution (fastavro, writer schema fetched by
id from the registry or catalog, read as the consumer's reader schema) with the parsed
schemas cached per id. A schema id it has not seen is fetched when first met, so a
producer may start writing a backward-compatible new version while consumers run.

Only the registry's definitive "no such id" (404 / 40403) makes an event a dead letter
(``unknown-schema-id``); that answer is cached for ``MISS_TTL_S``, so a stream of such
events costs one request, not one each. A registry that cannot answer (refused, timed
out, 5xx) raises ``RegistryUnavailable``: not the event's fault, so the pipeline reads
it again later (``consumers.registry_outage``). Both caches are bounded: schema ids
come from the events.

Values of the logical types ``uuid`` and ``timestamp-millis`` are returned as they are
on the wire (``str`` and ``int`` milliseconds); ``consumers.pgtypes`` writes them to
PostgreSQL directly, which saves building Python objects per event.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader

from gatestream.bounded import BoundedCache
from gatestream.consumers.deadletter import Reason
from gatestream.consumers.pgtypes import strip_logical_types
from gatestream.schemas.catalog import normalized
from gatestream.schemas.registry import no_such_schema

MAGIC = 0
_HEADER = struct.Struct(">bI")
MAX_SCHEMAS = 256  # writer schemas kept per topic
MAX_MISSES = 1024  # ids known to be bad, per topic
MISS_TTL_S = 60.0  # then the registry is asked again (a registry replica may have caught up)


class DecodeError(Exception):
    """An event that cannot be decoded; ``reason`` is a short stable code for the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RegistryUnavailable(Exception):
    """The registry could not say what ``schema_id`` is (refused, timed out, 5xx, ...).
    Nothing is known about the event: it must be read again later, never dead-lettered."""

    def __init__(self, schema_id: int, cause: BaseException) -> None:
        super().__init__(f"schema id {schema_id}: {type(cause).__name__}: {cause}")
        self.schema_id = schema_id
        self.cause = cause


DecodeFn = Callable[[io.BytesIO], dict[str, Any]]


class Decoder:
    """Decodes values of one topic into dicts shaped by that topic's reader schema."""

    def __init__(self, registry: Any, reader_schema: dict[str, Any]) -> None:
        self.registry = registry
        self.reader_raw = reader_schema
        self.reader = _parse(reader_schema)
        self._reader_key = normalized(reader_schema)
        self._by_id: BoundedCache[int, DecodeFn] = BoundedCache(MAX_SCHEMAS)
        # writer schema per id met (JSON, and whether it is the reader's): for the native plans
        self._writers: BoundedCache[int, tuple[dict[str, Any], bool]] = BoundedCache(MAX_SCHEMAS)
        self.generation = 0  # grows with each schema id learnt (consumers.transcoder re-plans then)
        self._misses: BoundedCache[int, tuple[float, DecodeError]] = BoundedCache(MAX_MISSES)
        self.clock = time.monotonic

    def _fn_for(self, schema_id: int) -> DecodeFn:
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        miss = self._misses.get(schema_id)
        if miss is not None:
            if self.clock() < miss[0]:
                known = miss[1]  # a new exception each time: re-raising one would grow its traceback
                raise DecodeError(known.reason, known.detail) from known.__cause__
            self._misses.pop(schema_id)
        try:
            fn, writer = self._fetch(schema_id)
        except DecodeError as exc:  # the registry's definitive answer: cached for a while
            self._misses.put(schema_id, (self.clock() + MISS_TTL_S, exc))
            raise
        self._by_id.put(schema_id, fn)
        self._writers.put(schema_id, writer)
        self.generation += 1
        return fn

    def known_writers(self) -> dict[int, tuple[dict[str, Any], bool]]:
        """The writer schemas of the ids this decoder decodes now: id -> (schema JSON,
        whether it is the reader schema itself)."""
        out: dict[int, tuple[dict[str, Any], bool]] = {}
        for sid in self._writers.keys():
            w = self._writers.get(sid)
            if w is not None and self._by_id.get(sid) is not None:
                out[sid] = w
        return out

    def _fetch(self, schema_id: int) -> tuple[DecodeFn, tuple[dict[str, Any], bool]]:
        try:
            writer_raw = self.registry.get_schema(schema_id)
        except Exception as exc:  # noqa: BLE001 - sorted below: only a definitive "no such id" is the event's fault
            if no_such_schema(exc):
                raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id}: {exc}") from exc
            raise RegistryUnavailable(schema_id, exc) from exc
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

        return fn, (writer_json, reader is None)

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
