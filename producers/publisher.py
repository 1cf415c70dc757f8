"""Publisher: typed events -> Avro (Confluent wire format) -> spool -> idempotent Kafka producer."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from gatestream.kafka import producer_config
from gatestream.kafka_access import AUTHORIZATION_FAILURES, is_authorization_error
from gatestream.producers import metrics
from gatestream.producers.events import CatalogEvent, Publishable
from gatestream.producers.spool import Spool
from gatestream.schemas import catalog_of
from gatestream.schemas.presence import AGENT_HOSTNAME_HEADER, GATEWAY_HEADER
from gatestream.schemas.registry import make_registry
from gatestream.settings import ProducerSettings

log = structlog.get_logger("gatestream.producer")


class Publisher:
    """Publishes gateway events; nothing accepted is lost while the broker is away.

    ``publish``/``publish_many`` return once the events are in the spool (durable).
    Call ``poll()`` regularly (it hands spooled events to Kafka and collects delivery
    reports) and ``flush()`` before exiting; ``close()`` does both.
    """

    def __init__(
        self,
        settings: ProducerSettings,
        *,
        registry: Any = None,
        on_delivery: Callable[[str, bytes, KafkaError | None], None] | None = None,
        gateway_id: uuid.UUID | None = None,
        agent_hostname: str | None = None,
    ) -> None:
        """``on_delivery(topic, key, error)`` is called for every delivery report (error None
        on success) from within ``poll``; a failed event stays spooled and is resent.

        ``gateway_id`` / ``agent_hostname`` (default: the settings'): the identity of the
        gateway this publisher runs in, stamped on every record as headers
        (``schemas.presence``); ingest tracks the gateway's presence and checks that each
        event's organization is the gateway's. Without them records carry no headers."""
        self.settings = settings
        gateway_id = gateway_id or settings.gateway_id
        agent_hostname = agent_hostname or settings.agent_hostname
        self.headers: list[tuple[str, str | bytes | None]] | None = None  # the same for every record
        if gateway_id is not None:
            self.headers = [(GATEWAY_HEADER, str(gateway_id).encode())]
            if agent_hostname:
                self.headers.append((AGENT_HOSTNAME_HEADER, agent_hostname.encode()))
        self.on_delivery = on_delivery
        self.catalog = catalog_of(settings)
        self.registry = registry or make_registry(settings.schema_registry_url, self.catalog)
        self.spool = Spool(settings.spool_path, settings.spool_synchronous)
        metrics.SPOOL_DEPTH.set_function(lambda: self.spool.depth)
        self._producer = Producer(producer_config(settings))
        self._serializers: dict[str, tuple[AvroSerializer, SerializationContext]] = {}
        first = self.spool.min_seq()
        self._sent_upto = (first - 1) if first is not None else 0
        self._in_flight = 0
        self._acked: list[int] = []
        self._failed = False
        self._retry_at = 0.0
        self._backoff_s = 0.5
        self.delivered = 0
        self.delivery_errors = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ accepting
    def event(self, event_type: str, record: dict[str, Any]) -> CatalogEvent:
        """An event of any type in the catalog, from its record (keyed by the catalog's key field)."""
        return CatalogEvent(event_type, record, self.catalog.info(event_type).key_field)

    def _serializer(self, event: Publishable) -> tuple[AvroSerializer, SerializationContext]:
        """The serializer of the event type's newest schema (a field added with a default
        is filled from its default for events built by older code)."""
        found = self._serializers.get(event.event_type)
        if found is None:
            entry = self.catalog.latest(event.event_type)
            topic = self.settings.topic_for(event.event_type)
            ser = AvroSerializer(
                self.registry,
                entry.schema_str,
                conf={"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy},
            )
            found = (ser, SerializationContext(topic, MessageField.VALUE))
            self._serializers[event.event_type] = found
        return found

    def encode(self, event: Publishable) -> tuple[str, bytes, bytes]:
        """(topic, key, Confluent-framed Avro value) for an event."""
        ser, ctx = self._serializer(event)
        value = ser(event.to_record(), ctx)
        assert value is not None
        return ctx.topic, event.key(), value

    def publish(self, event: Publishable) -> None:
        self.publish_many([event])

    def publish_many(self, events: Iterable[Publishable]) -> None:
        self.publish_encoded([self.encode(e) for e in events])

    def publish_encoded(self, encoded: list[tuple[str, bytes, bytes]]) -> None:
        """Spool already-encoded (topic, key, value) triples, then send what the window allows."""
        self.spool.append(encoded)
        counts: dict[str, int] = {}
        for topic, _, _ in encoded:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, n in counts.items():
            metrics.EVENTS_ACCEPTED.labels(topic).inc(n)
        self.poll(0)

    # ------------------------------------------------------------------ delivering
    def _on_delivery(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        self._in_flight -= 1
        topic = msg.topic() or ""
        (metrics.EVENTS_DELIVERED if err is None else metrics.DELIVERY_FAILURES).labels(topic).inc()
        if self.on_delivery is not None:
            self.on_delivery(topic, msg.key() or b"", err)
        if err is None:
            self._acked.append(seq)
            self.delivered += 1
            self._backoff_s = 0.5
            return
        self._failure(err, seq)

    def _failure(self, err: KafkaError, seq: int) -> None:
        """A send failed (reported late, or refused at once): the events stay spooled, resent after a back-off."""
        self.delivery_errors += 1
        if is_authorization_error(err):  # an ACL missing: an outage; the events stay spooled
            AUTHORIZATION_FAILURES.labels("produce").inc()
        if not self._failed:
            log.warning("delivery failed; events stay spooled and will be resent", error=str(err), seq=seq)
        self._failed = True
        self.last_error = str(err)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports, forget acknowledged events, send more from the spool."""
        self._producer.poll(timeout)
        if self._acked:
            acked, self._acked = self._acked, []
            self.spool.delete(acked)
        if self._failed:
            if self._in_flight > 0:
                return
            # Everything handed to the client has been reported; resend from the oldest
            # event still spooled, after a back-off.
            first = self.spool.min_seq()
            self._sent_upto = (first - 1) if first is not None else self._sent_upto
            self._failed = False
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, 10.0)
        if time.monotonic() < self._retry_at:
            return
        room = self.settings.max_in_flight - self._in_flight
        while room > 0:
            batch = self.spool.read_after(self._sent_upto, min(room, 5000))
            if not batch:
                break
            for ev in batch:
                try:
                    self._producer.produce(
                        ev.topic,
                        value=ev.value,
                        key=ev.key,
                        headers=self.headers,
                        on_delivery=functools.partial(self._on_delivery, ev.seq),
                    )
                except BufferError:
                    self._producer.poll(0.05)
                    return
                except KafkaException as exc:
                    # librdkafka refuses at once what it already knows fails (a topic this user
                    # may not write, once its metadata says so): an outage like a failed
                    # delivery, never an exception out of the caller's publish
                    self._failure(exc.args[0], ev.seq)
                    return
                self._in_flight += 1
                self._sent_upto = ev.seq
                room -= 1
            self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Deliver the spool; return how many events are still spooled when ``timeout`` ends."""
        deadline = time.monotonic() + timeout
        while self.spool.depth > 0 and time.monotonic() < deadline:
            self.poll(0.05)
        return self.spool.depth

    def close(self, timeout: float = 30.0) -> int:
        """Flush, then release the client and the spool; return events left spooled (kept on disk)."""
        left = self.flush(timeout)
        self._producer.flush(min(timeout, 5.0))
        self.poll(0)
        left = self.spool.depth
        self.spool.close()
        del self._producer  # destroy the client now: it would keep dialling an absent broker
        if left:
            log.warning("closing with events still spooled; they are sent on next start", spooled=left)
        return left
