"""``gatestream bench ingest|replay``: throughput figures measured in one run.

``bench ingest``: how close end-to-end ingest comes to raw binary COPY.

In one run, on the same events (``active_windows``, realistic values):
  1. raw   - the pre-decoded rows, binary COPY into the hypertable in batches of
             ``--batch-rows``, one transaction per batch: the database's limit here;
  2. ingest - one ingest consumer (this process) reading the same events from Kafka:
             decode, map, COPY, offsets in the same transaction, per micro-batch.
Runs alternate the two, each on an empty table, in a database of its own
(``<database>_bench``, created and migrated fresh). Medians are reported, and the ratio
is computed per run and then its median taken.

CPU: the consumer process's own (``resource.getrusage``: the loop, the writer thread,
librdkafka's threads) and the database backends' serving the bench database
(``gatestream.cpu``), per event. ``--decode native,python``: each decoding path in every
run (alternating their order), so the two compare on the same events and machine state.
``--members 1,2,4``: as many consumer processes in one group on one topic of 12
partitions, total events/s per count (``gatestream.bench_members``).

``bench replay``: live ingest beside replay on the same events, replaying into an empty
table (every row missing, as after a restore) and over the full table (every row
already present).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from confluent_kafka import Producer

from gatestream.bench_output import write_json
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.ingest import Ingestor, Route
from gatestream.consumers.pgtypes import register_wire_dumpers
from gatestream.consumers.routes import event_time_field
from gatestream.consumers.tables import TableSpec, describe_table
from gatestream.consumers.transcoder import native_status
from gatestream.cpu import BackendCpu, process_cpu_s
from gatestream.database import connect_once
from gatestream.kafka import base_config
from gatestream.migrate import migrate
from gatestream.producers.loadgen import Fleet, generate
from gatestream.producers.publisher import Publisher
from gatestream.schemas import EventType, catalog_of
from gatestream.schemas.presence import GATEWAY_HEADER
from gatestream.schemas.registry import make_registry
from gatestream.settings import IngestSettings, ProducerSettings
from gatestream.topics import delete_topics, ensure_topics

EVENT_TYPE = EventType.ACTIVE_WINDOWS


@dataclass
class RunResult:
    raw_rows_per_s: float
    ingest_events_per_s: float

    @property
    def ratio(self) -> float:
        return self.ingest_events_per_s / self.raw_rows_per_s


def bench_database(url: str, suffix: str = "bench") -> str:
    """A fresh, migrated database of a bench's own (<db>_<suffix>), beside the given one."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = f"{info.get('dbname') or 'gatestream'}_{suffix}"
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with connect_once(admin) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    bench_url = psycopg.conninfo.make_conninfo(url, dbname=name)
    migrate(bench_url)
    return bench_url


def drop_bench_database(bench_url: str) -> None:
    """Drop a database ``bench_database`` made (its sessions ended)."""
    name = psycopg.conninfo.conninfo_to_dict(bench_url).get("dbname")
    with connect_once(psycopg.conninfo.make_conninfo(bench_url, dbname="postgres")) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(str(name)))
        )


def _encode(count: int, settings: ProducerSettings, tmp_spool: str) -> list[tuple[str, bytes, bytes]]:
    pub = Publisher(settings.model_copy(update={"spool_path": tmp_spool}))
    events = generate(count, Fleet(orgs=10, devices_per_org=100), [EVENT_TYPE], spread=timedelta(days=2))
    out = [pub.encode(e) for e in events]
    pub.close(timeout=0)
    return out


def _produce(
    settings: ProducerSettings, topic: str, encoded: list[tuple[str, bytes, bytes]], headers: list[Any] | None = None
) -> None:
    """``headers``: per event (the gateway identity a Publisher stamps), or None."""
    p = Producer({**base_config(settings), "linger.ms": 50, "compression.type": "lz4", "enable.idempotence": True})
    for i, (_, key, value) in enumerate(encoded):
        while True:
            try:
                p.produce(topic, value=value, key=key, headers=headers[i] if headers else None)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120) != 0:
        raise RuntimeError("bench events were not all delivered")


def _raw_copy(url: str, spec: TableSpec, rows: list[tuple[Any, ...]], batch: int) -> float:
    with connect_once(url) as conn:
        register_wire_dumpers(conn)
        conn.execute("TRUNCATE monitoring.active_windows")
        cols = psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, spec.columns))
        stmt = psycopg.sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(spec.qualified, cols)
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor().copy(stmt) as cp:
                cp.set_types(list(spec.type_oids))
                for row in rows[i : i + batch]:
                    cp.write_row(row)
        return len(rows) / (time.perf_counter() - t0)


def _ingest(settings: IngestSettings, url: str, topic: str, route: Route, count: int) -> float:
    return _ingest_cpu(settings, url, topic, route, count)[0]


def _ingest_cpu(
    settings: IngestSettings, url: str, topic: str, route: Route, count: int
) -> tuple[float, float, float | None]:
    """events/s, and CPU µs per event of this (the consumer) process and of the database backends."""
    _truncate(url)
    s = settings.model_copy(update={"database_url": url, "stop_after_idle_s": None})
    with BackendCpu(url) as db_cpu:
        cpu0 = process_cpu_s()
        ing = Ingestor(
            s, {topic: route}, group_id=f"bench-{uuid.uuid4().hex[:8]}", stop_when=lambda sm: sm.inserted >= count
        )
        summary = ing.run()
        cpu = process_cpu_s() - cpu0
    if summary.inserted != count or summary.first_event_at is None or summary.last_commit_at is None:
        raise RuntimeError(f"bench ingest wrote {summary.inserted} of {count} events")
    db = db_cpu.seconds
    return (
        count / (summary.last_commit_at - summary.first_event_at),
        cpu / count * 1e6,
        (None if db is None else db / count * 1e6),
    )


@dataclass
class BenchData:
    """One bench's database, topic (filled with the events) and the same events as rows."""

    settings: IngestSettings
    url: str
    topic: str
    route: Route
    rows: list[tuple[Any, ...]]


@contextmanager
def bench_data(
    settings: IngestSettings,
    events: int,
    batch_rows: int,
    partitions: int,
    *,
    with_rows: bool = True,
    presence: bool = False,
) -> Iterator[BenchData]:
    """``presence``: every event carries its organization's gateway identity (as a gateway's
    Publisher stamps it), so ingest tracks presence and checks the tenant."""
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    url = bench_database(settings.database_url)
    settings = settings.model_copy(
        update={"batch_max_rows": batch_rows, "batch_max_ms": 1000, "topic_prefix": prefix, "database_url": url}
    )
    psettings = ProducerSettings(**settings.model_dump(include=set(ProducerSettings.model_fields)))
    topic = settings.topic_for(EVENT_TYPE)
    catalog = catalog_of(settings)
    reader = catalog.latest(EVENT_TYPE).schema
    with connect_once(url, autocommit=False) as conn:
        spec = describe_table(conn, "monitoring", EVENT_TYPE.value, [f["name"] for f in reader["fields"]])
    registry = make_registry(settings.schema_registry_url, catalog)  # the one the producer registers with
    route = Route(topic, Decoder(registry, reader), spec, event_time_field(reader), catalog.info(EVENT_TYPE).presence)
    encoded = _encode(events, psettings, f"/tmp/gatestream-bench-{uuid.uuid4().hex[:6]}.sqlite3")
    rows = [spec.row_of(route.decoder.decode(v)) for _, _, v in encoded] if with_rows else []
    headers = None
    if presence:  # one gateway per organization
        orgs = [route.decoder.decode(v)["organization_id"] for _, _, v in encoded]
        headers = [[(GATEWAY_HEADER, str(uuid.uuid5(uuid.NAMESPACE_OID, f"gatestream-bench-{o}")).encode())]
                   for o in orgs]  # fmt: skip
    ensure_topics(psettings, [topic], partitions)
    try:
        _produce(psettings, topic, encoded, headers)
        del encoded
        yield BenchData(settings, url, topic, route, rows)
    finally:
        delete_topics(psettings, [topic])


def _truncate(url: str) -> None:
    with connect_once(url) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
        conn.execute("TRUNCATE monitoring.agent_instances, monitoring.gateway_instances")  # presence starts afresh


DECODE_PATHS = ("native", "python")


def bench_ingest(
    settings: IngestSettings, *, events: int, runs: int, batch_rows: int, partitions: int,
    members: list[int] | None = None, json_path: str | None = None, decode: list[str] | None = None,
    presence: bool = False,
) -> int:  # fmt: skip
    """Raw binary COPY vs end-to-end ingest on each decoding path in ``decode`` (native,
    python; default: native where it is built), ingest with each batch's commit
    asynchronous (SET LOCAL synchronous_commit = off) vs synchronous (the first path only);
    CPU per event; with ``members``, the scale-out figure on 12 partitions instead. ``presence``:
    the events carry gateway identities, and the first path also runs without presence
    tracking (GATESTREAM_PRESENCE_TRACKING=false): its cost."""
    native, why = native_status()
    paths = decode or ["native" if native else "python"]
    if "native" in paths and not native:
        print(f"bench ingest: the native decoding path is not available here ({why})", file=sys.stderr)
        return 2
    if members:
        from gatestream.bench_members import bench_members

        s = settings.model_copy(update={"native_decode": "auto" if paths[0] == "native" else "off"})
        return bench_members(s, events=events, runs=runs, batch_rows=batch_rows, members=members, json_path=json_path)
    print(f"bench: {events} {EVENT_TYPE.value} events, batches of {batch_rows}, {partitions} partitions, {runs} runs")
    print(f"avro decoding paths: {', '.join(paths)}" + ("" if native else f" (native not available: {why})"))
    raws: list[float] = []
    got: dict[str, list[tuple[float, float, float | None]]] = {p: [] for p in paths}
    sync: list[float] = []
    untracked: list[float] = []
    with bench_data(settings, events, batch_rows, partitions, presence=presence) as d:
        for i in range(runs):
            raws.append(_raw_copy(d.url, d.route.spec, d.rows, batch_rows))
            line = f"  run {i + 1}: raw COPY {raws[-1]:>9,.0f} rows/s"
            order = paths if i % 2 == 0 else paths[::-1]  # alternate, so drift favours no path
            for path in order:
                s = d.settings.model_copy(update={"async_commit": True, "native_decode": _mode(path)})
                got[path].append(_ingest_cpu(s, d.url, d.topic, d.route, events))
            for path in paths:
                e2e, c, dbc = got[path][-1]
                line += f"   {path}: {e2e:>9,.0f} events/s {e2e / raws[-1]:.0%} CPU {c:.2f} µs/event db {_us(dbc)}"
            s = d.settings.model_copy(update={"async_commit": False, "native_decode": _mode(paths[0])})
            sync.append(_ingest(s, d.url, d.topic, d.route, events))
            line += f"   {paths[0]} with synchronous commits {sync[-1]:>9,.0f} events/s"
            if presence:
                s = d.settings.model_copy(
                    update={"async_commit": True, "native_decode": _mode(paths[0]), "presence_tracking": False}
                )
                untracked.append(_ingest(s, d.url, d.topic, d.route, events))
                line += f"   without presence {untracked[-1]:>9,.0f} events/s"
            print(line)
    raw_med = statistics.median(raws)
    figures: dict[str, Any] = {
        "events": events, "batch_rows": batch_rows, "partitions": partitions, "runs": runs,
        "raw_copy_rows_per_s": {"median": raw_med, "per_run": raws}, "decoding": {},
    }  # fmt: skip
    print(f"median: raw COPY {raw_med:,.0f} rows/s")
    print(f"{'decoding':>9} {'events/s':>10} {'of raw':>7} {'consumer µs/event':>18} {'database µs/event':>18}")
    for path in paths:
        rates = [g[0] for g in got[path]]
        ratio = statistics.median(g[0] / r for g, r in zip(got[path], raws, strict=True))
        cpu = statistics.median(g[1] for g in got[path])
        dbs = [g[2] for g in got[path] if g[2] is not None]
        db = statistics.median(dbs) if dbs else None
        db_text = "n/a" if db is None else f"{db:.2f}"
        print(f"{path:>9} {statistics.median(rates):>10,.0f} {ratio:>7.0%} {cpu:>18.2f} {db_text:>18}")
        figures["decoding"][path] = {
            "ingest_events_per_s": statistics.median(rates), "ratio": ratio, "consumer_cpu_us_per_event": cpu,
            "database_cpu_us_per_event": db, "per_run": [
                {"ingest_events_per_s": e, "ratio": e / r, "consumer_cpu_us_per_event": c,
                 "database_cpu_us_per_event": dbc} for (e, c, dbc), r in zip(got[path], raws, strict=True)
            ],
        }  # fmt: skip
    first = [g[0] for g in got[paths[0]]]
    sync_ratio = statistics.median(sc / e for sc, e in zip(sync, first, strict=True))
    print(f"{paths[0]} with synchronous commits: {statistics.median(sync):,.0f} events/s "
          f"({sync_ratio:.0%} of asynchronous, median of per-run ratios)")  # fmt: skip
    figures["sync_commit"] = {"decoding": paths[0], "events_per_s": statistics.median(sync), "vs_async": sync_ratio,
                              "per_run": sync}  # fmt: skip
    if presence:
        tracked = [g[0] for g in got[paths[0]]]
        cost = statistics.median(t / u for t, u in zip(tracked, untracked, strict=True))
        print(f"{paths[0]} with presence tracking: {statistics.median(tracked):,.0f} events/s, without: "
              f"{statistics.median(untracked):,.0f} events/s ({cost:.0%} of it, median of per-run ratios)")  # fmt: skip
        figures["presence"] = {"decoding": paths[0], "with_events_per_s": statistics.median(tracked),
                               "without_events_per_s": statistics.median(untracked), "ratio": cost,
                               "per_run_without": untracked}  # fmt: skip
    print("targets: >= 150,000 events/s per consumer process; >= 80% of raw COPY; <= 5 µs consumer CPU per event")
    write_json(json_path, "ingest", figures)
    return 0


def _mode(path: str) -> str:
    """GATESTREAM_NATIVE_DECODE for a decoding path."""
    return "auto" if path == "native" else "off"


def _us(v: float | None) -> str:
    return "n/a (server not on this machine)" if v is None else f"{v:.2f} µs/event"


def bench_metrics(settings: IngestSettings, *, events: int, runs: int, batch_rows: int, partitions: int) -> int:
    """End-to-end ingest with metrics recorded vs not, alternating, on the same events."""
    print(f"bench: {events} {EVENT_TYPE.value} events, batches of {batch_rows}, {partitions} partitions, {runs} runs")
    on: list[float] = []
    off: list[float] = []
    with bench_data(settings, events, batch_rows, partitions, with_rows=False) as d:
        for i in range(runs):
            first_on = i % 2 == 0  # alternate the order so drift does not favour one side
            for enabled in (first_on, not first_on):
                s = d.settings.model_copy(update={"metrics_enabled": enabled})
                (on if enabled else off).append(_ingest(s, d.url, d.topic, d.route, events))
            print(
                f"  run {i + 1}: metrics on {on[-1]:>9,.0f} events/s   off {off[-1]:>9,.0f} events/s   "
                f"overhead {1 - on[-1] / off[-1]:+.1%}"
            )
    m_on, m_off = statistics.median(on), statistics.median(off)
    per_run = statistics.median(1 - a / b for a, b in zip(on, off, strict=True))
    print(
        f"median: metrics on {m_on:,.0f} events/s, off {m_off:,.0f} events/s; overhead (median of per-run ratios) "
        f"{per_run:+.1%} (target < 5%)"
    )
    return 0


def _replay_rate(d: BenchData, events: int, max_rate: float = 0) -> float:
    from gatestream.consumers.replay import ReplaySelection, replay
    from gatestream.consumers.replay_reader import RangeReader

    captured: list[RangeReader] = []
    s = replay(
        d.settings,
        ReplaySelection(event_types=(EVENT_TYPE,)),
        restart=True,
        max_rate=max_rate,
        name=f"bench-{uuid.uuid4().hex[:6]}",
        reader_hook=captured.append,
    )
    sm = captured[0].summary
    if s.read != events or sm.first_event_at is None or sm.last_commit_at is None:
        raise RuntimeError(f"bench replay read {s.read} of {events} events")
    return events / (sm.last_commit_at - sm.first_event_at)


def bench_replay(
    settings: IngestSettings, *, events: int, runs: int, batch_rows: int, partitions: int, max_rate: float = 0
) -> int:
    """Live ingest vs replay (into an empty table, and over a full one) on the same events;
    with ``max_rate``, also the rate a replay limited to it achieves (into an empty table)."""
    print(f"bench: {events} {EVENT_TYPE.value} events, batches of {batch_rows}, {partitions} partitions, {runs} runs")
    live, backfill, present = [], [], []
    with bench_data(settings, events, batch_rows, partitions, with_rows=False) as d:
        for i in range(runs):
            live.append(_ingest(d.settings, d.url, d.topic, d.route, events))
            _truncate(d.url)
            backfill.append(_replay_rate(d, events))  # every row missing: a restore
            present.append(_replay_rate(d, events))  # every row there: a replay that adds nothing
            print(
                f"  run {i + 1}: live ingest {live[-1]:>9,.0f}/s   replay, rows missing {backfill[-1]:>9,.0f}/s   "
                f"replay, rows present {present[-1]:>9,.0f}/s"
            )
        if max_rate > 0:
            _truncate(d.url)
            limited = _replay_rate(d, events, max_rate)
            print(f"replay --max-rate {max_rate:,.0f}: achieved {limited:,.0f} events/s ({limited / max_rate:.0%})")
    lm, bm, pm = (statistics.median(x) for x in (live, backfill, present))
    print(
        f"median events/s: live ingest {lm:,.0f}, replay (rows missing) {bm:,.0f} = {bm / lm:.2f}x live, "
        f"replay (rows present) {pm:,.0f} = {pm / lm:.2f}x live"
    )
    slowest = min(bm, pm)
    print(
        f"10M events at the slower replay rate: {1e7 / slowest / 60:.1f} min "
        "(targets: < 3 min for 10M, within 2x of live ingest)"
    )
    return 0
