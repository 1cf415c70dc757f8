"""How ingest members take part in their consumer group, against the stack's real broker:
which group protocol ``auto`` picks, and what Kafka's group shows for partitions that
have not committed yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, ConsumerGroupType, TopicPartition
from confluent_kafka.admin import AdminClient

from gatestream.group_protocol import broker_offers_consumer_protocol, resolve
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env
from tests.helpers import count_all, publish, start_ingest_thread, stored_offsets, wait_for
from tests.services import kafka_conf

pytestmark = pytest.mark.integration

TP = tuple[str, int]


def _kafka_committed(bootstrap: str, group: str) -> dict[TP, int]:
    """The group's committed offsets as Kafka's tools see them (partitions with none are absent)."""
    admin = AdminClient(kafka_conf(bootstrap))
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    return {(tp.topic, tp.partition): tp.offset for tp in fut.result(timeout=15).topic_partitions if tp.offset >= 0}


def _watermarks(bootstrap: str, topics: list[str]) -> dict[TP, tuple[int, int]]:
    c = Consumer({**kafka_conf(bootstrap), "group.id": "test-watermarks"})
    try:
        md = c.list_topics(timeout=10)
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            for t in topics
            for p in md.topics[t].partitions
        }
    finally:
        c.close()


def test_auto_picks_kip848_on_the_stack_broker_and_a_member_ingests_with_it(env: Env, tmp_path: Path) -> None:
    bootstrap = env.services.bootstrap_servers
    offered, why = broker_offers_consumer_protocol(AdminClient(kafka_conf(bootstrap)))
    assert offered is True, why
    assert resolve("auto", lambda: (offered, why))[0] == "consumer"

    settings = env.ingest(batch_max_rows=200, batch_max_ms=200)
    assert settings.group_protocol == "auto"  # the default
    publish(env, tmp_path / "spool.sqlite3", list(generate(300, Fleet(), list(EventType), seed=51)))
    ing, thread = start_ingest_thread(settings)
    try:
        assert wait_for(lambda: sum(count_all(env.database_url).values()) == 300, 90), count_all(env.database_url)
        admin = AdminClient(kafka_conf(bootstrap))
        group = admin.describe_consumer_groups([settings.group_id])[settings.group_id].result(timeout=15)
        assert group.type == ConsumerGroupType.CONSUMER, group.type  # the member joined with KIP-848
        assert len(group.members) == 1
    finally:
        ing.request_stop()
        thread.join(60)
    assert not thread.is_alive()
    assert ing.summary.inserted == 300 and ing.summary.duplicates == 0


def test_every_assigned_partition_is_in_kafkas_group_before_its_first_commit(
    env: Env, tmp_path: Path, group_protocol: str
) -> None:
    """Kafka lists a group's partition only once it has a committed offset: a partition that
    was assigned but has not committed yet must be mirrored where reading starts, or its
    backlog is invisible to Kafka's lag tools (kafka-consumer-groups, Burrow, exporters)."""
    bootstrap = env.services.bootstrap_servers
    topics = [env.topic(et) for et in EventType]
    publish(env, tmp_path / "spool.sqlite3", list(generate(600, Fleet(), list(EventType), seed=52)))
    marks = _watermarks(bootstrap, topics)
    filled = sorted(tp for tp, (_, high) in marks.items() if high >= 4)
    assert len(filled) >= 2, marks
    # One partition whose first events were deleted (its first offset is no longer 0) ...
    trimmed = filled[0]
    admin = AdminClient(kafka_conf(bootstrap))
    for fut in admin.delete_records([TopicPartition(*trimmed, 3)]).values():
        fut.result(timeout=15)
    # ... and one with an offset stored in the database (a previous member's commit).
    resumed = filled[1]
    settings: Any = env.ingest(
        group_protocol=group_protocol, batch_max_rows=1_000_000, batch_max_ms=600_000, batch_adaptive=False
    )
    with psycopg.connect(env.database_url) as conn:
        conn.execute(
            "INSERT INTO gatestream.consumer_offsets (consumer_group, topic, partition, next_offset) "
            "VALUES (%s, %s, %s, 2)",
            (settings.group_id, *resumed),
        )
    marks = _watermarks(bootstrap, topics)
    assert marks[trimmed][0] == 3
    # Where reading starts: the stored offset, else the partition's first offset.
    expected = {tp: 2 if tp == resumed else low for tp, (low, _) in marks.items()}

    # The member's batch is never full nor old enough: it reads, but commits nothing until it stops.
    ing, thread = start_ingest_thread(settings)
    try:
        listed = wait_for(lambda: _kafka_committed(bootstrap, settings.group_id) == expected, 60)
        committed = _kafka_committed(bootstrap, settings.group_id)
        assert listed, f"Kafka's group {committed} != where reading starts {expected}"
        assert ing.summary.batches == 0
        assert stored_offsets(env.database_url, settings.group_id) == {resumed: 2}  # nothing committed yet
    finally:
        ing.request_stop()
        thread.join(60)
    assert not thread.is_alive()
    # once it has stopped (its held batch committed on the way out), Kafka shows the stored offsets
    stored = stored_offsets(env.database_url, settings.group_id)
    final = {tp: stored.get(tp, low) for tp, (low, _) in marks.items()}
    assert _kafka_committed(bootstrap, settings.group_id) == final
