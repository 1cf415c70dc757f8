"""A schema registry that cannot answer is an outage, not a bad event: which answers make
a dead letter, what the decoder and the catalog cache (bounded), and where a micro-batch
stops when the registry is away. No services: a small fake registry."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_writer

from gatestream.bounded import BoundedCache
from gatestream.consumers.batch import MicroBatch
from gatestream.consumers.decoder import MISS_TTL_S, DecodeError, Decoder, RegistryUnavailable
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.registry_outage import RegistryOutage
from gatestream.consumers.routes import Route
from gatestream.consumers.tables import TableSpec
from gatestream.producers.events import ActiveWindow
from gatestream.schemas import EventType, SchemaCatalog
from gatestream.schemas.catalog import DEFAULT_DIR
from gatestream.schemas.registry import CatalogRegistry

CATALOG = SchemaCatalog()
V1 = CATALOG.latest(EventType.ACTIVE_WINDOWS)
READER = V1.schema


class FakeRegistry:
    """Knows ``known`` ids; answers the others with ``failure`` (an exception), else a 404."""

    def __init__(self, known: dict[int, str]) -> None:
        self.known = known
        self.failure: BaseException | None = None
        self.calls: list[int] = []

    def get_schema(self, schema_id: int) -> Schema:
        self.calls.append(schema_id)
        if self.failure is not None:
            raise self.failure
        if schema_id not in self.known:
            raise SchemaRegistryError(404, 40403, f"No content with ID '{schema_id}' was found.")
        return Schema(self.known[schema_id], "AVRO")


def _value(schema_id: int) -> bytes:
    """A Confluent wire-format value of an active_windows event, tagged ``schema_id``."""
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    ev = ActiveWindow(organization_id=1, users_on_computers_id=2, datetime=datetime(2026, 1, 2, tzinfo=UTC), title="t")
    schemaless_writer(buf, parse_schema(READER), ev.to_record())
    return buf.getvalue()


# ---------------------------------------------------------------- what is a dead letter


def test_only_a_definitive_no_such_id_is_a_dead_letter_and_it_is_cached() -> None:
    reg = FakeRegistry({V1.schema_id: V1.schema_str})
    dec = Decoder(reg, READER)
    for _ in range(5):
        with pytest.raises(DecodeError) as bad:
            dec.decode(_value(4242))
        assert bad.value.reason == "unknown-schema-id"
    assert reg.calls == [4242], "a definitive miss is asked once, then cached"
    now = dec.clock()
    dec.clock = lambda: now + MISS_TTL_S + 1
    with pytest.raises(DecodeError):
        dec.decode(_value(4242))
    assert reg.calls == [4242, 4242], "... for a while only: then the registry is asked again"


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        SchemaRegistryError(503, -1, "Service Unavailable"),
        SchemaRegistryError(500, 50001, "Error in the backend data store"),
        SchemaRegistryError(404, -1, "Unknown Schema Registry Error: b'<html>Not Found</html>'"),  # a wrong URL path
        OSError("Network is unreachable"),
    ],
    ids=["refused", "timeout", "503", "500", "404-without-40403", "oserror"],
)
def test_a_registry_that_cannot_answer_is_no_dead_letter_and_is_asked_again(failure: BaseException) -> None:
    reg = FakeRegistry({V1.schema_id: V1.schema_str})
    dec = Decoder(reg, READER)
    reg.failure = failure
    for _ in range(2):
        with pytest.raises(RegistryUnavailable) as down:
            dec.decode(_value(V1.schema_id))
        assert down.value.schema_id == V1.schema_id
    assert reg.calls == [V1.schema_id, V1.schema_id], "a failure is not cached"
    reg.failure = None
    assert dec.decode(_value(V1.schema_id))["organization_id"] == 1, "once it answers, the event decodes"
    dec.decode(_value(V1.schema_id))
    assert len(reg.calls) == 3, "a hit is cached"


def test_decoder_caches_are_bounded() -> None:
    from gatestream.consumers import decoder

    reg = FakeRegistry({})
    dec = Decoder(reg, READER)
    for i in range(decoder.MAX_MISSES + 500):
        with pytest.raises(DecodeError):
            dec.decode(_value(10_000 + i))
    assert len(dec._misses) == decoder.MAX_MISSES


def test_bounded_cache_evicts_the_oldest() -> None:
    c: BoundedCache[int, str] = BoundedCache(3)
    for i in range(5):
        c.put(i, str(i))
    assert len(c) == 3
    assert [c.get(i) for i in range(5)] == [None, None, "2", "3", "4"]
    c.put(3, "three")  # an update makes no room
    assert (len(c), c.get(2), c.get(3)) == (3, "2", "three")


# ---------------------------------------------------------------- the catalog's misses


def test_catalog_miss_reads_the_folder_again_only_when_it_changed(tmp_path: Path, monkeypatch: Any) -> None:
    d = tmp_path / "s"
    shutil.copytree(DEFAULT_DIR, d, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    cat = SchemaCatalog(d)
    loads = 0
    real = cat._load

    def counting() -> None:
        nonlocal loads
        loads += 1
        real()

    monkeypatch.setattr(cat, "_load", counting)
    reg = CatalogRegistry(cat)
    for _ in range(50):
        with pytest.raises(SchemaRegistryError):
            reg.get_schema(9999)
    assert loads == 0, "an unknown id does not re-read the catalog while it is unchanged"
    index = json.loads((d / "catalog.json").read_text())
    v2 = {**V1.schema, "fields": [*V1.schema["fields"], {"name": "x", "type": ["null", "string"], "default": None}]}
    (d / "active_windows.v9.avsc").write_text(json.dumps(v2))
    index["schemas"].append(
        {"id": 9999, "event_type": "active_windows", "version": 9, "file": "active_windows.v9.avsc"}
    )
    (d / "catalog.json").write_text(json.dumps(index))
    assert json.loads(reg.get_schema(9999).schema_str or "") == v2, "a version added while running is found"
    assert loads == 1


# ---------------------------------------------------------------- where a batch stops


def _route(reg: FakeRegistry, topic: str) -> Route:
    names = tuple(f["name"] for f in READER["fields"])
    spec = TableSpec(
        "monitoring", "active_windows", names, tuple(0 for _ in names), lambda r: tuple(r[n] for n in names)
    )
    return Route(topic, Decoder(reg, READER), spec, "datetime")


def test_a_batch_stops_at_the_first_event_the_registry_cannot_resolve() -> None:
    reg = FakeRegistry({V1.schema_id: V1.schema_str})
    a, b = ("t.a", 0), ("t.b", 0)
    routes = {"t.a": _route(reg, "t.a"), "t.b": _route(reg, "t.b")}
    parts = Partitions()
    parts.take(a, 10)
    parts.take(b, 20)
    batch = MicroBatch(routes, parts)
    msgs = [
        Message(topic="t.a", partition=0, offset=10, value=_value(V1.schema_id)),
        Message(topic="t.b", partition=0, offset=20, value=_value(V1.schema_id)),
        Message(topic="t.a", partition=0, offset=11, value=_value(4242)),  # a new version: registry away
        Message(topic="t.a", partition=0, offset=12, value=_value(V1.schema_id)),
        Message(topic="t.b", partition=0, offset=21, value=_value(V1.schema_id)),
    ]
    for r in routes.values():
        r.decoder.decode(_value(V1.schema_id))  # v1 met before: cached
    reg.failure = ConnectionRefusedError(111, "Connection refused")
    assert batch.add_many(msgs) == 2, "two events read, the rest not"
    assert batch.ends == {a: 11, b: 21}, "the batch moves each partition only past what it read"
    assert batch.stalled == {a: 11, b: 21}, "and says where to read again from"
    assert isinstance(batch.stall, RegistryUnavailable)
    assert batch.rejects == [], "nothing dead-lettered"
    assert parts.next == {a: 11, b: 21}


def test_the_outage_ends_when_every_stopped_partition_got_past_its_stop() -> None:
    changes: list[tuple[bool, str]] = []
    now = [100.0]
    outage = RegistryOutage(lambda ok, err: changes.append((ok, err)), clock=lambda: now[0])
    parts = Partitions()
    a, b = ("t.a", 0), ("t.b", 1)
    parts.take(a, 11)
    parts.take(b, 21)
    exc = RegistryUnavailable(7, ConnectionRefusedError("refused"))
    waits = [outage.stalled({a: 11, b: 21}, exc) for _ in range(8)]
    assert waits == sorted(waits) and waits[0] > 0 and waits[-1] == waits[-2], "it backs off, up to a bound"
    assert changes == [(False, "schema id 7: ConnectionRefusedError: refused")]
    outage.check(parts)
    assert changes[-1][0] is False, "nothing read yet"
    parts.next[a] = 12
    outage.check(parts)
    assert changes[-1][0] is False, "b still waits"
    parts.drop([b])  # given away in a rebalance: not this member's to wait for
    outage.check(parts)
    assert changes[-1] == (True, "")
    assert outage.stalled({a: 12}, exc) == waits[0], "a new outage starts with a short wait again"
