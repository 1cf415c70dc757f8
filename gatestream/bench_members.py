"""``gatestream bench ingest --members 1,2,4``: the scale-out figure.

For each count N, N consumer processes in one new group read the same backlog (one topic
of 12 partitions) until every event is a row; the figure is the total events/s.

The members start together: each joins the group with its partitions paused (a spawned
process takes a second or more to import and join, and the first one in would otherwise
read the backlog alone until the others arrive, then hand partitions over mid-run). Once
every member holds partitions and all 12 are assigned, unchanged for a second, the
parent opens the gate, every member resumes its partitions, and the clock starts; it
stops at the last member's last commit. Consumer CPU per event: the members' own
(``resource.getrusage`` of each process) summed.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from gatestream.consumers.ingest import Ingestor
from gatestream.cpu import process_cpu_s
from gatestream.database import connect_once
from gatestream.schemas import EventType
from gatestream.settings import IngestSettings

MEMBER_PARTITIONS = 12
EVENT_TYPE = EventType.ACTIVE_WINDOWS
SETTLE_S = 1.0  # the assignment must hold this long before the gate opens


class GatedMember(Ingestor):
    """An ingest consumer that keeps its partitions paused until ``gate`` is set, and
    publishes how many partitions it holds in ``held[slot]``."""

    def __init__(self, settings: IngestSettings, routes: Any, *, gate: Any, held: Any, slot: int, **kw: Any) -> None:
        self._gate, self._held, self._slot = gate, held, slot
        self._resumed = False
        super().__init__(settings, routes, **kw)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        if not self._resumed:
            consumer.pause(partitions)
        self._held[self._slot] = len(self.parts.owned)

    def _forget(self, parts: list[tuple[str, int]], kind: str) -> None:
        super()._forget(parts, kind)
        self._held[self._slot] = len(self.parts.owned)

    def _done(self, got_messages: bool, *, idle: bool) -> bool:
        if not self._resumed and self._gate.is_set():
            self._consumer.resume(self._consumer.assignment())
            self._resumed = True
        return super()._done(got_messages, idle=idle)


def _member(settings: IngestSettings, topic: str, group: str, gate: Any, held: Any, slot: int, stop: Any,
            out: Any) -> None:  # fmt: skip
    """One consumer process of ``bench ingest --members`` (run in a child process)."""
    from gatestream.consumers.routes import build_routes

    with connect_once(settings.database_url, autocommit=False) as conn:
        routes = build_routes(conn, settings, {topic: EVENT_TYPE.value})
    cpu0 = process_cpu_s()
    member = GatedMember(settings, routes, gate=gate, held=held, slot=slot, group_id=group,
                         stop_when=lambda sm: stop.is_set())  # fmt: skip
    summary = member.run()
    out.put((summary.first_event_at, summary.last_commit_at, summary.inserted, process_cpu_s() - cpu0))


def _open_gate_when_assigned(gate: Any, held: Any, n: int, procs: list[Any], timeout_s: float = 180) -> float:
    """Wait until the ``n`` members hold all partitions between them, each some, for
    SETTLE_S; open the gate; return when (time.monotonic, comparable across processes)."""
    deadline = time.monotonic() + timeout_s
    since: float | None = None
    while True:
        counts = list(held[:n])
        now = time.monotonic()
        if sum(counts) == MEMBER_PARTITIONS and min(counts) > 0:
            since = since if since is not None else now
            if now - since >= SETTLE_S:
                gate.set()
                return time.monotonic()
        else:
            since = None
        if now > deadline or not all(p.is_alive() for p in procs):
            raise RuntimeError(f"bench ingest --members {n}: the members never held all partitions ({counts})")
        time.sleep(0.05)


def members_run(settings: IngestSettings, url: str, topic: str, n: int, events: int) -> tuple[float, float]:
    """``n`` consumer processes in one new group until every event is a row: total events/s, CPU µs per event."""
    with connect_once(url) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    ctx = multiprocessing.get_context("spawn")  # librdkafka's threads do not survive a fork
    stop, gate, out = ctx.Event(), ctx.Event(), ctx.Queue()
    held = ctx.Array("i", n)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    s = settings.model_copy(update={"stop_after_idle_s": None})
    procs = [ctx.Process(target=_member, args=(s, topic, group, gate, held, k, stop, out)) for k in range(n)]
    for p in procs:
        p.start()
    try:
        started = _open_gate_when_assigned(gate, held, n, procs)
        deadline = time.monotonic() + 600
        with connect_once(url) as conn:
            while conn.execute("SELECT count(*) FROM monitoring.active_windows").fetchone() != (events,):
                if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                    raise RuntimeError(f"bench ingest --members {n}: not every event landed")
                time.sleep(0.1)
    finally:
        stop.set()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    lasts = [g[1] for g in got if g[1] is not None]
    return events / (max(lasts) - started), sum(g[3] for g in got) / events * 1e6


def bench_members(
    settings: IngestSettings, *, events: int, runs: int, batch_rows: int, members: list[int], json_path: str | None
) -> int:
    from gatestream.bench import bench_data
    from gatestream.bench_output import write_json

    decoding = "native" if settings.native_decode == "auto" else "python"
    print(f"bench: {events} {EVENT_TYPE.value} events, batches of {batch_rows}, one topic of {MEMBER_PARTITIONS} "
          f"partitions, members {members} (started together), {runs} runs, decoding: {decoding}")  # fmt: skip
    rates: dict[int, list[float]] = {n: [] for n in members}
    cpus: dict[int, list[float]] = {n: [] for n in members}
    with bench_data(settings, events, batch_rows, MEMBER_PARTITIONS, with_rows=False) as d:
        for i in range(runs):
            for n in members:
                rate, cpu = members_run(d.settings, d.url, d.topic, n, events)
                rates[n].append(rate)
                cpus[n].append(cpu)
                print(f"  run {i + 1}: {n} member(s) {rate:>10,.0f} events/s in all   consumer CPU {cpu:.2f} µs/event")
    base = statistics.median(rates[members[0]])
    print(f"{'members':>8} {'events/s (median)':>18} {'vs ' + str(members[0]):>8} {'CPU µs/event':>13}")
    table = []
    for n in members:
        med = statistics.median(rates[n])
        table.append({"members": n, "events_per_s": med, "speedup": med / base,
                      "consumer_cpu_us_per_event": statistics.median(cpus[n]), "per_run": rates[n]})  # fmt: skip
        print(f"{n:>8} {med:>18,.0f} {med / base:>7.2f}x {statistics.median(cpus[n]):>13.2f}")
    write_json(json_path, "ingest --members", {"events": events, "batch_rows": batch_rows,
                           "partitions": MEMBER_PARTITIONS, "runs": runs, "members": table,
                           "decoding": decoding})  # fmt: skip
    return 0
