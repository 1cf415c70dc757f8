"""The leader-kill-9 scenario: on a three-node cluster of the run's own (bench.cluster), the
leader of the busiest event partition is killed -9 mid-stream and started again a few
seconds later, repeatedly; the producer and the ingest members are never restarted.

Per kill it measures, from the kill command (each looked at every ~0.2 s, so to within that):

- ``leader_s``: the partition has a new leader in the cluster's metadata;
- ``acked_s``: a reader of the partition sees the first event the producer created after the
  old leader was dead (its Kafka timestamp is later): a reader sees only what is below the
  high watermark, on the in-sync replicas, which is when ``acks=all`` acknowledges it;
- ``row_s``: the members' stored next offset of the partition passed that event's, i.e. the
  database committed its row;
- ``restart_s``: the killed node serves again (started after ``RESTART_AFTER_S``);
- ``isr_s``: every partition of the event topics has its three replicas in sync again (the
  killed node restarted and caught up; the next kill waits for it).

Events are told apart by when they were created, not by offsets: the old leader takes writes
until the SIGKILL lands, and the new leader's high watermark first rises over events it had
copied before the kill; either would count as a recovery that was none.
A figure is left out when it did not happen within ``MEASURE_S`` (e.g. the stream ended).
After the run, ``acks_with_one_node`` checks the promise's edge: one node left, no ack.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.accounting import stored_offsets
from bench.cluster import PrivateCluster, high_watermark
from gatestream.schemas import EventType
from gatestream.settings import ProducerSettings

if TYPE_CHECKING:
    from bench.scenarios import Run

MIN_KILLS = 2  # however short the window, so a test sees leadership move more than once
RESTART_AFTER_S = (2.0, 4.0)  # the killed node stays down this long (seeded random)
MEASURE_S = 90.0  # per kill, for the figures and for the cluster to heal
AFTER_STREAM_S = 5.0  # for the last rows, once the producer ended


def _busiest(client: Consumer, topics: list[str]) -> tuple[str, int]:
    """The event partition with the most messages so far (its leader's loss is felt most)."""
    md = client.list_topics(timeout=5).topics
    ends = {(t, p): high_watermark(client, t, p) for t in topics for p in md[t].partitions}
    return max(ends, key=lambda tp: ends[tp])


def leader_kill(run: Run, rnd: random.Random, until: float) -> int:
    cluster = run.cluster
    assert cluster is not None
    ps = ProducerSettings(bootstrap_servers=run.bootstrap, topic_prefix=run.prefix)
    topics = [ps.topic_for(et) for et in EventType]
    client = cluster.metadata_client()
    kills: list[dict[str, float]] = []
    try:  # the topics were made with the cluster's default replication factor: 3 wanted
        md = client.list_topics(timeout=5).topics
        run.measured["replicas"] = min(len(p.replicas) for t in topics for p in md[t].partitions.values())
        run.measured["min_isr"] = cluster.min_insync_replicas(topics)
        while len(kills) < MIN_KILLS or (time.monotonic() < until and _publishing(run)):
            time.sleep(rnd.uniform(1.0, 2.0))
            topic, partition = _busiest(client, topics)
            leader, _ = cluster.leader_of(client, topic, partition)
            start = high_watermark(client, topic, partition)  # the reader's start: a small tail
            killed = time.monotonic()
            cluster.kill9(leader)
            dead_ms = int(time.time() * 1000)  # the process is gone (the script waits for it)
            restarted: list[float] = []
            restart = threading.Thread(
                target=_restart_later,
                args=(cluster, leader, killed + rnd.uniform(*RESTART_AFTER_S), restarted),
                daemon=True,
            )  # fmt: skip
            restart.start()
            figures = _watch(run, client, topics, (topic, partition, start), leader, killed, dead_ms)
            restart.join(MEASURE_S)
            figures.update({"node": leader, **({"restart_s": round(restarted[0] - killed, 2)} if restarted else {})})
            kills.append(figures)
            if not restarted:  # a second node down would be an outage, not this scenario: stop here
                break
    finally:
        client.close()
    for i, k in enumerate(kills, 1):
        run.measured.update({f"kill{i}_{name}": v for name, v in k.items()})
    return len(kills)


def _publishing(run: Run) -> bool:
    return run.producer is not None and run.producer.poll() is None


def _restart_later(cluster: PrivateCluster, node: int, at: float, done: list[float]) -> None:
    time.sleep(max(0.0, at - time.monotonic()))
    cluster.restart(node)
    done.append(time.monotonic())


def _watch(
    run: Run, client: Consumer, topics: list[str], tps: tuple[str, int, int], old: int, killed: float, dead_ms: int
) -> dict[str, float]:
    """Look until every figure is in (the cluster healed included) or MEASURE_S passed; once the
    cluster healed and the producer ended, nothing more is coming: AFTER_STREAM_S more at most.
    The reader starts once the new leader is known (``tps``: topic, partition, where to start)."""
    cluster = run.cluster
    assert cluster is not None
    topic, partition, start = tps
    figures: dict[str, float] = {}
    reader: Consumer | None = None
    first: int | None = None  # the offset of the first event created after the kill
    until = killed + MEASURE_S
    try:
        while time.monotonic() < until and len(figures) < 4:
            time.sleep(0.2)
            if "isr_s" in figures and not _publishing(run):
                until = min(until, time.monotonic() + AFTER_STREAM_S)
            since = round(time.monotonic() - killed, 2)
            with contextlib.suppress(KafkaException):  # no leader to answer yet
                if "leader_s" not in figures and cluster.leader_of(client, topic, partition)[0] not in (old, -1):
                    figures["leader_s"] = since
                    reader = cluster.metadata_client()
                    reader.assign([TopicPartition(topic, partition, start)])
            if first is None and reader is not None:
                for m in reader.consume(5000, 0.05):
                    if m.error() is None and m.timestamp()[1] > dead_ms:
                        first, figures["acked_s"] = m.offset(), since
                        break
            with contextlib.suppress(KafkaException):
                if "isr_s" not in figures and "leader_s" in figures and cluster.under_replicated(client, topics) == 0:
                    figures["isr_s"] = since
            if "row_s" not in figures and first is not None:
                if stored_offsets(run.url, run.group).get((topic, partition), 0) > first:
                    figures["row_s"] = since
    finally:
        if reader is not None:
            reader.close()
    return figures


def acks_with_one_node(cluster: PrivateCluster, topic: str, timeout_s: float = 6.0) -> int:
    """One step outside what the cluster promises: with two of the three nodes killed at once,
    an idempotent ``acks=all`` write must not be acknowledged (here the quorum is gone too, so no
    in-sync set can shrink to the one node left). Kills nodes 1 and 2 (the run is over); returns
    how many of a few writes were acknowledged: 0 wanted."""
    for node in (1, 2):
        cluster.kill9(node)
    producer = Producer({
        "bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
        "message.timeout.ms": int(timeout_s * 1000), "log_level": 2,
    })  # fmt: skip
    acked: list[int] = []
    for i in range(6):  # every partition: whichever node led it
        producer.produce(topic, b"one-node", partition=i % 6, on_delivery=lambda err, _m: acked.append(err is None))
    producer.flush(timeout_s + 10)
    return sum(acked)
