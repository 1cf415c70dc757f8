"""The fault bench's scenarios: one run's processes, and the faults each scenario injects.

A scenario is an injector (``Injector``: it gets the run, a seeded random generator and
the time the faults must stop, and returns how many faults it injected, or -1 when it
cannot run here) plus the environment its consumers get; ``SCENARIOS`` lists them by name.
A new scenario is one function here and one entry in ``SCENARIOS``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.accounting import batches_not_in, fenced_batches, stored_offsets
from bench.brokers import PrivateBroker
from bench.churn import churn
from bench.cluster import PrivateCluster
from bench.leader_kill import leader_kill
from bench.postgres import PrivatePostgres
from gatestream.database import connect_once
from gatestream.kafka import security_environ
from gatestream.settings import IngestSettings


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
    cluster: PrivateCluster | None = None  # the leader-kill-9 scenario's own three-node cluster
    postgres: PrivatePostgres | None = None  # the server the postgres-crash/database-away scenarios stop
    standby: PrivatePostgres | None = None  # postgres-failover's streaming standby of it
    peak_kb: int = 0
    env_extra: dict[str, str] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)  # a scenario's own figures, for the report

    @property
    def group(self) -> str:
        return f"{self.prefix}ingest"

    def consumer_logs(self) -> list[Path]:
        """Every ingest process's log (JSON lines), the killed ones' included."""
        return sorted(self.workdir.glob("consumer-*.log"))

    def env(self, **over: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
        env.update({
            "GATESTREAM_BOOTSTRAP_SERVERS": self.bootstrap, "GATESTREAM_DATABASE_URL": self.url,
            "GATESTREAM_TOPIC_PREFIX": self.prefix, "GATESTREAM_DLQ_TOPIC": f"{self.prefix}dead-letter",
            "GATESTREAM_GROUP_ID": self.group, "GATESTREAM_LOG_FORMAT": "json",
            "GATESTREAM_SESSION_TIMEOUT_MS": "6000", "GATESTREAM_HEARTBEAT_INTERVAL_MS": "2000",
            "GATESTREAM_BATCH_MAX_ROWS": "2000", "GATESTREAM_BATCH_MAX_MS": "200",
        })  # fmt: skip
        if self.settings.schema_registry_url:
            env["GATESTREAM_SCHEMA_REGISTRY_URL"] = self.settings.schema_registry_url
        if self.bootstrap == self.settings.bootstrap_servers:  # the stack's broker: its user (a private one is plain)
            env.update(security_environ(self.settings))
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
    assert run.postgres is not None
    n = 0
    while time.monotonic() < until - 3:
        time.sleep(rnd.uniform(1.5, 3.5))
        run.postgres.crash()
        run.postgres.start()
        n += 1
    return n


def _db_away(run: Run, rnd: random.Random, until: float) -> int:
    assert run.postgres is not None
    time.sleep(1.5)
    run.postgres.stop()
    time.sleep(max(1.0, min(30.0, until - time.monotonic())))
    run.postgres.start()
    return 1


HOLD_S = 1.5  # postgres-failover: how long the standby receives nothing before the primary dies


def _failover(run: Run, rnd: random.Random, until: float, *, idle: bool = False) -> int:
    """Ingest flows into the primary; its WAL senders stop (the standby falls behind, as over a
    slow link) for HOLD_S; the primary is killed -9 and the standby promoted. The members reach
    it through their multi-host URL, with no restart. Measures the batches the members had
    committed that the standby never received, and the time from the kill to the first batch
    committed on the new primary. ``idle``: the link stays held until the stream has ended and
    the members have written everything (postgres-failover-idle): no batch is in flight when
    the primary dies and no event comes after, so only the members' health checks can tell
    them to re-read the tail the standby lost."""
    primary, standby = run.postgres, run.standby
    assert primary is not None and standby is not None
    time.sleep(rnd.uniform(1.0, 2.0))
    if primary.hold_replication() == 0:
        return -1
    time.sleep(HOLD_S)
    if idle:
        _until_written(run, primary.url)
    members = list(run.consumers)  # the logs that hold the commits made on the primary
    killed = time.monotonic()
    primary.kill9()
    dbname = psycopg.conninfo.conninfo_to_dict(run.url)["dbname"]
    on_standby = psycopg.conninfo.make_conninfo(standby.url, dbname=dbname)
    with connect_once(on_standby) as conn:  # replay all it received: that is what promotion keeps
        while conn.execute("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()").fetchone() == (True,):
            time.sleep(0.05)
    kept = stored_offsets(on_standby, run.group)
    standby.promote()
    promoted = time.monotonic()
    while time.monotonic() < killed + 120 and stored_offsets(on_standby, run.group) == kept:
        time.sleep(0.05)
    first_batch = time.monotonic()
    batches, events = batches_not_in([run.workdir / f"consumer-{i}.log" for i in range(len(members))], kept)
    run.measured.update({
        "missed_batches": batches, "missed_events": events, "promote_s": round(promoted - killed, 2),
        "kill_to_first_batch_s": round(first_batch - killed, 2),
    })  # fmt: skip
    # Members that re-read every partition from the promoted standby's offsets are never fenced;
    # one that kept its old expected offsets would be (or, on a partition receiving nothing more,
    # would never re-read the tail the standby lost).
    time.sleep(max(0.0, until - time.monotonic()))
    run.measured["fenced_batches"] = fenced_batches(run.consumer_logs())
    return 1


def _until_written(run: Run, primary_url: str, quiet_s: float = 3.0) -> None:
    """Wait for the producer to end and the members' stored offsets on the primary to stay put
    for ``quiet_s`` (everything published is written, nothing is in flight)."""
    if run.producer is not None:
        run.producer.wait(180)
    dbname = psycopg.conninfo.conninfo_to_dict(run.url)["dbname"]
    on_primary = psycopg.conninfo.make_conninfo(primary_url, dbname=dbname)
    last, since = stored_offsets(on_primary, run.group), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        now = stored_offsets(on_primary, run.group)
        if now != last:
            last, since = now, time.monotonic()


def _failover_idle(run: Run, rnd: random.Random, until: float) -> int:
    return _failover(run, rnd, until, idle=True)


def _terminate(run: Run, rnd: random.Random, until: float) -> int:
    n = 0
    dbname = psycopg.conninfo.conninfo_to_dict(run.url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(run.url, dbname="postgres")
    while time.monotonic() < until:
        time.sleep(rnd.uniform(0.3, 1.2))
        with connect_once(admin) as conn:
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


SCENARIOS: dict[str, tuple[Injector, dict[str, str]]] = {
    "consumer-kill-9": (_kill_consumers, {}),
    "fault-hooks": (
        _hooks,
        {"GATESTREAM_FAULT_HOOKS": "before-commit:0.08,after-commit:0.08,on-assign:0.2,on-revoke:0.2"},
    ),
    "postgres-crash": (_pg_crash, {}),  # against a server of its own (run_scenario starts it)
    "database-away": (_db_away, {}),  # likewise
    # against a primary and a streaming standby of its own; members log each commit (debug)
    "postgres-failover": (_failover, {"GATESTREAM_LOG_LEVEL": "debug"}),
    "postgres-failover-idle": (_failover_idle, {"GATESTREAM_LOG_LEVEL": "debug"}),
    "connection-killed": (_terminate, {}),
    "broker-kill-9": (_broker_kill, {}),  # against a broker of its own (run_scenario starts it)
    # a partition's leader killed -9 and restarted, on a three-node cluster of its own (bench/leader_kill.py)
    "leader-kill-9": (leader_kill, {}),
    "producer-kill-9": (_producer_kill, {}),
    "rebalance-storm": (_storm, {}),
    # kill -9 and a replacement every ~3 s, per group protocol (bench/churn.py)
    "churn-classic": (churn, {"GATESTREAM_GROUP_PROTOCOL": "classic"}),
    "churn-consumer": (churn, {"GATESTREAM_GROUP_PROTOCOL": "consumer"}),
    "churn-static": (churn, {"GATESTREAM_GROUP_PROTOCOL": "classic", "CHURN_STATIC": "1"}),
}
