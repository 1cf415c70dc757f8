"""The real pipeline under faults, every topic message accounted for once.

Run from a checkout (it drives the checkout's ``ops/kafka/broker`` and the PostgreSQL server
binaries the local stack installed, so it is not part of the wheel)::

    python -m bench.faults --short            # the CI form (tests/integration/test_faults.py)
    python -m bench.faults --scenarios consumer-kill-9,broker-kill-9 --rounds 3

Each scenario runs the load generator (through its spool), several ``gatestream ingest``
processes, the broker and TimescaleDB, injects its faults while events flow
(``bench.scenarios``), waits for the drain, then accounts for every message on the topics
(``bench.accounting``): the stored offsets equal the end offsets, the rows equal the
distinct events published, and ingest's ``duplicates`` counter equals the copies the
producers resent (0 but in producer-kill-9). Peak RSS is each consumer process's
high-water mark (VmHWM).

Scenarios: consumer kill -9 at random times; kill -9 at exact points (fault hooks:
between COPY and COMMIT, right after COMMIT, inside on_assign and on_revoke);
PostgreSQL crashed (immediate stop) and restarted, and the database unreachable for a while
(both against a server of the scenario's own, ``bench.postgres``); the primary killed -9 and
its asynchronous streaming standby promoted (postgres-failover: the members follow through a
multi-host URL; it reports the batches the standby never received and the time from the kill
to the first batch on the new primary);
connections killed mid-transaction (pg_terminate_backend); the broker killed -9 and
restarted from its log (a broker of the bench's own); the leader of the busiest partition killed
-9 and restarted, repeatedly, on a three-node cluster of the bench's own (leader-kill-9: RF 3,
min.insync.replicas 2; it reports each kill's time to recover, see bench.leader_kill); the
producer killed -9 with events in its spool, then restarted; a rebalance storm (members joining and leaving).
No scenario stops a service of the local stack: tests and people may be using it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.accounting import offsets_off, read_published, skipped_duplicates, stored_rows, wait_for_first_rows
from bench.brokers import PLAIN, PrivateBroker
from bench.cluster import PrivateCluster
from bench.leader_kill import acks_with_one_node
from bench.postgres import PrivatePostgres, failover_url, pg_bindir
from bench.scenarios import SCENARIOS, Run
from gatestream.bench import bench_database, drop_bench_database
from gatestream.database import connect_once
from gatestream.kafka import security_config
from gatestream.schemas import EventType
from gatestream.settings import IngestSettings, ProducerSettings
from gatestream.topics import delete_topics, ensure_topics

SHORT = ["consumer-kill-9", "fault-hooks", "connection-killed", "postgres-crash", "broker-kill-9", "producer-kill-9",
         "rebalance-storm"]  # fmt: skip
# Its faults fire only when a member commits or is assigned partitions: events must still flow
# for a while once the members write, or a short round drains its backlog in two big batches
# before the window opens and injects nothing (CI saw that on a loaded machine). It publishes
# over at least this many seconds.
# postgres-failover: events must still flow when the primary dies, after the members' start.
# leader-kill-9: events must still flow through its kills (each waits for the node's restart).
PACED = {"fault-hooks": 12.0, "postgres-failover": 12.0, "postgres-failover-idle": 12.0, "leader-kill-9": 40.0}
WARM_UP_EVENTS = 60  # a paced scenario's first events, before its stream (see run_scenario)
MEMBERS = {"leader-kill-9": 2}  # ingest processes (default 3)
# they stop the server: one of their own
OWN_POSTGRES = {"postgres-crash", "database-away", "postgres-failover", "postgres-failover-idle"}
# their own server gets a streaming standby; members get both in their URL
REPLICATED = {"postgres-failover", "postgres-failover-idle"}
FROM_THE_START = {"producer-kill-9", "broker-kill-9"}  # their faults need the producer still publishing
DRAIN_S = 180  # for the last rows to land
OFFSETS_S = 30  # once every event is stored, for the offsets of trailing resent copies


@dataclass
class Outcome:
    scenario: str
    faults: int = 0
    events: int = 0  # distinct events published
    messages: int = 0  # messages on the topics (events + resent copies)
    rows: int = 0
    lost: int = 0  # published, never stored
    offsets_off: int = 0  # partitions whose stored offset is not the topic's end offset
    resent: int = 0  # copies the producers resent: messages - events
    duplicates: int = 0  # ingest's own counter: events it found already stored
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    note: str = ""
    measured: dict[str, float] = field(default_factory=dict)  # the scenario's own figures

    @property
    def ok(self) -> bool:
        """Every message accounted for once: each event stored, each offset at the end, and
        no event read again beyond the resent copies."""
        accounted = self.lost == 0 and self.rows == self.events and self.offsets_off == 0
        return accounted and self.duplicates == self.resent and not self.note.startswith("FAILED")


def _account(out: Outcome, run: Run, bootstrap: str, topics: list[str]) -> None:
    """Wait for the drain, stop the members, then count (see bench.accounting)."""
    # the stack's broker as the settings' user; the scenario's own broker is plain
    security = security_config(run.settings) if bootstrap == run.settings.bootstrap_servers else {}
    published = read_published({"bootstrap.servers": bootstrap, **security}, topics)
    out.events, out.messages = len(published.ids), published.messages
    out.resent = out.messages - out.events
    deadline = time.monotonic() + DRAIN_S
    while True:
        rows, stored = stored_rows(run.url)
        off = offsets_off(run.url, run.group, published.ends)
        missing = published.ids - stored
        now = time.monotonic()
        if (not missing and off == 0) or now > deadline:
            break
        if not missing:
            deadline = min(deadline, now + OFFSETS_S)
        time.sleep(1)
    run.stop_all()  # their logs are complete now
    out.rows, out.lost, out.offsets_off = rows, len(missing), off
    out.duplicates = skipped_duplicates(run.consumer_logs())
    if stored - published.ids:
        out.note = f"FAILED: {len(stored - published.ids)} rows that were never published"


def _own_postgres(url: str) -> PrivatePostgres:
    """A server of the scenario's own, from the binaries of the major version ``url`` runs."""
    with connect_once(url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
    bindir = pg_bindir(str(row[0]) if row else None)
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries found (pg_config --bindir)")
    server = PrivatePostgres(bindir)
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired):
        server.remove(keep=True)
        raise
    return server


def run_scenario(name: str, settings: IngestSettings, *, events: int, rate: int, seconds: float, seed: int) -> Outcome:
    injector, env_extra = SCENARIOS[name]
    rnd = random.Random(seed)
    out = Outcome(name)
    work = Path(tempfile.mkdtemp(prefix=f"gatestream-faults-{name}-"))
    broker: PrivateBroker | None = None
    bootstrap = settings.bootstrap_servers
    if name == "broker-kill-9":
        broker = PrivateBroker(work / "kafka")
        try:
            broker.start()
        except RuntimeError as exc:  # the scenario cannot run: say so, and leave no broker behind
            broker.kill()
            out.note = f"FAILED: its own broker did not start ({exc}".splitlines()[0] + f"; logs: {work})"
            return out
        bootstrap = broker.bootstrap
    cluster: PrivateCluster | None = None
    if name == "leader-kill-9":
        cluster = PrivateCluster(work / "kafka")
        try:
            cluster.start()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            cluster.kill_all()
            out.note = f"FAILED: its own cluster did not start ({exc}".splitlines()[0] + f"; logs: {work})"
            return out
        bootstrap = cluster.bootstrap
    postgres: PrivatePostgres | None = None
    standby: PrivatePostgres | None = None
    database_url = settings.database_url
    if name in OWN_POSTGRES:
        try:
            postgres = _own_postgres(settings.database_url)
        except RuntimeError as exc:
            out.note = f"FAILED: its own PostgreSQL did not start ({exc}".splitlines()[0] + ")"
            return out
        database_url = postgres.url
        if name in REPLICATED:
            try:
                standby = postgres.standby()
                postgres.wait_streaming()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                postgres.remove(keep=True)
                out.note = f"FAILED: its standby did not start ({exc}".splitlines()[0] + f"; in {postgres.state})"
                return out
            database_url = failover_url(postgres, standby)
    prefix = f"faults.{uuid.uuid4().hex[:6]}."
    db = bench_database(database_url, "faults")
    run = Run(
        settings, bootstrap, prefix, db, work, broker=broker, cluster=cluster, postgres=postgres, standby=standby,
        env_extra=dict(env_extra),
    )  # fmt: skip
    if cluster is not None:
        run.measured["cluster_start_s"] = round(cluster.start_s, 1)
    # on its own broker or cluster (plain) no user; on the stack's, the settings' own
    security = PLAIN if bootstrap != settings.bootstrap_servers else {k: getattr(settings, k) for k in PLAIN}
    ps = ProducerSettings(
        bootstrap_servers=bootstrap, topic_prefix=prefix, kafka_extra=settings.kafka_extra, **security
    )
    topics = [ps.topic_for(et) for et in EventType]
    ensure_topics(ps, [*topics, f"{prefix}dead-letter"], partitions=6)
    started = time.monotonic()
    members = MEMBERS.get(name, 3)
    try:
        for _ in range(members):
            run.start_consumer()
        paced = PACED.get(name)
        producer_rate = rate if paced is None else min(rate, max(1, int(events / paced)))

        # Faults aimed at the members begin once they write (a member's start takes seconds on a
        # loaded machine: a window that closed before then would inject nothing); faults aimed at
        # the producer or the broker begin at once, while the producer still publishes.
        def keep_members() -> None:  # a member armed with fault hooks may die before the first batch
            while len(run.alive()) < members:
                run.start_consumer()

        if paced is not None:
            # A paced stream must still be flowing when the faults begin: a warm-up burst shows
            # the members write, and only then does the paced stream start (started at once, a
            # loaded machine's slow member start ate a 40 s stream before the first kill)
            warm = run.start_producer(count=WARM_UP_EVENTS, rate=0, seed=seed + 1_000_003)
            if not wait_for_first_rows(db, 120, keep_members):
                out.note = "FAILED: no batch committed within 120 s of the start"
                return out
            warm.wait(120)
        run.start_producer(count=events, rate=producer_rate, seed=seed)
        # and the faults begin once the paced stream's own events are being written (its
        # producer takes seconds to start on a loaded machine: a fault meant for a flowing
        # stream, postgres-failover's held replication, would otherwise miss it)
        if paced is not None and not wait_for_first_rows(db, 120, keep_members, beyond=WARM_UP_EVENTS):
            out.note = "FAILED: the paced stream wrote no row within 120 s of its start"
            return out
        if paced is None and name not in FROM_THE_START and not wait_for_first_rows(db, 120, keep_members):
            out.note = "FAILED: no batch committed within 120 s of the start"
            return out
        out.faults = injector(run, rnd, time.monotonic() + seconds)
        if cluster is not None:
            run.measured.update({f"node{n}_rss_mb": mb for n, mb in cluster.rss_mb().items()})
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
        _account(out, run, bootstrap, topics)
        if cluster is not None:  # the clients rode out the kills: none was started again
            rc = run.producer.poll() if run.producer is not None else None
            run.measured.update({"members_started": len(run.consumers), "producer_rc": -1 if rc is None else rc})
            run.measured["acks_with_one_node"] = acks = acks_with_one_node(cluster, topics[0])
            if acks:
                out.note = f"FAILED: {acks} acks=all writes acknowledged with one node of three left"
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
        out.measured = dict(run.measured)
        try:
            if cluster is None:  # the scenario's own cluster goes with its folder (and may have lost its quorum)
                delete_topics(ps, [*topics, f"{prefix}dead-letter"])
        except Exception:  # noqa: BLE001 - clean-up only
            pass
        if broker is not None:
            broker.kill()
        if cluster is not None:
            cluster.kill_all()
        if standby is not None:
            standby.remove(keep=not out.ok)
        if postgres is not None:
            postgres.remove(keep=not out.ok)
        elif out.ok:  # a failed scenario's database stays for a look, as its logs do
            drop_bench_database(db)
        if out.ok:
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep the processes' logs for a look
            out.note = (out.note + f" (logs: {work})").strip()


COLUMNS = (("scenario", 20), ("faults", 7), ("events", 8), ("messages", 9), ("rows", 8), ("lost", 6),
           ("offsets_off", 12), ("resent", 7), ("duplicates", 11), ("seconds", 8), ("peak_rss_mb", 12))  # fmt: skip


def _line(values: list[object]) -> str:
    cells = [f"{v:>{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True)]
    cells[0] = f"{values[0]:<{COLUMNS[0][1]}}"
    return "".join(cells)


def bench_faults(
    settings: IngestSettings, *, scenarios: list[str], events: int, rate: int, seconds: float, rounds: int, seed: int
) -> int:
    """Run the scenarios; print a table, a total and, last, one JSON line. 1 if any scenario failed."""
    print(
        f"bench faults: {', '.join(scenarios)}; {events} events per round at {rate}/s, faults for {seconds:.0f} s, "
        f"{rounds} round(s)"
    )
    print(_line([name for name, _ in COLUMNS]) + "  note")
    results: list[Outcome] = []
    for r in range(rounds):
        for name in scenarios:
            o = run_scenario(name, settings, events=events, rate=rate, seconds=seconds, seed=seed + r)
            results.append(o)
            figures = "".join(f" {k}={v}" for k, v in o.measured.items())
            print(_line([getattr(o, col) for col, _ in COLUMNS]) + f"  {'' if o.ok else 'FAILED '}{o.note}{figures}",
                  flush=True)  # fmt: skip
    failed = [o for o in results if not o.ok]
    total = {col: sum(getattr(o, col) for o in results) for col, _ in COLUMNS[1:-2]}
    print("total: " + ", ".join(f"{v} {k}" for k, v in total.items()) + f"; {len(failed)} scenario run(s) failed")
    report = {**total, "ok": not failed, "scenarios": [{**asdict(o), "ok": o.ok} for o in results]}
    print(json.dumps(report))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description="The real pipeline under faults: runs the load generator, several ingest processes, the broker "
        "and TimescaleDB, injects faults while events flow, then accounts for every topic message: stored offsets "
        "= end offsets, rows = distinct events published, ingest's duplicates = copies the producers resent. "
        "Exits 1 when a scenario fails that. The postgres-crash and database-away scenarios crash and stop a "
        "PostgreSQL server of their own (made from the stack's binaries), postgres-failover kills one -9 and promotes "
        "its streaming standby, broker-kill-9 a broker of its own, leader-kill-9 a node of a three-node "
        "cluster of its own (ops/kafka/cluster): the "
        "local stack's services are never stopped. Run from the checkout; "
        'settings from GATESTREAM_* (eval "$(ops/stack env)").',
    )
    p.add_argument(
        "--short", action="store_true",
        help=f"the CI form (under 3 minutes): small rounds of {', '.join(SHORT)} (or of --scenarios)",
    )  # fmt: skip
    p.add_argument("--scenarios", help=f"comma-separated (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--events", type=int, default=20000, help="events per scenario round (default 20000)")
    p.add_argument("--rate", type=int, default=2000, help="events per second from the load generator (2000)")
    p.add_argument("--seconds", type=float, default=15, help="how long faults are injected per round (15)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of every scenario (default 1)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the fault timing")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",")] if args.scenarios else None
    if args.short:  # the CI sizes; its scenarios unless --scenarios names some
        scenarios, events, rate, seconds = scenarios or SHORT, 4000, 1000, 6.0
    else:
        scenarios, events, rate, seconds = scenarios or list(SCENARIOS), args.events, args.rate, args.seconds
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        print(f"bench faults: error: unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    return bench_faults(
        IngestSettings(), scenarios=scenarios, events=events, rate=rate, seconds=seconds, rounds=args.rounds,
        seed=args.seed,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
