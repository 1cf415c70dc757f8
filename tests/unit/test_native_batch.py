"""``MicroBatch.add_many``'s loop in C against the Python one: the same bookkeeping (no services).

The native path runs the whole consume() batch in C (``native/transcode.c``, ``add``) and
hands each message it does not transcode to the Python path in its place. These tests
feed both paths the same real ``confluent_kafka.Message`` batches, mixed the way a
consumer meets them (several topics and partitions, runs switching, stale offsets, a
partition not owned, a bounded range's end, partition-end and error events, dead
letters, a schema id the registry cannot resolve) and compare everything the batch and
the pipeline's partitions hold afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

import gatestream.consumers.batch as batch_module
from gatestream.consumers import transcoder as transcoder_module
from gatestream.consumers.avro_plan import E_INT8, RT, RT_UNION
from gatestream.consumers.batch import MicroBatch
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.routes import Route, event_time_field
from gatestream.consumers.transcoder import BatchTranscoder, choose_path, native_status
from tests.unit.test_transcoder import AW, FIXED_CLOCK, HOSTILE, PLAUSIBLE, _body, _frame, _spec, copy_bytes, run_both
from tests.unit.test_transcoder import _route as reader_route

pytestmark = pytest.mark.skipif(not native_status()[0], reason=f"native transcoder not built: {native_status()[1]}")

AWAY = 4242  # a schema id the registry cannot be asked about
X, Y = "t.x", "t.y"
GOOD = _frame(AW.schema_id, _body())


class Registry:
    def get_schema(self, schema_id: int) -> Schema:
        if schema_id == AW.schema_id:
            return Schema(json.dumps(AW.schema), "AVRO")
        if schema_id == AWAY:
            raise ConnectionRefusedError(111, "Connection refused")
        raise SchemaRegistryError(404, 40403, f"No content with ID '{schema_id}' was found.")


def m(topic: str, partition: int, offset: int, value: bytes | None = GOOD) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=value)


def event(code: int, topic: str = X, partition: int = 1, offset: int = 2) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, error=KafkaError(code))


def _route(topic: str) -> Route:
    return Route(topic, Decoder(Registry(), AW.schema), _spec(AW.schema), event_time_field(AW.schema))


def outcome(msgs: list[Message], native: bool) -> dict[str, Any]:
    """Everything ``add_many`` leaves behind, on one path."""
    routes = {t: _route(t) for t in (X, Y)}
    for r in routes.values():
        r.decoder.decode(GOOD)  # the schema id is known: the native path has its plan
    parts = Partitions()
    parts.take((X, 0), 5)
    parts.take((X, 1), None)
    parts.take((X, 2), 0, start=0, end=4)  # a bounded range: offsets 0 to 3
    parts.take((Y, 0), None)
    ended: list[tuple[str, int, int]] = []
    tc = None
    if native:
        tc = BatchTranscoder(routes, earliest_ms=PLAUSIBLE.earliest_ms, max_future_ms=PLAUSIBLE.max_future_ms,
                             id_fields=PLAUSIBLE.ID_FIELDS)  # fmt: skip
    batch = MicroBatch(routes, parts, plausible=PLAUSIBLE, native=tc, on_end=lambda *a: ended.append(a))
    module: Any = batch_module
    real, module.time = module.time, FIXED_CLOCK
    try:
        read = batch.add_many(msgs)
    finally:
        module.time = real
    tables = {
        t: ([copy_bytes(r, tb.spec.type_oids) for r in tb.rows], [(o.partition(), o.offset()) for o in tb.origins])
        for t, tb in batch.tables.items()
    }
    return {
        "read": read, "count": batch.count, "tables": tables, "ends": batch.ends, "next": parts.next,
        "rejects": [(r.msg.topic(), r.msg.partition(), r.msg.offset(), r.reason, r.detail, r.exception)
                    for r in batch.rejects],
        "stalled": batch.stalled, "stall": type(batch.stall).__name__, "ended": ended,
        "native_rows": sum(isinstance(r, bytes) for tb in batch.tables.values() for r in tb.rows),
    }  # fmt: skip


def both(msgs: list[Message]) -> tuple[dict[str, Any], dict[str, Any]]:
    py, nat = outcome(msgs, native=False), outcome(msgs, native=True)
    native_rows = nat.pop("native_rows")
    assert py.pop("native_rows") == 0
    assert nat == py
    return py, {"native_rows": native_rows}


MIXED = [
    m(X, 0, 3), m(X, 0, 4),  # before the stored offset 5: stale
    m(X, 0, 5), m(X, 0, 6), m(X, 0, 7, _frame(AW.schema_id, _body()[:-3])), m(X, 0, 8),
    m(X, 0, 6, _frame(AW.schema_id, _body()[:-3])), m(X, 0, 8),  # again after their own: stale, either kind
    m(X, 1, 0), m(X, 1, 1), event(KafkaError._PARTITION_EOF, X, 1, 2),
    m(X, 3, 0),  # a partition this member does not own
    m(X, 2, 2), m(X, 2, 3), m(X, 2, 4), m(X, 2, 5),  # 4 and 5: past the bounded range's end
    event(KafkaError._TRANSPORT),
    m(Y, 0, 0), m(Y, 0, 1, _frame(99_999, _body())), m(Y, 0, 2, _frame(AW.schema_id, _body(organization_id=0))),
    m(X, 0, 9), m(X, 0, 9), m(X, 0, 10),  # offset 9 twice: the second is stale
    m(X, 0, 11, b"bad"), m(X, 0, 11),  # after a dead letter: the same offset again is stale
    m(X, 1, 2), m(X, 0, 12), m(Y, 0, 3, None), m(X, 1, 3),  # runs switching every message
]  # fmt: skip


def test_a_mixed_batch_leaves_the_same_rows_offsets_and_dead_letters_on_both_paths() -> None:
    py, nat = both(MIXED)
    # not vacuous: the batch meets what it was built for
    assert py["ends"] == {(X, 0): 13, (X, 1): 4, (X, 2): 4, (Y, 0): 4}
    assert (X, 3) not in py["next"]
    assert py["ended"] == [(X, 1, 2)]
    reasons = ["malformed-avro", "unknown-schema-id", "invalid-identifier", "not-wire-format", "null-value"]
    assert [r[3] for r in py["rejects"]] == reasons
    assert py["read"] == 18 and py["count"] == 13
    assert nat["native_rows"] == 13, "every good event was transcoded natively"


def test_a_batch_stops_at_the_schema_id_the_registry_cannot_resolve_on_both_paths() -> None:
    msgs = [m(X, 0, 5), m(Y, 0, 0), m(X, 0, 6, _frame(AWAY, _body())), m(X, 0, 7), m(Y, 0, 1), m(X, 1, 0)]
    py, nat = both(msgs)
    assert py["stalled"] == {(X, 0): 6, (Y, 0): 1, (X, 1): 0}
    assert py["stall"] == "RegistryUnavailable"
    assert py["read"] == 2 and py["ends"] == {(X, 0): 6, (Y, 0): 1}
    assert nat["native_rows"] == 2


def test_only_events_and_stale_messages_give_the_same_nothing() -> None:
    py, nat = both([event(KafkaError._PARTITION_EOF, X, 0, 5), m(X, 0, 1), m(X, 3, 0), m(X, 2, 9)])
    assert py["read"] == 0 and py["ends"] == {} and py["ended"] == [(X, 0, 5)]
    assert nat["native_rows"] == 0


def test_a_fallback_that_raises_still_leaves_the_offsets_of_what_was_added() -> None:
    """An exception out of the Python path (a bug nobody foresaw) ends add_many as it would
    end the Python loop; what the native loop appended before it stays accounted for."""
    routes = {X: _route(X)}
    routes[X].decoder.decode(GOOD)
    parts = Partitions()
    parts.take((X, 0), None)
    tc = BatchTranscoder(routes, earliest_ms=None, max_future_ms=None, id_fields=())

    def boom(*_: Any) -> None:
        raise RuntimeError("boom")

    batch = MicroBatch(routes, parts, native=tc, on_end=boom)
    with pytest.raises(RuntimeError, match="boom"):
        batch.add_many([m(X, 0, 0), m(X, 0, 1), event(KafkaError._PARTITION_EOF, X, 0, 2), m(X, 0, 2)])
    assert batch.ends == {(X, 0): 2} and parts.next == {(X, 0): 2}
    assert len(batch.tables[X].rows) == 2


@pytest.mark.parametrize(
    ("mode", "filtered", "server", "client", "why"),
    [
        ("auto", False, "UTF8", "utf-8", None),
        ("off", False, "UTF8", "utf-8", "GATESTREAM_NATIVE_DECODE=off"),
        ("auto", True, "UTF8", "utf-8", "this run filters events by their decoded records"),
        ("auto", False, "LATIN1", "iso8859-1", "the database's server_encoding is LATIN1, not UTF8"),
        ("auto", False, "SQL_ASCII", "utf-8", "the database's server_encoding is SQL_ASCII, not UTF8"),
        ("auto", False, "UTF8", "iso8859-1", "the connection's client_encoding is iso8859-1, not UTF8"),
    ],
)
def test_the_native_path_runs_only_where_asked_and_where_text_arrives_as_utf8(
    mode: str, filtered: bool, server: str, client: str, why: str | None
) -> None:
    assert choose_path(mode, filtered, server, client) == why


# ---------------------------------------------------------------- memory safety
# (bench/native_memcheck.py runs these under valgrind)


def _union_plan(branches: int, branch_ops: list[tuple[int, int, int]]) -> tuple[int, ...]:
    """Codes of a one-field plan: a union of ``branches`` branches followed by ``branch_ops``,
    into slot 0, written as an int8 column (see avro_plan's code layout)."""
    ops = [(RT_UNION, branches, 0), *branch_ops]
    return (1, 1, len(ops), *(c for op in ops for c in op), 1, 0, E_INT8, 0, -1, 0)


@pytest.mark.parametrize(
    ("branches", "branch_ops"),
    [
        (3, [(RT["null"], 0, -1)]),  # 3 branches, 1 op: index 2 would read past the plan's ops
        (2, [(RT["null"], 0, -1), (RT_UNION, 1, -1)]),  # a union inside a union (Avro has none)
        (-1, []),
    ],
)
def test_a_plan_whose_union_branches_do_not_fit_its_ops_is_refused(
    branches: int, branch_ops: list[tuple[int, int, int]]
) -> None:
    """The C code indexes a union's branch ops by the Avro branch index, bounded only by
    the union's branch count: a plan whose count runs past its ops would read past the
    plan's allocation for a message with a high branch index. Such a plan is refused when
    made (a bug in avro_plan is then a clear error, not a heap over-read)."""
    native: Any = getattr(transcoder_module, "_transcode")  # noqa: B009 - the optional extension, untyped
    good = _union_plan(2, [(RT["null"], 0, -1), (RT["long"], 0, -1)])
    assert native.plan(good, ()) is not None  # not vacuous: the layout is right
    with pytest.raises(ValueError, match="malformed transcoder plan"):
        native.plan(_union_plan(branches, branch_ops), ())


def test_an_empty_batch_and_a_big_one_whose_rows_outgrow_the_buffer_match_the_python_path() -> None:
    """The COPY buffer starts at 64 KiB and doubles; rows are cut out of it by offset after
    all of a round's (512 messages') plans ran. Over three rounds: long strings (one of
    300 kB, several of 70 kB, multi-byte ones) make it grow in the middle of a round and of
    a row, and hostile payloads interleaved (a row begun and abandoned, a string length
    past the end, a negative one) must leave no trace in the rows around them."""
    route = reader_route(AW.schema, {AW.schema_id: AW.schema})
    assert run_both(route, []) == (([], [], 0), ([], [], 0))
    hostile = [v for v in HOSTILE.values() if v is not None]
    sizes = [0, 1, 200, 70_000, 4096, 65_530, 300_000, 17]
    values: list[bytes | None] = []
    for i in range(1300):
        if i % 7 == 3:
            values.append(hostile[i % len(hostile)])
        else:
            size = sizes[i % len(sizes)] if i % 5 == 0 else i % 97
            values.append(_frame(AW.schema_id, _body(title=("é" if i % 2 else "x") * size, active_time=i)))
    values.append(_frame(AW.schema_id, _body()[:30] + b"\xfe\xff\xff\xff\x0f"))  # a string length of 2**31 - 1
    py, nat = run_both(route, values)
    assert nat[:2] == py[:2]
    assert nat[2] > 1000, "the good events were transcoded natively"
    assert max(len(r) for r in nat[0]) > 300_000, "not vacuous: the 300 kB title made a row"
