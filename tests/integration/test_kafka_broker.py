"""What only a real Apache Kafka broker makes meaningful: a broker crash and an outage, lag
against the broker's real high watermarks, offsets mirrored to Kafka's group for standard
tools, the start offset of a time-ranged replay, and the fence under both group protocols."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.accounting import read_published, skipped_duplicates
from gatestream.producers.loadgen import Fleet, generate
from gatestream.producers.spool import Spool
from gatestream.schemas import EventType, event_topics
from gatestream.topics import ensure_topics
from tests.conftest import BROKER_SCRIPT, Env, PrivateBroker, free_port, gatestream_cmd, run_gatestream
from tests.helpers import count_all, count_rows, http_get, publish, stored_offsets, wait_for
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration


def _end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Every partition's high watermark, asked of the broker by a client of the test's own."""
    c = Consumer({**kafka_conf(bootstrap), "group.id": "test-watermarks"})
    try:
        md = c.list_topics(timeout=10)
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
            for t in topics
            for p in md.topics[t].partitions
        }
    finally:
        c.close()


def _non_empty(ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Partitions that hold messages (an empty one has no stored offset: nothing was read)."""
    return {tp: o for tp, o in ends.items() if o > 0}


def _kafka_committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = AdminClient(kafka_conf(bootstrap))
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    return {(tp.topic, tp.partition): tp.offset for tp in fut.result(timeout=15).topic_partitions if tp.offset >= 0}


def _set_kafka_committed(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    admin = AdminClient(kafka_conf(bootstrap))
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])
    admin.alter_consumer_group_offsets([req])[group].result(timeout=15)


def _ingest_proc(env: Env, log: Path, *args: str, **over: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        gatestream_cmd("ingest", "--batch-rows", "300", "--batch-ms", "200", *args),
        env=env.environ(**over),
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _drain(env: Env, **over: Any) -> dict[str, Any]:
    """One ingest process until 2 s without new events; its summary."""
    done = run_gatestream(env.environ(**over), "ingest", "--stop-after-idle", "2", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


@pytest.mark.slow
def test_broker_kill_9_mid_stream_and_restart_from_its_log_gives_exactly_n_rows(
    env: Env, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    per_type = 1200
    total = per_type * len(EventType)
    over = {"bootstrap_servers": private_broker.bootstrap}
    ps = env.producer(tmp_path / "unused", **over)
    topics = list(event_topics(ps))
    ensure_topics(ps, [*topics, env.dlq_topic], partitions=4)
    spool = tmp_path / "spool.sqlite3"
    producer = subprocess.Popen(
        gatestream_cmd(
            "produce", "--count", str(total), "--rate", "1500", "--orgs", "3", "--devices", "20",
            "--gateways", "2", "--spool-path", str(spool), "--flush-timeout", "90",
        ),
        env=env.environ(**over), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    consumers = [_ingest_proc(env, tmp_path / f"c{i}.log", **over) for i in range(2)]
    try:
        assert wait_for(lambda: sum(count_all(env.database_url).values()) > total // 4, 60), "no progress"
        private_broker.kill()  # a crash: no controlled shutdown, in the middle of the stream
        private_broker.start()  # recovers from its on-disk log (a JVM start: seconds without a broker)
        out, err = producer.communicate(timeout=150)
        assert producer.returncode == 0, err.decode()[-3000:]
        assert json.loads(out.decode().strip().splitlines()[-1])["delivered"] == total
        assert wait_for(lambda: sum(count_all(env.database_url).values()) >= total, 120), count_all(env.database_url)
        # rows commit with their offsets: once every offset is stored, no batch is left to land (doubled or not)
        ends = _non_empty(_end_offsets(private_broker.bootstrap, topics))
        assert wait_for(lambda: stored_offsets(env.database_url, f"{env.prefix}ingest") == ends, 30), (
            "stored offsets must equal the broker's end offsets"
        )
        assert count_all(env.database_url) == {et: per_type for et in EventType}
        assert Spool(spool).depth == 0, "nothing may stay in the producer's spool"
        published = read_published(private_broker.bootstrap, topics)
        assert len(published.ids) == total, "every event on the topics"
    finally:
        if producer.poll() is None:
            producer.kill()
        for p in consumers:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in consumers]
    assert codes == [0, 0], "both consumers rode out the crash and exited cleanly"
    # every message once: a row, or a copy the producer resent that ingest counted as a duplicate
    assert skipped_duplicates(tmp_path / f"c{i}.log" for i in range(2)) == published.messages - total


@pytest.mark.slow
def test_broker_away_for_15_s_no_crash_loop_readyz_follows_and_ingest_resumes(
    env: Env, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    over = {"bootstrap_servers": private_broker.bootstrap}
    penv = env.on_broker(private_broker.bootstrap)
    publish(penv, tmp_path / "s1.sqlite3", list(generate(1000, Fleet(), list(EventType), seed=11)))
    port = free_port()
    log = tmp_path / "ingest.log"
    proc = _ingest_proc(env, log, "--metrics-port", str(port), **over)

    def readyz() -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{port}/readyz")

    try:
        assert wait_for(lambda: sum(count_all(env.database_url).values()) == 1000, 60)
        assert wait_for(lambda: readyz()[0] == 200, 30), readyz()
        private_broker.stop()
        down_at = time.monotonic()
        assert wait_for(lambda: readyz()[0] == 503, 30), readyz()
        assert "broker" in readyz()[1], "/readyz says why it is not ready"
        # fifteen seconds without a broker: well past the session timeout (6 s) and librdkafka's
        # reconnect backoff ceiling (10 s), so the member has lost its group and every connection
        while time.monotonic() - down_at < 15:
            assert proc.poll() is None, "the consumer exited while the broker was away"
            assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "alive while unready"
            time.sleep(1)
        private_broker.start()
        assert wait_for(lambda: readyz()[0] == 200, 60), readyz()
        publish(penv, tmp_path / "s2.sqlite3", list(generate(1000, Fleet(), list(EventType), seed=12)))
        assert wait_for(lambda: sum(count_all(env.database_url).values()) >= 2000, 60), "ingest did not resume"
        ends = _non_empty(_end_offsets(private_broker.bootstrap, list(event_topics(penv.ingest()))))
        assert wait_for(lambda: stored_offsets(env.database_url, f"{env.prefix}ingest") == ends, 30)
        assert sum(count_all(env.database_url).values()) == 2000
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    starts = [line for line in log.read_text().splitlines() if '"ingest started"' in line]
    assert len(starts) == 1, "one process start: no crash loop"


@pytest.mark.slow
def test_status_lag_is_zero_after_a_drain_and_end_minus_stored_with_a_backlog(env: Env, tmp_path: Path) -> None:
    topics = [env.topic(et) for et in EventType]
    publish(env, tmp_path / "s1.sqlite3", list(generate(2000, Fleet(), list(EventType), seed=21)))
    _drain(env)
    status = json.loads(run_gatestream(env.environ(), "status", "--json").stdout)
    ends = _end_offsets(env.services.bootstrap_servers, topics)
    assert {(r["topic"], r["partition"]): r["high_watermark"] for r in status} == ends
    assert all(r["lag_messages"] == 0 and r["lag_seconds"] == 0 for r in status)

    publish(env, tmp_path / "s2.sqlite3", list(generate(700, Fleet(), list(EventType), seed=22)))
    status = json.loads(run_gatestream(env.environ(), "status", "--json").stdout)
    ends = _end_offsets(env.services.bootstrap_servers, topics)
    stored = stored_offsets(env.database_url, f"{env.prefix}ingest")
    for r in status:
        tp = (r["topic"], r["partition"])
        assert r["high_watermark"] == ends[tp]
        assert r["lag_messages"] == ends[tp] - stored.get(tp, 0), tp
        assert (r["lag_seconds"] > 0) == (r["lag_messages"] > 0), r
    assert sum(r["lag_messages"] for r in status) == 700


@pytest.mark.slow
def test_kafka_group_offsets_mirror_the_database_and_never_decide_where_reading_starts(
    env: Env, tmp_path: Path
) -> None:
    bootstrap = env.services.bootstrap_servers
    group = f"{env.prefix}ingest"
    topics = [env.topic(et) for et in EventType]
    publish(env, tmp_path / "s1.sqlite3", list(generate(1000, Fleet(), list(EventType), seed=31)))
    _drain(env)
    stored = stored_offsets(env.database_url, group)
    assert sum(stored.values()) == 1000
    # every partition is listed, one where nothing was stored (empty) at its first offset, 0
    every = {tp: stored.get(tp, 0) for tp in _end_offsets(bootstrap, topics)}
    assert _kafka_committed(bootstrap, group) == every, "Kafka's group offsets follow the stored ones"
    # Kafka's own tool sees the group at the end of every partition: true lag 0
    described = subprocess.run(
        [str(BROKER_SCRIPT), "run", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", bootstrap, "--describe", "--group", group, *env.services.kafka_tool_args(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lags = [int(m) for m in re.findall(rf"^{re.escape(group)}\s+\S+\s+\d+\s+\d+\s+\d+\s+(\d+)", described, re.M)]
    assert len(lags) == len(every) and set(lags) == {0}, described

    # Kafka's offsets ahead of the database (a mirror that ran ahead): the database wins
    publish(env, tmp_path / "s2.sqlite3", list(generate(500, Fleet(), list(EventType), seed=32)))
    _set_kafka_committed(bootstrap, group, _end_offsets(bootstrap, topics))
    summary = _drain(env)
    assert summary["inserted"] == 500 and summary["duplicates"] == 0
    # Kafka's offsets behind (mirror commits that failed): nothing is read twice
    publish(env, tmp_path / "s3.sqlite3", list(generate(300, Fleet(), list(EventType), seed=33)))
    _set_kafka_committed(bootstrap, group, dict.fromkeys(stored, 0))
    summary = _drain(env)
    assert summary["inserted"] == 300 and summary["duplicates"] == 0
    assert sum(count_all(env.database_url).values()) == 1800
    kafka, db = _kafka_committed(bootstrap, group), stored_offsets(env.database_url, group)
    assert {tp: kafka.get(tp, 0) for tp in kafka | db} == {tp: db.get(tp, 0) for tp in kafka | db}


@pytest.mark.slow
def test_time_ranged_replay_starts_at_the_brokers_offset_for_that_time(env: Env, tmp_path: Path) -> None:
    topics = [env.topic(et) for et in EventType]
    publish(env, tmp_path / "s1.sqlite3", list(generate(1000, Fleet(), list(EventType), seed=41)))
    # every message of the first batch has a create time (ms) before t; every one of the second, after
    t = datetime.now(UTC) + timedelta(milliseconds=2)
    assert wait_for(lambda: datetime.now(UTC) > t + timedelta(milliseconds=2), 5, interval=0.001)
    publish(env, tmp_path / "s2.sqlite3", list(generate(500, Fleet(), list(EventType), seed=42)))

    bootstrap = env.services.bootstrap_servers
    ends = _end_offsets(bootstrap, topics)
    c = Consumer({**kafka_conf(bootstrap), "group.id": "test-times"})
    at_t = [TopicPartition(topic, p, int(t.timestamp() * 1000)) for topic, p in ends]
    found = {(tp.topic, tp.partition): tp.offset for tp in c.offsets_for_times(at_t, timeout=10)}
    c.close()
    expected = {tp: (off if off >= 0 else ends[tp]) for tp, off in found.items()}
    assert sum(ends[tp] - expected[tp] for tp in ends) == 500, "the lookup splits the two batches"

    done = run_gatestream(
        env.environ(), "replay", "--from", t.isoformat(), "--skew", "0s", "--dry-run", "--no-progress"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    starts = {(p["topic"], p["partition"]): p["from"] for p in summary["partitions"]}
    assert starts == expected
    # the default 5-minute skew margin reads from the offset for five minutes earlier
    done = run_gatestream(env.environ(), "replay", "--from", t.isoformat(), "--dry-run", "--no-progress")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {p["from"] for p in summary["partitions"]} == {0}


@pytest.mark.slow
def test_a_member_that_lost_its_partitions_while_holding_a_batch_is_fenced(
    env: Env, tmp_path: Path, group_protocol: str
) -> None:
    """Member A reads a batch, then stalls before writing it (a long GC pause, a frozen VM):
    it stops polling, and its group membership ends (max.poll.interval.ms) while it still
    holds the batch. Member B takes the partitions, starts from the stored offsets and
    commits everything. When A wakes up and writes, the fence rolls its batch back."""
    from gatestream.consumers.ingest import Ingestor, build_routes

    n = 2000
    publish(env, tmp_path / "s.sqlite3", list(generate(n, Fleet(), [EventType.ACTIVE_WINDOWS], seed=51)))
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    max_poll_ms = 7000

    def member(**over: Any) -> Ingestor:
        settings = env.ingest(group_protocol=group_protocol, batch_max_rows=400, batch_max_ms=200, **over)
        with psycopg.connect(settings.database_url) as conn:
            routes = build_routes(conn, settings, {topic: EventType.ACTIVE_WINDOWS})
        return Ingestor(settings, routes)

    a = member(kafka_extra={"max.poll.interval.ms": max_poll_ms})
    stalled, wake = threading.Event(), threading.Event()
    real_write = a._write

    def stall_then_write(batch: Any, moves: Any) -> Any:
        if not stalled.is_set():
            stalled.set()
            wake.wait(120)
        return real_write(batch, moves)

    a._write = stall_then_write  # type: ignore[method-assign]
    ta = threading.Thread(target=a.run, daemon=True)
    ta.start()
    b: Ingestor | None = None
    try:
        assert stalled.wait(60), "member A never wrote a batch"
        # A has stopped polling: once max.poll.interval.ms has passed, it is out and B gets every partition
        b = member()
        tb = threading.Thread(target=b.run, daemon=True)
        tb.start()
        ends = _non_empty(_end_offsets(env.services.bootstrap_servers, [topic]))
        assert wait_for(lambda: stored_offsets(env.database_url, f"{env.prefix}ingest") == ends, 90)
        assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == n
        assert b.summary.duplicates == 0, "B read nothing twice"
        wake.set()  # A wakes up holding a batch for partitions that B has moved on
        assert wait_for(lambda: a.summary.fenced >= 1, 30), "A's stale batch must be fenced"
        assert (a.summary.inserted, a.summary.duplicates) == (0, 0), "the fenced member committed no row"
        assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == n
        assert stored_offsets(env.database_url, f"{env.prefix}ingest") == ends
    finally:
        wake.set()
        a.request_stop()
        if b is not None:
            b.request_stop()
        ta.join(60)
        if b is not None:
            tb.join(60)
