"""Property: every schema-valid event, at the edges of every Avro type and logical type,
either lands with every value round-tripping exactly, or is refused with a reason (what
ingest dead-letters). Nothing else may happen: no exception, no silent change.

Events are encoded with fastavro in Confluent framing and pushed through the real
decode -> plausibility -> row -> binary COPY path into the real database (BatchWriter,
as the ingest consumer uses it; the Kafka transport around it has its own tests).
"""

from __future__ import annotations

import io
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from gatestream.consumers.batch import Plausibility
from gatestream.consumers.batch_writer import BatchWriter, TableBatch
from gatestream.consumers.deadletter import Reason
from gatestream.consumers.decoder import DecodeError, Decoder
from gatestream.consumers.pgtypes import strip_logical_types
from gatestream.consumers.tables import describe_table
from gatestream.schemas import EventType, SchemaCatalog
from gatestream.schemas.registry import CatalogRegistry

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW_MS = int(datetime.now(UTC).timestamp() * 1000)
LONG = (-(2**63), 2**63 - 1)
INT = (-(2**31), 2**31 - 1)
# time edges: the long range, PostgreSQL's and Python's, the plausibility window's
TIME_EDGES = [
    *LONG, -(2**63) + 1, 2**63 - 2, 0, -1,
    -210866803200000, 9224318016000000 - 1,  # PostgreSQL timestamptz range
    -62135596800000, 253402300799999,  # Python datetime: year 1 to 9999
    946684800000 - 1, 946684800000,  # the default earliest accepted time
    NOW_MS, NOW_MS + 86_400_000, NOW_MS + 86_400_001,
]  # fmt: skip
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
# every Unicode plane but surrogates (not UTF-8: fastavro refuses to write them), NUL included
TEXT = st.text(alphabet=st.characters(exclude_categories=SURROGATES), max_size=40) | st.sampled_from(
    ["", "\x00", "a\x00b", "x" * 70_000, "\U0010ffff", "\U0001f600" * 10, "\ufeff", "\u202e"]
)


def _strategy(t: Any) -> st.SearchStrategy[Any]:
    if isinstance(t, list):  # a union: every branch, null included
        return st.one_of(*[_strategy(b) for b in t])
    if isinstance(t, dict):
        logical = t.get("logicalType")
        if logical == "timestamp-millis":
            plausible = st.integers(NOW_MS - 10**11, NOW_MS + 10**7)
            return st.one_of(plausible, plausible, st.sampled_from(TIME_EDGES), st.integers(*LONG))
        if logical == "uuid":
            return st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | TEXT
        return _strategy(t["type"])
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.one_of(
            st.integers(1, 10**6), st.integers(1, 10**6), st.sampled_from([*INT, 0, -1, 1]), st.integers(*INT)
        ),
        "long": st.sampled_from([*LONG, 0, -1]) | st.integers(*LONG),
        "double": st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308]),
        "float": st.floats(width=32, allow_nan=True, allow_infinity=True),
        "string": TEXT,
    }[t]


def _same(column_value: Any, wire: Any) -> bool:
    if isinstance(column_value, uuid.UUID):
        return column_value == uuid.UUID(str(wire))
    if isinstance(column_value, datetime):
        return bool((column_value - EPOCH) // timedelta(milliseconds=1) == wire)
    if isinstance(column_value, float) and isinstance(wire, float):
        return (math.isnan(column_value) and math.isnan(wire)) or column_value == wire
    return bool(column_value == wire)


@pytest.mark.slow
@pytest.mark.parametrize("event_type", list(EventType), ids=lambda e: e.value)
def test_each_event_lands_exactly_or_is_refused_with_a_reason(db_url: str, event_type: EventType) -> None:
    catalog = SchemaCatalog()
    entry = catalog.latest(event_type)
    writer = parse_schema(strip_logical_types(entry.schema))  # the same bytes; any long is writable
    decoder = Decoder(CatalogRegistry(catalog), entry.schema)
    plausible = Plausibility(946_684_800_000, 86_400_000)
    fields = {f["name"]: _strategy(f["type"]) for f in entry.schema["fields"]}
    time_field = next(f["name"] for f in entry.schema["fields"] if "timestamp" in str(f["type"]))
    outcomes: dict[str, int] = {}

    with psycopg.connect(db_url, autocommit=True) as conn:
        info = SchemaCatalog().info(event_type)
        spec = describe_table(conn, info.schema, info.table, list(fields))
        bw = BatchWriter(conn)

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.fixed_dictionaries(fields))
        def check(record: dict[str, Any]) -> None:
            buf = io.BytesIO()
            try:
                schemaless_writer(buf, writer, record)
            except (ValueError, TypeError, OverflowError):
                return  # not schema-valid: fastavro refuses to write it, so no gateway can send it
            value = b"\x00" + entry.schema_id.to_bytes(4, "big") + buf.getvalue()
            try:
                wire = decoder.decode(value)
            except DecodeError as exc:
                outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
                return
            refused = plausible.problem(time_field, wire, NOW_MS)
            if refused is not None:
                outcomes[refused[0]] = outcomes.get(refused[0], 0) + 1
                return
            result = bw.write([TableBatch(spec, [spec.row_of(wire)], [0])])
            if result.rejected:
                assert [r.reason for r in result.rejected] in ([Reason.REJECTED_BY_DATABASE], [Reason.INTERNAL_ERROR])
                outcomes[result.rejected[0].reason] = outcomes.get(result.rejected[0].reason, 0) + 1
                return
            if result.duplicates:  # the same event_id drawn twice: present, as a resend would be
                outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
                return
            assert result.inserted == 1
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
            stored = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE event_id = %s").format(cols, spec.qualified),
                (uuid.UUID(str(wire["event_id"])),),
            ).fetchall()
            # the key is (event_id, time): an event_id drawn before may stand with other times
            rows = [dict(zip(spec.columns, r, strict=True)) for r in stored]
            assert any(all(_same(got, wire[name]) for name, got in row.items()) for row in rows), (
                f"no stored row equals what was sent: {rows!r} vs {wire!r}"
            )
            outcomes["landed"] = outcomes.get("landed", 0) + 1

        check()
    # not vacuous: events reached the database (landed, or refused there)
    assert outcomes.get("landed", 0) + outcomes.get(Reason.REJECTED_BY_DATABASE, 0) > 0, outcomes
    assert set(outcomes) <= {"landed", "duplicate", *Reason}, outcomes
