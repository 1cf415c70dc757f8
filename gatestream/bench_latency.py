"""``gatestream bench latency``: event -> row-committed latency at a steady rate, with defaults.

Per run and rate: a fresh topic and consumer group; one ingest member (``gatestream
ingest``, a process of its own, with DEFAULT settings: only where the broker, the
database and the registry are is passed on); ``active_windows`` events published at a
steady rate through the real ``Publisher`` (spool, idempotent producer, acks=all). After
a warm-up (not measured), every event of the measured window is timed:

- total:    publish call (spool + produce) -> the commit that made its row visible,
            ``pg_xact_commit_timestamp(xmin)`` of the row (needs ``track_commit_timestamp = on``);
- producer: publish call -> the producer's delivery report (linger, broker acknowledgement);
- pipeline: delivery report -> commit (fetch, decode, batch, COPY, offsets, commit).

p50, p99, p99.9 and max per share; medians over the runs. The publish times are this
machine's clock, the commit times the database server's: run it where both are one clock
(the offset measured at start is printed and saved).

Events are encoded once by the Publisher (a pool of templates, one per device) and each
gets its own ``event_id`` written into its template's bytes: encoding is the gateway's
work before the producer's timestamp, and the bench must keep 10k events/s.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gatestream.bench import bench_database
from gatestream.bench_output import nearest_rank, table, write_json
from gatestream.database import connect_once
from gatestream.kafka import security_environ
from gatestream.producers.events import ActiveWindow
from gatestream.producers.loadgen import PROCESSES
from gatestream.producers.publisher import Publisher
from gatestream.schemas import EventType
from gatestream.settings import IngestSettings, ProducerSettings
from gatestream.topics import delete_topics, ensure_topics

EVENT_TYPE = EventType.ACTIVE_WINDOWS
SHARES = ("total", "producer", "pipeline")
PERCENTILES = (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))
GOALS_MS = {1000: 50.0, 10000: 500.0}  # issue 23: p99 of the total at these rates
DEVICES = 1000  # templates: one per device (the Kafka key), spread over the partitions
TICK_S = 0.001  # the publisher's pace: what is due within a millisecond goes in one call
INDEX_BITS = 48  # an event_id's low 48 bits are its index in the run, bits 48.. its phase
WARMUP, MEASURED = 1, 2
# what the ingest member is told: where things are, nothing about how to batch or fetch
PASSED_ON = ("bootstrap_servers", "schema_registry_url", "schema_registry_timeout_s", "schema_dir", "kafka_extra")


class BenchError(Exception):
    """A bench that cannot run or finish: one line for the user."""


def percentiles(values: array[float]) -> dict[str, float]:
    """Nearest-rank percentiles of seconds, in milliseconds."""
    ordered = sorted(values)
    return {name: round(nearest_rank(ordered, q) * 1000, 3) for name, q in PERCENTILES}


@dataclass
class RunFigures:
    rate: int
    events: int
    achieved_rate: float
    commits: int  # transactions that wrote the measured rows: rows per commit is the batch size
    shares: dict[str, dict[str, float]]  # share -> percentile -> ms


def commit_timestamps_on(url: str) -> bool:
    with connect_once(url) as conn:
        row = conn.execute("SELECT current_setting('track_commit_timestamp')").fetchone()
    return row is not None and row[0] == "on"


def clock_offset_ms(url: str) -> float:
    """The database server's clock minus this machine's: the midpoint of the shortest of
    20 round trips (on one host, the error is at most half of that round trip)."""
    samples = []
    with connect_once(url) as conn:
        for _ in range(20):
            before = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            after = time.time()
            assert row is not None
            samples.append((after - before, float(row[0]) - (before + after) / 2))
    return min(samples)[1] * 1000


class Templates:
    """Encoded events, one per device; ``make(tag, i)`` is one with its own event_id."""

    def __init__(self, pub: Publisher) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        self.encoded: list[tuple[str, bytes, bytes]] = []
        for d in range(DEVICES):
            proc, title = PROCESSES[d % len(PROCESSES)]
            ev = ActiveWindow(
                event_id=_event_id(0, d), organization_id=1 + d % 10, users_on_computers_id=100_001 + d,
                datetime=now, title=title, process_name=proc, icon=f"icons/{proc}.png", active_time=1 + d % 900,
            )  # fmt: skip
            topic, key, value = pub.encode(ev)
            # Confluent framing (5 bytes), the string's length (36, one varint byte), the id
            if value[6:42] != str(ev.event_id).encode():
                raise BenchError("the event_id is not where the bench writes it (the schema's first field changed?)")
            self.encoded.append((topic, key, value))

    def make(self, tag: int, i: int) -> tuple[str, bytes, bytes]:
        topic, key, value = self.encoded[i % DEVICES]
        return topic, key, value[:6] + str(_event_id(tag, i)).encode() + value[42:]


def _event_id(tag: int, i: int) -> uuid.UUID:
    return uuid.UUID(int=(tag << INDEX_BITS) | i, version=4)  # version and variant bits lie above bit 61


@contextmanager
def ingest_member(settings: IngestSettings, url: str, prefix: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``gatestream ingest`` with default settings, for this run's topic and group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
    for name in PASSED_ON:
        value = getattr(settings, name)
        if value not in (None, {}):
            env[f"GATESTREAM_{name.upper()}"] = value if isinstance(value, str) else _json(value)
    env.update(security_environ(settings))  # the same broker, as the same user
    env.update({
        "GATESTREAM_DATABASE_URL": url, "GATESTREAM_TOPIC_PREFIX": prefix, "GATESTREAM_GROUP_ID": f"{prefix}ingest",
        "GATESTREAM_DLQ_TOPIC": settings.dlq_topic, "GATESTREAM_LOG_FORMAT": "json", "GATESTREAM_LOG_LEVEL": "warning",
    })  # fmt: skip
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "gatestream", "ingest", "--types", EVENT_TYPE.value]
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _json(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _rows(url: str, tag: int) -> int:
    with connect_once(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM monitoring.active_windows WHERE event_id >= %s AND event_id <= %s",
            (_event_id(tag, 0), _event_id(tag, (1 << INDEX_BITS) - 1)),
        ).fetchone()
    return int(row[0]) if row else 0


class Run:
    """One rate, one run: publish, wait for the rows, read their commit times."""

    def __init__(self, settings: IngestSettings, url: str, rate: int, seconds: float, warmup_s: float) -> None:
        self.settings, self.url, self.rate = settings, url, rate
        self.warm = max(1, int(rate * warmup_s))
        self.n = int(rate * seconds)
        total = self.warm + self.n
        self.published = array("d", bytes(8 * total))  # wall clock (s) of each event's publish call
        self.delivered = array("d", bytes(8 * total))
        self._waiting: dict[bytes, deque[int]] = {}  # per key (one partition, in order): events in flight
        self.failed: str | None = None

    def on_delivery(self, topic: str, key: bytes, err: Any) -> None:
        if err is not None:
            self.failed = self.failed or str(err)
            return
        queue = self._waiting.get(key)
        if queue:
            i = queue.popleft()
            if i >= 0:
                self.delivered[i] = time.time()

    def _publish(self, pub: Publisher, tpl: Templates, tag: int, indexes: range, slot: int | None) -> None:
        batch = [tpl.make(tag, i) for i in indexes]
        for (_, key, _), i in zip(batch, indexes, strict=True):
            self._waiting.setdefault(key, deque()).append(i if slot is not None else -1)
        wall = time.time()
        pub.publish_encoded(batch)
        if slot is not None:
            for i in indexes:
                self.published[i] = wall

    def go(self, pub: Publisher, tpl: Templates, child: subprocess.Popen[bytes], log: Path) -> RunFigures:
        # the member is ready once an event of ours is in the table (a partition assigned, a batch committed)
        deadline = time.monotonic() + 90
        probe = 0
        while _rows(self.url, WARMUP) == 0:
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the ingest member did not start: {_last_line(log)}")
            self._publish(pub, tpl, WARMUP, range(probe, probe + 1), None)
            probe += 1
            pub.poll(0.2)
        # warm-up then the measured window, at one steady pace: event i is due at t0 + i / rate
        total = self.warm + self.n
        t0 = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * self.rate) + 1)
            if due > sent:
                if sent < self.warm:
                    upto = min(due, self.warm)
                    self._publish(pub, tpl, WARMUP, range(probe + sent, probe + upto), None)
                    sent = upto
                if due > sent:
                    self._publish(pub, tpl, MEASURED, range(sent, due), 0)
                    sent = due
            if self.failed:
                raise BenchError(f"delivery failed: {self.failed}")
            # publish at most every TICK_S: at 10k/s, ten events per spool transaction, not one
            pub.poll(max(TICK_S, t0 + sent / self.rate - time.monotonic()))
        elapsed = time.monotonic() - t0
        if pub.flush(60) != 0 or self.failed:
            raise BenchError(f"events not delivered: {self.failed or 'still spooled after 60 s'}")
        deadline = time.monotonic() + 120
        while _rows(self.url, MEASURED) < self.n:
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"not every event reached the table: {_last_line(log)}")
            time.sleep(0.25)
        return self._figures(total / elapsed if elapsed > 0 else float(self.rate))

    def _figures(self, achieved: float) -> RunFigures:
        lat = {s: array("d") for s in SHARES}
        xids: set[str] = set()
        first, last = _event_id(MEASURED, 0), _event_id(MEASURED, (1 << INDEX_BITS) - 1)
        mask = (1 << INDEX_BITS) - 1
        with connect_once(self.url, autocommit=False) as conn, conn.cursor(name="commits") as cur:
            cur.itersize = 50_000
            cur.execute(
                "SELECT event_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8, xmin::text "
                "FROM monitoring.active_windows WHERE event_id >= %s AND event_id <= %s",
                (first, last),
            )
            for event_id, committed, xid in cur:
                xids.add(xid)
                if committed is None:
                    raise BenchError("a row has no commit timestamp (track_commit_timestamp was off when it committed)")
                i = event_id.int & mask
                pub_t, del_t = self.published[i], self.delivered[i]
                lat["total"].append(committed - pub_t)
                lat["producer"].append(del_t - pub_t)
                lat["pipeline"].append(committed - del_t)
        if len(lat["total"]) != self.n:
            raise BenchError(f"{len(lat['total'])} of {self.n} measured events found")
        return RunFigures(self.rate, self.n, achieved, len(xids), {s: percentiles(v) for s, v in lat.items()})


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1][:300] if lines else "(no output)"


def run_once(settings: IngestSettings, url: str, rate: int, seconds: float, warmup_s: float, work: Path) -> RunFigures:
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    psettings = ProducerSettings(
        **{k: getattr(settings, k) for k in PASSED_ON}, topic_prefix=prefix, spool_path=work / f"{prefix}spool"
    )
    topic = psettings.topic_for(EVENT_TYPE)
    with connect_once(url) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    ensure_topics(psettings, [topic], psettings.partitions)
    run = Run(settings, url, rate, seconds, warmup_s)
    pub = Publisher(psettings, on_delivery=run.on_delivery)
    log = work / f"{prefix}ingest.log"
    try:
        tpl = Templates(pub)
        with ingest_member(settings, url, prefix, log) as child:
            return run.go(pub, tpl, child, log)
    finally:
        pub.close(timeout=5)
        delete_topics(psettings, [topic])


def bench_latency(
    settings: IngestSettings, *, rates: list[int], seconds: float, runs: int, warmup_s: float, json_path: Path | None
) -> int:
    if not commit_timestamps_on(settings.database_url):
        print(
            "gatestream bench latency: track_commit_timestamp is off on the database server; turn it on "
            "(ALTER SYSTEM SET track_commit_timestamp = on, then restart the server)",
            file=sys.stderr,
        )
        return 2
    url = bench_database(settings.database_url, "latency")
    offset = clock_offset_ms(url)
    d = IngestSettings.model_fields
    defaults = {k: d[k].default for k in ("batch_max_rows", "batch_max_ms", "batch_adaptive", "fetch_wait_max_ms")}
    defaults["linger_ms"] = ProducerSettings.model_fields["linger_ms"].default
    print(
        f"bench latency: {EVENT_TYPE.value}, rates {', '.join(f'{r:,}/s' for r in rates)}, {seconds:g} s measured "
        f"after {warmup_s:g} s of warm-up, {runs} runs; defaults {defaults}; database clock offset {offset:+.1f} ms"
    )
    results: dict[int, list[RunFigures]] = {r: [] for r in rates}
    with tempfile.TemporaryDirectory(prefix="gatestream-latency-") as tmp:
        for i in range(runs):
            for rate in rates:
                try:
                    f = run_once(settings, url, rate, seconds, warmup_s, Path(tmp))
                except BenchError as exc:
                    print(f"gatestream bench latency: {exc}", file=sys.stderr)
                    return 1
                results[rate].append(f)
                t, p = f.shares["total"], f.shares["producer"]
                print(
                    f"  run {i + 1}, {rate:,}/s (achieved {f.achieved_rate:,.0f}/s): total p50 {t['p50']:.1f} "
                    f"p99 {t['p99']:.1f} p99.9 {t['p99.9']:.1f} max {t['max']:.1f} ms; producer p99 {p['p99']:.1f} ms; "
                    f"{f.commits:,} commits ({f.events / max(f.commits, 1):,.1f} rows each)"
                )
                if f.achieved_rate < 0.95 * rate:
                    print(
                        f"  (the publisher kept {f.achieved_rate:,.0f} of {rate:,} events/s: this machine is too "
                        "busy for this rate, and the figures include the publisher's own backlog)"
                    )
    medians = {
        r: {s: {p: statistics.median(f.shares[s][p] for f in fs) for p, _ in PERCENTILES} for s in SHARES}
        for r, fs in results.items()
    }
    rows = [[f"{r:,}/s", s, *(medians[r][s][p] for p, _ in PERCENTILES)] for r in rates for s in SHARES]
    print(f"\nmedians of {runs} runs, milliseconds:")
    print(table(["rate", "share", *(p for p, _ in PERCENTILES)], rows))
    verdicts = {}
    for r in rates:
        goal = GOALS_MS.get(r)
        if goal is not None:
            p99 = medians[r]["total"]["p99"]
            verdicts[str(r)] = {"goal_p99_ms": goal, "met": p99 < goal}
            print(f"goal at {r:,}/s: total p99 < {goal:g} ms: {'met' if p99 < goal else 'NOT met'} ({p99:.1f} ms)")
    if json_path is not None:
        figures = {
            "seconds": seconds, "warmup_s": warmup_s, "runs": runs, "defaults": defaults,
            "clock_offset_ms": round(offset, 2), "goals": verdicts,
            "rates": {
                str(r): {
                    "median_ms": medians[r],
                    "runs": [{"events": f.events, "achieved_rate": round(f.achieved_rate, 1), "commits": f.commits,
                              "ms": f.shares}
                             for f in results[r]],
                } for r in rates
            },
        }  # fmt: skip
        write_json(json_path, "latency", figures)
    return 0
