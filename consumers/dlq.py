"""Working with the dead-letter topic: read its records, count them, decode them, and
redrive chosen ones — their original bytes back to their source topic, once an operator
has fixed the cause (registered a schema, widened a window, fixed a table).

Redriving is exactly-once in effect: a redriven event keeps its event_id, so an event
that had landed after all is counted as a duplicate, never stored twice; one that is
still refused is dead-lettered again, at its new offset.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from gatestream.consumers.decoder import DecodeError, Decoder
from gatestream.kafka import base_config, consumer_config
from gatestream.schemas import catalog_of
from gatestream.schemas.registry import make_registry, reader_schema
from gatestream.settings import IngestSettings


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # of the dead-letter topic
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get("gatestream.reason", "")

    @property
    def source(self) -> tuple[str, int, int]:
        h = self.headers
        return (
            h.get("gatestream.source.topic", ""),
            int(h.get("gatestream.source.partition", -1)),
            int(h.get("gatestream.source.offset", -1)),
        )


def read(settings: IngestSettings, timeout: float = 15.0) -> Iterator[DeadLetter]:
    """Every record of the dead-letter topic, from the beginning to its end as of now."""
    c = Consumer(
        {**consumer_config(settings, f"gatestream-dlq-reader-{time.monotonic_ns()}"), "enable.partition.eof": True}
    )
    try:
        md = c.list_topics(settings.dlq_topic, timeout=10).topics.get(settings.dlq_topic)
        if md is None or md.error is not None:
            return
        ends = {}
        for p in md.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(settings.dlq_topic, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return
        c.assign([TopicPartition(settings.dlq_topic, p, 0) for p in ends])
        left = set(ends)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                p = m.partition() or 0
                if m.error() is not None:
                    continue
                offset = m.offset()
                if offset is not None and offset < ends[p]:
                    raw_headers: Any = m.headers() or []
                    headers = {str(k): _text(v) for k, v in raw_headers}
                    yield DeadLetter(p, offset, _raw(m.key()), _raw(m.value()), headers)
                    deadline = time.monotonic() + timeout
                if (m.offset() or 0) + 1 >= ends[p]:
                    left.discard(p)
    finally:
        c.close()


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")


def _raw(v: Any) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


def summary(letters: list[DeadLetter]) -> dict[tuple[str, str], int]:
    """Count per (reason, source topic)."""
    return dict(Counter((d.reason, d.source[0]) for d in letters))


def decoded(settings: IngestSettings, letter: DeadLetter) -> dict[str, Any]:
    """The record as far as it decodes now, or why not (with the registry as it is now)."""
    topic = letter.source[0]
    catalog = catalog_of(settings)
    event_type = next((t for t in catalog.event_types() if settings.topic_for(t) == topic), None)
    if event_type is None:
        return {"undecoded": f"{topic!r} is not an event topic"}
    registry = make_registry(settings.schema_registry_url, catalog)
    try:
        reader = reader_schema(registry, catalog, event_type, f"{topic}-value")
        return {"event": Decoder(registry, reader).decode(letter.value)}
    except DecodeError as exc:
        return {"undecoded": f"{exc.reason}: {exc.detail}"}


def redrive(settings: IngestSettings, letters: list[DeadLetter]) -> tuple[int, int]:
    """Publish each letter's original key and value to its source topic (the dead-letter
    topic itself excluded); returns (published, skipped: value omitted or no source)."""
    producer = Producer({**base_config(settings), "enable.idempotence": True, "acks": "all"})
    published = skipped = 0
    errors: list[str] = []
    for d in letters:
        topic = d.source[0]
        if d.value is None or not topic or topic == settings.dlq_topic:
            skipped += 1
            continue
        origin = f"{settings.dlq_topic}[{d.partition}]@{d.offset}".encode()
        producer.produce(
            topic, key=d.key, value=d.value, headers=[("gatestream.redriven_from", origin)],
            on_delivery=lambda err, _m: errors.append(str(err)) if err is not None else None,
        )  # fmt: skip
        published += 1
        producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise RuntimeError(f"redrive: {left} unacknowledged, errors: {errors[:3]}")
    return published, skipped
