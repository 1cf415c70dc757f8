"""The native transcoder against the Python path, differentially (no services).

The same messages go through a ``MicroBatch`` twice: Python path only, and with the
native transcoder. Rows are compared as the bytes binary COPY sends (the Python path's
tuples through psycopg's own binary dumpers, as ``BatchWriter`` writes them), and the
dead letters by reason, detail and exception class. Random valid events (hypothesis)
must give byte-identical rows and be handled natively; malformed payloads (truncated,
bad union index, bad UTF-8, overlong varints, out-of-range values, trailing bytes, ...)
must give the same dead letters. Schema evolution: writer versions that add, drop and
promote fields, read as the topic's reader schema.
"""

from __future__ import annotations

import functools
import io
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg._copy_base import BinaryFormatter
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq import Format

import gatestream.consumers.batch as batch_module
from gatestream.consumers.batch import MicroBatch, Plausibility
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.pgtypes import COPY_SIGNATURE, register_wire_dumpers, strip_logical_types
from gatestream.consumers.routes import Route, event_time_field
from gatestream.consumers.tables import TableSpec
from gatestream.consumers.transcoder import BatchTranscoder, native_status, row_time_ms
from gatestream.schemas import EventType, SchemaCatalog
from tests.unit.fakes import FakeMessage

pytestmark = pytest.mark.skipif(not native_status()[0], reason=f"native transcoder not built: {native_status()[1]}")

CATALOG = SchemaCatalog()
NOW_MS = int(time.time() * 1000)
PLAUSIBLE = Plausibility(946_684_800_000, 86_400_000)
FIXED_CLOCK = SimpleNamespace(time=lambda: NOW_MS / 1000, monotonic=time.monotonic)
OIDS = {"uuid": 2950, "timestamp-millis": 1184, "int": 23, "long": 20, "double": 701, "string": 25, "boolean": 16}
INT = (-(2**31), 2**31 - 1)
LONG = (-(2**63), 2**63 - 1)


class Registry:
    """Schema id -> schema JSON, as the registry answers."""

    def __init__(self, known: dict[int, dict[str, Any]]) -> None:
        self.known = known

    def get_schema(self, schema_id: int) -> Schema:
        if schema_id not in self.known:
            raise SchemaRegistryError(404, 40403, f"No content with ID '{schema_id}' was found.")
        return Schema(json.dumps(self.known[schema_id]), "AVRO")


def _oid(t: Any) -> int:
    if isinstance(t, list):
        return _oid(next(b for b in t if b != "null"))
    if isinstance(t, dict):
        return OIDS[t.get("logicalType") or t["type"]]
    return OIDS[t]


def _spec(reader: dict[str, Any], columns: list[str] | None = None) -> TableSpec:
    types = {f["name"]: f["type"] for f in reader["fields"]}
    names = tuple(columns or types)
    oids = tuple(_oid(types[n]) for n in names)
    return TableSpec("monitoring", "t", names, oids, lambda r: tuple(r[n] for n in names))


class _Ctx:
    def __init__(self) -> None:
        self.adapters = AdaptersMap(psycopg.adapters)


@functools.cache
def _transformer(oids: tuple[int, ...]) -> Any:
    ctx = _Ctx()
    register_wire_dumpers(cast(psycopg.Connection[Any], ctx))
    tx = Transformer(ctx.adapters)
    tx.set_dumper_types(list(oids), Format.BINARY)
    return tx


def copy_bytes(row: Any, oids: tuple[int, ...]) -> bytes | str:
    """A row as binary COPY sends it: native bytes as they are, a tuple through psycopg's
    binary dumpers (the ingest connection's, wire dumpers included); a tuple psycopg
    cannot write: the exception's class."""
    if isinstance(row, bytes):
        return row
    fmt = BinaryFormatter(_transformer(oids))
    try:
        data = bytes(fmt.write_row(row)) + bytes(fmt.end())
    except Exception as exc:  # noqa: BLE001 - the writer isolates such a row; compare the class
        return f"error: {type(exc).__name__}"
    assert data.startswith(COPY_SIGNATURE) and data.endswith(b"\xff\xff")
    return data[len(COPY_SIGNATURE) : -2]


def _frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def _avro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(strip_logical_types(schema)), record)
    return buf.getvalue()


Outcome = tuple[list[bytes | str], list[tuple[int, str, str, str | None]], int]


def run_both(route: Route, values: list[bytes | None]) -> tuple[Outcome, Outcome]:
    """The same messages through the Python path and through the native one."""
    outcomes = []
    for native in (False, True):
        parts = Partitions()
        parts.take((route.topic, 0), None)
        tc = None
        if native:
            tc = BatchTranscoder(
                {route.topic: route}, earliest_ms=PLAUSIBLE.earliest_ms, max_future_ms=PLAUSIBLE.max_future_ms,
                id_fields=PLAUSIBLE.ID_FIELDS,
            )  # fmt: skip
        msgs = [cast(Message, FakeMessage(route.topic, 0, i, v)) for i, v in enumerate(values)]
        for _ in range(2):  # the first call learns the schema ids (Python path), the second uses them
            batch = MicroBatch({route.topic: route}, parts, plausible=PLAUSIBLE, native=tc)
            parts.next.clear()
            module: Any = batch_module
            real, module.time = module.time, FIXED_CLOCK  # the same "now" on both paths
            try:
                batch.add_many(msgs)
            finally:
                module.time = real
        tb = batch.tables[route.topic]
        handled = sum(1 for r in tb.rows if isinstance(r, bytes))
        rows = [copy_bytes(r, route.spec.type_oids) for r in tb.rows]
        rejects = [(cast(int, r.msg.offset()), r.reason, r.detail, r.exception) for r in batch.rejects]
        outcomes.append((rows, rejects, handled))
    return outcomes[0], outcomes[1]


def _route(reader: dict[str, Any], known: dict[int, dict[str, Any]], columns: list[str] | None = None) -> Route:
    return Route("t.x", Decoder(Registry(known), reader), _spec(reader, columns), event_time_field(reader))


# ---------------------------------------------------------------- strategies

TEXT = st.text(max_size=30) | st.sampled_from(["", "\x00", "a\x00b", "\U0010ffff", "\ufeff", "é" * 50])


def _value(t: Any, clean: bool) -> st.SearchStrategy[Any]:
    """Values of Avro type ``t``; ``clean``: only what lands (plausible, in range, canonical ids)."""
    if isinstance(t, list):
        return st.one_of(*[_value(b, clean) for b in t])
    if isinstance(t, dict):
        logical = t.get("logicalType")
        if logical == "timestamp-millis":
            ok = st.integers(NOW_MS - 10**11, NOW_MS + 10**7)
            return ok if clean else ok | st.integers(*LONG) | st.sampled_from([*LONG, 0, 946_684_800_000 - 1])
        if logical == "uuid":
            ids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | st.uuids().map(lambda u: u.hex)
            return ids if clean else ids | TEXT | st.sampled_from(["-" + str(uuid.uuid4()), "0" * 31 + " "])
        return _value(t["type"], clean)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(1, 10**6) if clean else st.integers(*INT),
        "long": st.integers(0, 10**12) if clean else st.integers(*LONG),
        "double": st.floats(allow_nan=True, allow_infinity=True),
        "string": TEXT,
    }[t]


def _record(schema: dict[str, Any], clean: bool) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f["name"]: _value(f["type"], clean) for f in schema["fields"]})


EVENT_TYPES = list(EventType)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda e: e.value)
def test_valid_events_give_byte_identical_copy_rows_natively(event_type: EventType) -> None:
    entry = CATALOG.latest(event_type)
    route = _route(entry.schema, {entry.schema_id: entry.schema})

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(_record(entry.schema, clean=True), min_size=1, max_size=8))
    def check(records: list[dict[str, Any]]) -> None:
        values: list[bytes | None] = [_frame(entry.schema_id, _avro(entry.schema, r)) for r in records]
        py, nat = run_both(route, values)
        assert nat[:2] == py[:2]
        assert py[1] == [], "clean events are all rows"
        assert nat[2] == len(records), "every clean event is transcoded natively"

    check()


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda e: e.value)
def test_any_schema_valid_event_gives_the_same_row_or_dead_letter(event_type: EventType) -> None:
    entry = CATALOG.latest(event_type)
    route = _route(entry.schema, {entry.schema_id: entry.schema})
    writer = parse_schema(strip_logical_types(entry.schema))

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(_record(entry.schema, clean=False), min_size=1, max_size=6))
    def check(records: list[dict[str, Any]]) -> None:
        values: list[bytes | None] = []
        for r in records:
            buf = io.BytesIO()
            try:
                schemaless_writer(buf, writer, r)
            except (ValueError, TypeError, OverflowError):
                continue
            values.append(_frame(entry.schema_id, buf.getvalue()))
        py, nat = run_both(route, values)
        assert nat[:2] == py[:2]

    check()


# ---------------------------------------------------------------- hostile payloads

AW = CATALOG.latest(EventType.ACTIVE_WINDOWS)
GOOD = {
    "event_id": str(uuid.UUID(int=7)), "organization_id": 3, "users_on_computers_id": 4, "datetime": NOW_MS - 1000,
    "title": "Inbox", "process_name": "chrome.exe", "icon": None, "active_time": 5,
}  # fmt: skip


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _body(**fields: Any) -> bytes:
    return _avro(AW.schema, {**GOOD, **fields})


def _hand_built(org: bytes, title: bytes = b"\x02" + _varint(5)[0:1] + b"Inbox") -> bytes:
    """An active_windows body with the organization id's and title's bytes as given."""
    uid = str(uuid.UUID(int=7)).encode()
    return _varint(len(uid)) + uid + org + _varint(4) + _varint(NOW_MS - 1000) + title + b"\x00" + b"\x00" + b"\x02\x0a"


HOSTILE: dict[str, bytes | None] = {
    "tombstone": None,
    "too short": b"\x00\x00\x00",
    "json": b'{"json": true}',
    "bad magic": b"\x01" + _frame(AW.schema_id, _body())[1:],
    "unknown schema id": _frame(99_999, _body()),
    "empty body": _frame(AW.schema_id, b""),
    "truncated": _frame(AW.schema_id, _body()[:-3]),
    "truncated in a string": _frame(AW.schema_id, _body()[:45]),
    "trailing bytes": _frame(AW.schema_id, _body() + b"\x00"),
    "bad union index": _frame(AW.schema_id, _hand_built(_varint(3), b"\x04")),
    "negative union index": _frame(AW.schema_id, _hand_built(_varint(3), b"\x01")),
    "bad utf-8": _frame(AW.schema_id, _hand_built(_varint(3), b"\x02\x04\xc3\x28")),
    "surrogate in utf-8": _frame(AW.schema_id, _hand_built(_varint(3), b"\x02\x06\xed\xa0\x80")),
    "overlong utf-8": _frame(AW.schema_id, _hand_built(_varint(3), b"\x02\x04\xc0\xaf")),
    "negative string length": _frame(AW.schema_id, _hand_built(_varint(3), b"\x02\x03")),
    "overlong varint": _frame(AW.schema_id, _hand_built(b"\x86" + b"\x80" * 10 + b"\x00")),
    "non-minimal varint": _frame(AW.schema_id, _hand_built(b"\x86\x80\x00")),
    "int past 32 bits": _frame(AW.schema_id, _hand_built(_varint(2**31))),
    "int past 64 bits": _frame(AW.schema_id, _hand_built(b"\xff" * 9 + b"\x7f")),
    "organization 0": _frame(AW.schema_id, _body(organization_id=0)),
    "device -1": _frame(AW.schema_id, _body(users_on_computers_id=-1)),
    "time before earliest": _frame(AW.schema_id, _body(datetime=0)),
    "time far ahead": _frame(AW.schema_id, _body(datetime=NOW_MS + 2 * 86_400_000)),
    "time past timestamptz": _frame(AW.schema_id, _body(datetime=2**63 - 1)),
    "not a uuid": _frame(AW.schema_id, _body(event_id="not-a-uuid")),
    "uuid with spaces": _frame(AW.schema_id, _body(event_id="00 " * 16)),
    "nul in text": _frame(AW.schema_id, _body(title="a\x00b")),
    "good": _frame(AW.schema_id, _body()),
    "negative active time": _frame(AW.schema_id, _body(active_time=-5)),
}


def test_hostile_payloads_give_the_same_dead_letters_on_both_paths() -> None:
    route = _route(AW.schema, {AW.schema_id: AW.schema})
    values = list(HOSTILE.values())
    py, nat = run_both(route, values)
    assert nat[:2] == py[:2]
    reasons = {list(HOSTILE)[off]: reason for off, reason, _, _ in py[1]}
    # not vacuous: the inputs reach the reasons they were built for
    assert reasons["tombstone"] == "null-value"
    assert reasons["unknown schema id"] == "unknown-schema-id"
    for name in ("truncated", "trailing bytes", "bad union index", "bad utf-8", "surrogate in utf-8"):
        assert reasons[name] == "malformed-avro", name
    assert reasons["organization 0"] == "invalid-identifier"
    assert reasons["time far ahead"] == "event-time-out-of-range"
    assert nat[2] >= 3, "the good events were transcoded natively"


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.data())
def test_mutated_payloads_give_the_same_rows_and_dead_letters(data: st.DataObject) -> None:
    body = bytearray(_body(title=data.draw(TEXT), active_time=data.draw(st.none() | st.integers(*INT))))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[at:]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    route = _route(AW.schema, {AW.schema_id: AW.schema})
    py, nat = run_both(route, [_frame(AW.schema_id, bytes(body))])
    assert nat[:2] == py[:2]


# ---------------------------------------------------------------- schema evolution


def _evolved() -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The reader (v1) and writers: v1, one with an extra field and without an optional
    one, one that wrote the ids as long-promotable ints in another order."""
    reader = AW.schema
    fields = {f["name"]: f for f in reader["fields"]}
    extra = {
        **reader, "fields": [
            *[f for f in reader["fields"] if f["name"] != "icon"],
            {"name": "extra", "type": ["null", "string", "long"], "default": None},
        ],
    }  # fmt: skip
    reordered = {**reader, "fields": [fields[n] for n in reversed(list(fields))]}
    return reader, {AW.schema_id: reader, 9001: extra, 9002: reordered}


def test_schema_evolution_by_writer_schema_id_gives_the_same_rows() -> None:
    reader, writers = _evolved()
    route = _route(reader, writers)
    values: list[bytes | None] = []
    for sid, w in writers.items():
        rec = {f["name"]: GOOD.get(f["name"]) for f in w["fields"]}
        if "extra" in rec:
            for extra in (None, "x", 5):
                values.append(_frame(sid, _avro(w, {**rec, "extra": extra})))
        else:
            values.append(_frame(sid, _avro(w, rec)))
    py, nat = run_both(route, values)
    assert nat[:2] == py[:2]
    assert py[1] == []
    assert nat[2] == len(values), "every writer version is transcoded natively"


def test_a_reader_field_without_default_that_the_writer_lacks_stays_a_dead_letter() -> None:
    reader = {**AW.schema, "fields": [*AW.schema["fields"], {"name": "must", "type": "string"}]}
    route = _route(reader, {AW.schema_id: AW.schema}, columns=[f["name"] for f in AW.schema["fields"]])
    py, nat = run_both(route, [_frame(AW.schema_id, _body())])
    assert nat[:2] == py[:2]
    assert [r[1] for r in py[1]] == ["malformed-avro"]


def test_columns_in_another_order_and_a_defaulted_column() -> None:
    reader = {
        **AW.schema, "fields": [*AW.schema["fields"], {"name": "browser", "type": "string", "default": "none"}],
    }  # fmt: skip
    cols = ["title", "browser", "datetime", "event_id", "organization_id", "users_on_computers_id"]
    route = _route(reader, {AW.schema_id: AW.schema}, columns=cols)
    py, nat = run_both(route, [_frame(AW.schema_id, _body()), _frame(AW.schema_id, _body(title=None))])
    assert nat[:2] == py[:2]
    assert nat[2] == 2


def test_row_time_reads_the_event_time_of_either_kind_of_row() -> None:
    route = _route(AW.schema, {AW.schema_id: AW.schema})
    _, nat = run_both(route, [_frame(AW.schema_id, _body())])
    ti = route.spec.columns.index("datetime")
    assert row_time_ms(nat[0][0], ti) == GOOD["datetime"]
    assert row_time_ms((1, 2, 3, GOOD["datetime"]), 3) == GOOD["datetime"]
