"""librdkafka configuration shared by gatestream's producers and consumers."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from gatestream.group_protocol import group_protocol_for
from gatestream.kafka_log import ClientLog
from gatestream.settings import GroupMemberSettings, IngestSettings, KafkaClientSettings, ProducerSettings


def security_config(settings: KafkaClientSettings) -> dict[str, Any]:
    """How the client connects and who it is: security.protocol, SASL (SCRAM-SHA-512 unless
    another mechanism is set) and the CA to check the broker's certificate against. Empty for
    a plain broker. The password is revealed here only, into librdkafka's configuration."""
    protocol = settings.effective_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    conf: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism or "SCRAM-SHA-512"
        if settings.kafka_sasl_username is not None and settings.kafka_sasl_password is not None:
            conf["sasl.username"] = settings.kafka_sasl_username
            conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None and protocol.endswith("SSL"):
        conf["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    return conf


SECURITY_SETTINGS = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_location",
)


def security_environ(settings: KafkaClientSettings) -> dict[str, str]:
    """The security settings as GATESTREAM_KAFKA_* variables, for a gatestream subprocess that
    talks to the same broker as the same user (a bench's ingest members)."""
    out: dict[str, str] = {}
    for name in SECURITY_SETTINGS:
        value = getattr(settings, name)
        if value is not None:
            out[f"GATESTREAM_{name.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return out


def base_config(settings: KafkaClientSettings) -> dict[str, Any]:
    """Every client's: where the broker is and how it logs in (``security_config``),
    librdkafka's log lines into structlog (repeated errors summarized, see
    ``gatestream.kafka_log``; a client of its own each), and the operator's extra properties
    (GATESTREAM_KAFKA_EXTRA, JSON)."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "logger": ClientLog()}
    conf.update(security_config(settings))
    conf.update(settings.kafka_extra)
    return conf


def producer_config(settings: ProducerSettings) -> dict[str, Any]:
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "compression.type": settings.compression,
        "message.timeout.ms": settings.message_timeout_ms,
        # Java-compatible key hashing, so other clients place a device on the same partition.
        "partitioner": "murmur2_random",
    }
    conf.update(base_config(settings))
    return conf


def group_config(settings: GroupMemberSettings, group_id: str) -> dict[str, Any]:
    """How a member takes part in its group, for either group protocol.

    The protocol is the one set, or for ``auto`` the broker's (``gatestream.group_protocol``,
    asked once per process). Both hand out partitions incrementally (``on_assign`` calls
    ``incremental_assign``). Under KIP-848 the broker chooses the assignor and owns the
    session timeout and heartbeat; librdkafka refuses the classic-only properties there.
    ``group_instance_id`` makes the member static (``group.instance.id``).
    """
    protocol = group_protocol_for(settings, base_config(settings))
    conf: dict[str, Any] = {"group.id": group_id, "group.protocol": protocol}
    if protocol == "classic":
        conf.update({
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        })  # fmt: skip
    if settings.group_instance_id is not None:
        conf["group.instance.id"] = settings.group_instance_id
    return conf


def consumer_config(settings: IngestSettings, group_id: str, *, member: bool = True) -> dict[str, Any]:
    """A consumer's configuration. ``member=False``: a reader that only ``assign``s partitions
    and never joins its group (status, watermarks, dead-letter reads, replay plans): it needs
    no group protocol, so the broker is not asked for one."""
    conf = {
        **(group_config(settings, group_id) if member else {"group.id": group_id}),
        # Offsets live in the database, committed with the rows; Kafka never decides where we start.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        # Without this librdkafka pauses a second whenever > 100k messages are queued.
        "fetch.queue.backoff.ms": 10,
        # What librdkafka prefetches per consumer: 16 MB and 5k messages per partition are
        # over a second of work at full speed. Draining a 2M-event backlog, peak RSS was
        # 433 MB with 256 MB / 100k (before), 380 MB with 64 MB / 20k, 230 MB with this;
        # the drain took 38.6, 40.8 and 43.4 s (separate runs).
        "queued.max.messages.kbytes": 16384,
        "queued.min.messages": 5000,
    }
    conf.update(base_config(settings))
    return conf
