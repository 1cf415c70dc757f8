"""Creates gatestream's topics (one per event type, plus the dead-letter topic)."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from gatestream.kafka import base_config
from gatestream.settings import KafkaClientSettings


def ensure_topics(settings: KafkaClientSettings, names: list[str], partitions: int, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Their replication factor (and min.insync.replicas) is the cluster's own
    (``default.replication.factor``, KIP-464): 1 on the demo's single broker, 3 on a
    production cluster, where a topic pinned to one replica would lose events with a broker."""
    admin = AdminClient(base_config(settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [n for n in names if n not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=-1) for n in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def delete_topics(settings: KafkaClientSettings, names: list[str], timeout: float = 15.0) -> None:
    admin = AdminClient(base_config(settings))
    for fut in admin.delete_topics(names, operation_timeout=timeout).values():
        try:
            fut.result(timeout=timeout)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise
