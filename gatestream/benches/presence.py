"""``gatestream bench presence``: the consumer CPU presence tracking costs per event.

No Kafka and no ingest loop: realistic ``active_windows`` events (10 organizations of 100
seats, one gateway per organization, each seat's host name) are encoded as a gateway's
``Publisher`` sends them, wrapped in real ``confluent_kafka.Message`` objects carrying the
identity headers, and decoded into micro-batches of ``--batch-rows`` by both decoding
paths (tuples: Python; COPY tuples: the native transcoder, where it is built). Then each
batch goes through ``PresenceTracker.apply`` -- the check, the coalescing and its SQL
statements -- in a transaction of a scratch database (``<db>_presence``) that is rolled
back, and this process's CPU time (``time.process_time``: not wall time, so a busy
machine does not inflate it) is divided by the rows. The gateways are registered first
(as the product registers them), so each batch is the steady state: check, then update.
Medians over ``--runs``.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
from dataclasses import replace
from datetime import timedelta

from confluent_kafka import Message

from gatestream.bench import bench_database, drop_bench_database
from gatestream.consumers.batch import MicroBatch
from gatestream.consumers.batch_writer import TableBatch
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.presence import PresenceTracker
from gatestream.consumers.routes import Route, event_time_field
from gatestream.consumers.tables import describe_table
from gatestream.consumers.transcoder import BatchTranscoder, native_status
from gatestream.database import connect_once
from gatestream.producers.loadgen import Fleet, generate
from gatestream.producers.publisher import Publisher
from gatestream.schemas import EventType, catalog_of
from gatestream.schemas.presence import AGENT_HOSTNAME_HEADER, GATEWAY_HEADER
from gatestream.schemas.registry import make_registry
from gatestream.settings import IngestSettings, ProducerSettings

EVENT_TYPE = EventType.ACTIVE_WINDOWS
PARTITIONS = 6


def gateway_of(org: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_OID, f"gatestream-bench-{org}")


def _messages(settings: IngestSettings, topic: str, rows: int) -> tuple[list[Message], dict[int, int]]:
    """``rows`` events as consumed messages with their gateway's headers; org -> seats."""
    psettings = ProducerSettings(**settings.model_dump(include=set(ProducerSettings.model_fields)))
    pub = Publisher(
        psettings.model_copy(update={"spool_path": f"/tmp/gatestream-bench-{uuid.uuid4().hex[:6]}.sqlite3"})
    )
    fleet = Fleet(orgs=10, devices_per_org=100)
    msgs: list[Message] = []
    seats: dict[int, int] = {}
    try:
        for i, e in enumerate(generate(rows, fleet, [EVENT_TYPE], spread=timedelta(days=2))):
            _, key, value = pub.encode(e)
            org, seat = e.organization_id, e.users_on_computers_id  # type: ignore[union-attr]
            seats[org] = seats.get(org, 0) + 1
            headers: list[tuple[str, str | bytes | None]] = [
                (GATEWAY_HEADER, str(gateway_of(org)).encode()),
                (AGENT_HOSTNAME_HEADER, f"desk-{seat}".encode()),
            ]
            msgs.append(Message(topic=topic, partition=i % PARTITIONS, offset=i // PARTITIONS, key=key, value=value,
                                headers=headers))  # fmt: skip
    finally:
        pub.close(timeout=0)
    return msgs, seats


def _batches(route: Route, msgs: list[Message], batch_rows: int, native: bool) -> list[TableBatch]:
    """The messages decoded into table batches of ``batch_rows`` on one path."""
    route.decoder.decode(msgs[0].value())  # the schema id is known: the native path has its plan
    transcoder = (
        BatchTranscoder({route.topic: route}, earliest_ms=None, max_future_ms=None, id_fields=()) if native else None
    )
    out: list[TableBatch] = []
    for at in range(0, len(msgs), batch_rows):
        parts = Partitions()
        for p in range(PARTITIONS):
            parts.take((route.topic, p), None)
        batch = MicroBatch({route.topic: route}, parts, native=transcoder)
        batch.add_many(msgs[at : at + batch_rows])
        tb = batch.tables[route.topic]
        kinds = {type(r) for r in tb.rows}
        if kinds != ({bytes} if native else {tuple}):
            raise RuntimeError(f"the {'native' if native else 'python'} path made rows of {kinds}")
        out.append(tb)
    return out


def _apply_cpu(url: str, tracker: PresenceTracker, topic: str, batches: list[TableBatch]) -> float:
    """CPU µs per row of ``tracker.apply`` over the batches (each in a rolled-back transaction)."""
    rows = 0
    cpu = 0.0
    with connect_once(url, autocommit=True) as conn:
        for tb in batches:
            copy = replace(tb, rows=list(tb.rows), origins=list(tb.origins))
            with conn.transaction(force_rollback=True):
                t0 = time.process_time()
                rejects = tracker.apply(conn, {topic: copy})
                cpu += time.process_time() - t0
            if rejects or len(copy.rows) != len(tb.rows):
                raise RuntimeError(f"presence refused {len(rejects)} bench events: {rejects[:1]}")
            rows += len(tb.rows)
    return cpu / rows * 1e6


def bench_presence(settings: IngestSettings, *, rows: int, runs: int, batch_rows: int) -> int:
    native, why = native_status()
    paths = ["native", "python"] if native else ["python"]
    print(f"bench presence: {rows} {EVENT_TYPE.value} events, batches of {batch_rows}, {runs} runs; "
          f"consumer CPU (process_time) of PresenceTracker.apply per row")  # fmt: skip
    if not native:
        print(f"  (native path not measured: {why})")
    catalog = catalog_of(settings)
    topic = settings.topic_for(EVENT_TYPE)
    reader = catalog.latest(EVENT_TYPE).schema
    url = bench_database(settings.database_url, "presence")
    try:
        msgs, seats = _messages(settings, topic, rows)
        with connect_once(url) as conn:
            spec = describe_table(conn, "monitoring", EVENT_TYPE.value, [f["name"] for f in reader["fields"]])
            for org in seats:  # registered by the product: the steady state
                conn.execute("INSERT INTO monitoring.gateway_instances (id, organization_id) VALUES (%s, %s)",
                             (gateway_of(org), org))  # fmt: skip
        registry = make_registry(settings.schema_registry_url, catalog)
        route = Route(
            topic, Decoder(registry, reader), spec, event_time_field(reader), catalog.info(EVENT_TYPE).presence
        )
        tracker = PresenceTracker({topic: route}, grain_s=settings.presence_grain_s)
        batches = {p: _batches(route, msgs, batch_rows, p == "native") for p in paths}
        gc.freeze()  # as the ingest pipeline does once started (consumers.pipeline)
        got: dict[str, list[float]] = {p: [] for p in paths}
        for i in range(runs):
            for p in paths if i % 2 == 0 else paths[::-1]:
                got[p].append(_apply_cpu(url, tracker, topic, batches[p]))
            print(f"  run {i + 1}: " + "   ".join(f"{p}: {got[p][-1]:.2f} µs/row" for p in paths))
        print("median: " + "   ".join(f"{p}: {statistics.median(got[p]):.2f} µs/row" for p in paths)
              + "   (target: <= 1 µs/row)")  # fmt: skip
    finally:
        drop_bench_database(url)
    return 0
