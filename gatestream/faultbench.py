"""``gatestream bench faults``: the real pipeline under faults, every event counted.

Each scenario runs the load generator (through its spool), several ``gatestream ingest``
processes, the broker and TimescaleDB, injects its faults while events flow, waits for
the drain, then counts end to end: the distinct event_ids on the topics (what was
published) against the rows (what landed). Lost = published but not stored;
duplicated = stored twice; both must be 0, and the producer's spool must be empty.
Peak RSS is each consumer process's high-water mark (VmHWM).

Scenarios: consumer kill -9 at random times; kill -9 at exact points (fault hooks:
between COPY and COMMIT, right after COMMIT, inside on_assign and on_revoke);
PostgreSQL crashed (immediate stop) and restarted; the database unreachable for a while;
connections killed mid-transaction (pg_terminate_backend); the broker killed -9 and
restarted from its log (a broker of the bench's own); the producer killed -9 with events
in its spool, then restarted; a rebalance storm (members joining and leaving).
The PostgreSQL scenarios need the local stack's server (ops/stack), which they stop and
start; elsewhere they are reported as skipped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

from gatestream.bench import bench_database
from gatestream.schemas import EventType
from gatestream.settings import IngestSettings, ProducerSettings
from gatestream.topics import delete_topics, ensure_topics

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "ops" / "kafka" / "broker"


@dataclass
class Outcome:
    scenario: str
    faults: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.note.startswith("FAILED")


@dataclass
class Run:
    """One scenario's processes, topics and database."""

    settings: IngestSettings
    bootstrap: str
    prefix: str
    url: str
    workdir: Path
    consumers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    producer: subprocess.Popen[bytes] | None = None
    broker: PrivateBroker | None = None  # the broker-kill-9 scenario's own broker
    peak_kb: int = 0
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, **over: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
        env.update({
            "GATESTREAM_BOOTSTRAP_SERVERS": self.bootstrap, "GATESTREAM_DATABASE_URL": self.url,
            "GATESTREAM_TOPIC_PREFIX": self.prefix, "GATESTREAM_DLQ_TOPIC": f"{self.prefix}dead-letter",
            "GATESTREAM_GROUP_ID": f"{self.prefix}ingest", "GATESTREAM_LOG_FORMAT": "json",
            "GATESTREAM_SESSION_TIMEOUT_MS": "6000", "GATESTREAM_HEARTBEAT_INTERVAL_MS": "2000",
            "GATESTREAM_BATCH_MAX_ROWS": "2000", "GATESTREAM_BATCH_MAX_MS": "200",
        })  # fmt: skip
        if self.settings.schema_registry_url:
            env["GATESTREAM_SCHEMA_REGISTRY_URL"] = self.settings.schema_registry_url
        env.update(self.env_extra)
        env.update(over)
        return env

    def start_consumer(self, **over: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"consumer-{len(self.consumers)}.log").open("ab")
        p = subprocess.Popen(
            [sys.executable, "-m", "gatestream", "ingest"], env=self.env(**over), stdout=subprocess.DEVNULL, stderr=log
        )
        self.consumers.append(p)
        return p

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.consumers if p.poll() is None]

    def note_rss(self, p: subprocess.Popen[bytes]) -> None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except OSError:
            pass

    def kill(self, p: subprocess.Popen[bytes]) -> None:
        self.note_rss(p)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop_all(self) -> None:
        """SIGTERM every member still running (they leave the group), and wait for each."""
        for p in self.alive():
            self.note_rss(p)
            p.send_signal(signal.SIGTERM)
        for p in self.consumers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill(p)

    def start_producer(self, count: int, rate: int, seed: int) -> subprocess.Popen[bytes]:
        self.producer = subprocess.Popen(
            [sys.executable, "-m", "gatestream", "produce", "--count", str(count), "--rate", str(rate),
             "--seed", str(seed), "--orgs", "5", "--devices", "30", "--gateways", "2",
             "--spool-path", str(self.workdir / "spool.sqlite3"), "--flush-timeout", "120"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=(self.workdir / "producer.log").open("ab"),
        )  # fmt: skip
        return self.producer


def _published(bootstrap: str, topics: list[str]) -> set[str]:
    """The distinct event_ids on the topics (their Avro bodies start with the event_id)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"faults-count-{uuid.uuid4().hex[:6]}"})
    try:
        md = c.list_topics(timeout=10)
        parts, ends = [], {}
        for t in topics:
            for p in md.topics[t].partitions:
                _, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if high > 0:
                    parts.append(TopicPartition(t, p, 0))
                    ends[(t, p)] = high
        c.assign(parts)
        ids: set[str] = set()
        left = dict(ends)
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is not None:
                    continue
                value = m.value() or b""
                # Confluent framing, then the event_id string: a zigzag length byte (36 -> 72) and 36 chars
                ids.add(value[6:42].decode(errors="replace"))
                tp = (m.topic() or "", m.partition() or 0)
                if (m.offset() or 0) + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
        return ids
    finally:
        c.close()


def _stored(url: str) -> tuple[int, set[str]]:
    with psycopg.connect(url) as conn:
        rows, ids = 0, set[str]()
        for et in EventType:
            got = conn.execute(
                psycopg.sql.SQL("SELECT event_id::text FROM monitoring.{}").format(psycopg.sql.Identifier(et.value))
            ).fetchall()
            rows += len(got)
            ids.update(r[0] for r in got)
    return rows, ids


class PrivateBroker:
    """A Kafka node of the bench's own, to kill -9 and restart (ops/kafka/broker)."""

    def __init__(self, state: Path) -> None:
        import socket

        self.state = state
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.port, self.cport = ports

    def run(self, *args: str) -> None:
        subprocess.run([str(BROKER), *args], check=True, capture_output=True, timeout=180)

    def start(self) -> None:
        self.run("start", str(self.state), str(self.port), str(self.cport))

    def kill(self) -> None:
        self.run("kill", str(self.state))


def _pg_ctl(action: str, *extra: str) -> bool:
    """Stop/start the local stack's PostgreSQL (the only one the bench may crash)."""
    stack = Path(os.environ.get("GATESTREAM_STACK_DIR", ROOT / ".stack"))
    data = (stack / "pg").resolve() / "data"
    if not (data / "PG_VERSION").exists() or shutil.which("runuser") is None:
        return False
    pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl"
    cmd = ["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(data), *extra, action]
    if action == "start":
        cmd[5:5] = ["-l", str(data.parent / "postgres.log"), "-w"]
    return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0


Injector = Callable[[Run, random.Random, float], int]  # -> faults injected


def _kill_consumers(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    while time.monotonic() < until:
        time.sleep(rnd.uniform(0.5, 2.5))
        alive = run.alive()
        if alive:
            run.kill(rnd.choice(alive))
            n += 1
        run.start_consumer()
    return n


def _hooks(run: Run, rnd: random.Random, until: float) -> int:
    """Consumers kill themselves at the hook points; a supervisor restarts them."""
    n = 0
    while time.monotonic() < until:
        time.sleep(0.3)
        n = sum(1 for p in run.consumers if p.poll() is not None)  # every one that died has been a fault
        while len(run.alive()) < 3:
            run.start_consumer()
    return n


def _pg_crash(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    while time.monotonic() < until - 3:
        time.sleep(rnd.uniform(1.5, 3.5))
        if not _pg_ctl("stop", "-m", "immediate"):
            return -1
        _pg_ctl("start")
        n += 1
    return n


def _db_away(run: Run, rnd: random.Random, until: float) -> int:
    time.sleep(1.5)
    if not _pg_ctl("stop", "-m", "fast"):
        return -1
    time.sleep(max(1.0, min(30.0, until - time.monotonic())))
    _pg_ctl("start")
    return 1


def _terminate(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    dbname = psycopg.conninfo.conninfo_to_dict(run.url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(run.url, dbname="postgres")
    while time.monotonic() < until:
        time.sleep(rnd.uniform(0.3, 1.2))
        with psycopg.connect(admin, autocommit=True) as conn:
            n += len(conn.execute(
                # every client connection of the bench database: mid-COPY, mid-transaction or idle
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'",
                (dbname,)).fetchall())  # fmt: skip
    return n


def _broker_kill(run: Run, rnd: random.Random, until: float) -> int:
    assert run.broker is not None
    n = 0
    while time.monotonic() < until:
        time.sleep(rnd.uniform(2.0, 4.0))
        run.broker.kill()
        time.sleep(rnd.uniform(0.5, 2.0))
        run.broker.start()
        n += 1
    return n


def _producer_kill(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    seed = 1000
    while time.monotonic() < until:
        time.sleep(rnd.uniform(1.0, 2.5))
        if run.producer is not None and run.producer.poll() is None:
            run.producer.send_signal(signal.SIGKILL)
            run.producer.wait(10)
            n += 1
        seed += 1
        run.start_producer(count=3000, rate=1500, seed=seed)  # resends its spool first
    return n


def _storm(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    while time.monotonic() < until:
        time.sleep(rnd.uniform(0.5, 1.5))
        run.start_consumer()
        alive = run.alive()
        if len(alive) > 2:
            victim = rnd.choice(alive)
            run.note_rss(victim)
            victim.send_signal(signal.SIGTERM)
        n += 1
    return n


def _churn(run: Run, rnd: random.Random, until: float) -> int:
    """Churn: once the members write, for ``until - now`` seconds, every ~3 s one member is
    killed -9 and a replacement started, under the group protocol the scenario sets
    (``churn-classic``, ``churn-consumer``; ``churn-static``: classic with a stable
    group.instance.id per member slot, reused by its replacement).
    Prints rows/s during the churn, the longest stretch without a new row, and rows/s in
    the 10 s after it with the members left alone; the table's row says whether the
    totals are exact."""
    static = run.env_extra.get("GATESTREAM_GROUP_PROTOCOL") == "classic" and "CHURN_STATIC" in run.env_extra
    label = "classic, static members" if static else run.env_extra.get("GATESTREAM_GROUP_PROTOCOL", "auto")
    slots: dict[int, subprocess.Popen[bytes]] = {}
    if static:  # the three started without an id leave; each slot's member gets its own id for good
        for p in run.alive():
            run.note_rss(p)
            p.send_signal(signal.SIGTERM)
        for i in range(3):
            slots[i] = run.start_consumer(GATESTREAM_GROUP_INSTANCE_ID=f"{run.prefix}member-{i}")

    count = psycopg.sql.SQL(" + ").join(
        psycopg.sql.SQL("(SELECT count(*) FROM monitoring.{})").format(psycopg.sql.Identifier(et.value))
        for et in EventType
    )

    def rows() -> int:
        with psycopg.connect(run.url, autocommit=True) as conn:
            row = conn.execute(psycopg.sql.SQL("SELECT {}").format(count)).fetchone()
        return int(row[0]) if row else 0

    def watch(seconds: float, kill_every: float | None) -> tuple[int, float, int]:
        """Rows gained and the longest stall over ``seconds``, killing and replacing a member
        every ``kill_every`` seconds (None: leave them alone); -> (rows, stall s, kills)."""
        start = time.monotonic()
        first = last = rows()
        last_growth, stall, kills = start, 0.0, 0
        next_kill = start + (kill_every or 0)
        while (now := time.monotonic()) < start + seconds:
            if kill_every is not None and now >= next_kill:
                if static:
                    slot = rnd.randrange(3)
                    run.kill(slots[slot])
                    slots[slot] = run.start_consumer(GATESTREAM_GROUP_INSTANCE_ID=f"{run.prefix}member-{slot}")
                else:
                    alive = run.alive()
                    if alive:
                        run.kill(rnd.choice(alive))
                    run.start_consumer()
                kills += 1
                next_kill = now + rnd.uniform(0.8, 1.2) * kill_every
            time.sleep(0.5)
            current = rows()
            if current > last:
                last, last_growth = current, time.monotonic()
            stall = max(stall, time.monotonic() - last_growth)
        return last - first, stall, kills

    during = max(1.0, until - time.monotonic())
    warm = time.monotonic() + 90
    while rows() == 0 and time.monotonic() < warm:  # the churn starts once the members write
        time.sleep(0.5)
    gained, stall, kills = watch(during, 3.0)
    after, _, _ = watch(10.0, None)
    print(
        f"  churn ({label}): {kills} kills in {during:.0f} s; {gained / during:.0f} rows/s during the churn "
        f"(longest stall {stall:.1f} s), {after / 10:.0f} rows/s in the 10 s after",
        flush=True,
    )
    return kills


SCENARIOS: dict[str, tuple[Injector, dict[str, str]]] = {
    "consumer-kill-9": (_kill_consumers, {}),
    "fault-hooks": (
        _hooks,
        {"GATESTREAM_FAULT_HOOKS": "before-commit:0.08,after-commit:0.08,on-assign:0.2,on-revoke:0.2"},
    ),
    "postgres-crash": (_pg_crash, {}),
    "database-away": (_db_away, {}),
    "connection-killed": (_terminate, {}),
    "broker-kill-9": (_broker_kill, {}),  # against a broker of its own (run_scenario starts it)
    "producer-kill-9": (_producer_kill, {}),
    "rebalance-storm": (_storm, {}),
    "churn-classic": (_churn, {"GATESTREAM_GROUP_PROTOCOL": "classic"}),
    "churn-consumer": (_churn, {"GATESTREAM_GROUP_PROTOCOL": "consumer"}),
    "churn-static": (_churn, {"GATESTREAM_GROUP_PROTOCOL": "classic", "CHURN_STATIC": "1"}),
}


def run_scenario(name: str, settings: IngestSettings, *, events: int, rate: int, seconds: float, seed: int) -> Outcome:
    injector, env_extra = SCENARIOS[name]
    rnd = random.Random(seed)
    out = Outcome(name)
    work = Path(tempfile.mkdtemp(prefix=f"gatestream-faults-{name}-"))
    broker: PrivateBroker | None = None
    bootstrap = settings.bootstrap_servers
    if name == "broker-kill-9":
        broker = PrivateBroker(work / "kafka")
        broker.start()
        bootstrap = f"127.0.0.1:{broker.port}"
    prefix = f"faults.{uuid.uuid4().hex[:6]}."
    db = bench_database(settings.database_url, "faults")
    run = Run(settings, bootstrap, prefix, db, work, broker=broker, env_extra=dict(env_extra))
    ps = ProducerSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, kafka_extra=settings.kafka_extra)
    topics = [ps.topic_for(et) for et in EventType]
    ensure_topics(ps, [*topics, f"{prefix}dead-letter"], partitions=6)
    started = time.monotonic()
    try:
        for _ in range(3):
            run.start_consumer()
        run.start_producer(count=events, rate=rate, seed=seed)
        out.faults = injector(run, rnd, time.monotonic() + seconds)
        if out.faults < 0:
            out.note = "skipped: needs the local stack's PostgreSQL (ops/stack)"
            out.faults = 0
            return out
        # the last producer drains its spool; every consumer still running drains the topics
        if run.producer is not None:
            run.producer.wait(180)
        if name == "producer-kill-9":
            flush = run.start_producer(count=0, rate=0, seed=0)
            flush.wait(120)
        if "GATESTREAM_FAULT_HOOKS" in run.env_extra:
            # the faults are over: members still armed with the hooks leave, clean ones drain
            run.env_extra.pop("GATESTREAM_FAULT_HOOKS")
            run.stop_all()
        while len(run.alive()) < 2:
            run.start_consumer()
        published = _published(bootstrap, topics)
        out.events = len(published)
        deadline = time.monotonic() + 180
        rows, stored = _stored(run.url)
        while (published - stored) and time.monotonic() < deadline:
            time.sleep(1)
            rows, stored = _stored(run.url)
        out.lost = len(published - stored)
        out.duplicated = rows - len(stored)
        if stored - published:
            out.note = f"FAILED: {len(stored - published)} rows that were never published"
        spool = work / "spool.sqlite3"
        if spool.exists():
            from gatestream.producers.spool import Spool

            if (depth := Spool(spool).depth) != 0:
                out.note = f"FAILED: {depth} events left in the producer's spool"
        return out
    finally:
        run.stop_all()
        if run.producer is not None and run.producer.poll() is None:
            run.producer.kill()
        out.seconds = round(time.monotonic() - started, 1)
        out.peak_rss_mb = round(run.peak_kb / 1024, 1)
        try:
            delete_topics(ps, [*topics, f"{prefix}dead-letter"])
        except Exception:  # noqa: BLE001 - clean-up only
            pass
        if broker is not None:
            broker.kill()
        if out.ok:
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep the processes' logs for a look
            out.note = (out.note + f" (logs: {work})").strip()


def bench_faults(
    settings: IngestSettings, *, scenarios: list[str], events: int, rate: int, seconds: float, rounds: int, seed: int
) -> int:
    print(
        f"bench faults: {', '.join(scenarios)}; {events} events per round at {rate}/s, faults for {seconds:.0f} s, "
        f"{rounds} round(s)"
    )
    print(f"{'scenario':<20}{'faults':>8}{'events':>9}{'lost':>7}{'dup':>6}{'seconds':>9}{'peak RSS MB':>13}  note")
    total_faults, failed = 0, False
    results = []
    for r in range(rounds):
        for name in scenarios:
            o = run_scenario(name, settings, events=events, rate=rate, seconds=seconds, seed=seed + r)
            results.append(o)
            total_faults += o.faults
            failed |= not o.ok
            print(
                f"{o.scenario:<20}{o.faults:>8}{o.events:>9}{o.lost:>7}{o.duplicated:>6}{o.seconds:>9}"
                f"{o.peak_rss_mb:>13}  {o.note}",
                flush=True,
            )
    print(
        f"total: {total_faults} faults, {sum(o.events for o in results)} events, "
        f"{sum(o.lost for o in results)} lost, {sum(o.duplicated for o in results)} duplicated"
    )
    print(json.dumps({"faults": total_faults, "ok": not failed}))
    return 1 if failed else 0
