"""Micro-bench of the consumer's per-message work: ``MicroBatch.add_many`` on in-memory messages.

No services: realistic ``active_windows`` events (the load generator's), Avro-encoded and
Confluent-framed, as ``confluent_kafka.Message`` objects (``--messages fake``: the unit
tests' ``FakeMessage`` stand-ins, whose Python methods cost more to call), go through
``add_many`` in batches as ``consume()`` returns them (runs of one partition), on the
native path and on the Python one. Prints CPU µs per event (median of ``--runs``): what
the consumer spends between consume() and COPY.

    python -m bench.add_many [--events 100000] [--batch 500] [--runs 5] [--paths native,python]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from datetime import timedelta
from typing import Any, cast

from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer

from gatestream.consumers.batch import MicroBatch, Plausibility
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.routes import Route, event_time_field
from gatestream.consumers.tables import TableSpec
from gatestream.consumers.transcoder import BatchTranscoder, native_status
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType, SchemaCatalog
from tests.unit.fakes import FakeMessage

TOPIC = "bench.active_windows"
PARTITIONS = 6
# active_windows' columns and their type OIDs, as describe_table reads them
OIDS = {"event_id": 2950, "organization_id": 23, "users_on_computers_id": 20, "datetime": 1184, "title": 25,
        "process_name": 25, "icon": 25, "active_time": 23}  # fmt: skip


class _Registry:
    def __init__(self, schema_id: int, schema: dict[str, Any]) -> None:
        self.schema_id, self.text = schema_id, Schema(__import__("json").dumps(schema), "AVRO")

    def get_schema(self, schema_id: int) -> Schema:
        return self.text


def messages(count: int, real: bool = True) -> tuple[Route, list[list[Message]], int]:
    entry = SchemaCatalog().latest(EventType.ACTIVE_WINDOWS)
    parsed = parse_schema(entry.schema)
    header = b"\x00" + entry.schema_id.to_bytes(4, "big")
    msgs: list[Message] = []
    for i, ev in enumerate(generate(count, Fleet(orgs=10, devices_per_org=100), [EventType.ACTIVE_WINDOWS.value],
                                    spread=timedelta(hours=1))):  # fmt: skip
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, ev.to_record())
        part, off, value = i % PARTITIONS, i // PARTITIONS, header + buf.getvalue()
        if real:
            msgs.append(Message(topic=TOPIC, partition=part, offset=off, value=value))
        else:
            msgs.append(cast(Message, FakeMessage(TOPIC, part, off, value)))
    names = tuple(f["name"] for f in entry.schema["fields"] if f["name"] in OIDS)
    spec = TableSpec("monitoring", "active_windows", names, tuple(OIDS[n] for n in names),
                     lambda r: tuple(r[n] for n in names))  # fmt: skip
    route = Route(TOPIC, Decoder(_Registry(entry.schema_id, entry.schema), entry.schema), spec,
                  event_time_field(entry.schema))  # fmt: skip
    # consume() hands over runs of one partition's messages: order them so
    msgs.sort(key=lambda m: (m.partition(), m.offset()))
    return route, [msgs], len(msgs)


def one_run(route: Route, msgs: list[Message], batch: int, native: bool) -> float:
    plausible = Plausibility(946_684_800_000, 86_400_000)
    parts = Partitions()
    for p in range(PARTITIONS):
        parts.take((TOPIC, p), None)
    tc = None
    if native:
        tc = BatchTranscoder({TOPIC: route}, earliest_ms=plausible.earliest_ms, max_future_ms=plausible.max_future_ms,
                             id_fields=plausible.ID_FIELDS)  # fmt: skip
    MicroBatch({TOPIC: route}, parts, plausible=plausible, native=tc).add_many(msgs[:1])  # learn the schema id
    parts.next.clear()
    t0 = time.process_time()
    for i in range(0, len(msgs), batch):
        mb = MicroBatch({TOPIC: route}, parts, plausible=plausible, native=tc)
        mb.add_many(msgs[i : i + batch])
        assert mb.count == len(msgs[i : i + batch]) and not mb.rejects
    return (time.process_time() - t0) / len(msgs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500, help="messages per add_many call (a consume() batch)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--paths", default="native,python")
    ap.add_argument(
        "--messages",
        choices=["real", "fake"],
        default="real",
        help="confluent_kafka.Message objects (default) or the unit tests' FakeMessage stand-ins",
    )
    args = ap.parse_args()
    route, (msgs,), n = messages(args.events, real=args.messages == "real")
    print(f"add_many: {n} events ({args.messages} messages), batches of {args.batch}, {args.runs} runs (CPU time)")
    if not native_status()[0]:
        print(f"native transcoder not built: {native_status()[1]}")
    for path in args.paths.split(","):
        if path == "native" and not native_status()[0]:
            continue
        times = [one_run(route, msgs, args.batch, path == "native") for _ in range(args.runs)]
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {path:>7}: {statistics.median(times):6.2f} µs/event (median; runs {runs})")


if __name__ == "__main__":
    main()
