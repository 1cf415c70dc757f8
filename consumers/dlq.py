"""Working with the dead-letter topic: read its records, count them, decode them, and
redrive chosen ones — their original bytes back to their source topic, once an operator
has fixed the cause (registered a schema, widened a window, fixed a table).

Redriving is exactly-once in effect: a redriven event keeps its event_id, so an event
that had landed after all is counted as a duplicate, never stored twice; one that is
still refused is dead-lettered again, at its new offset (a new, pending dead letter).
Each event redriven is marked in gatestream.dead_letters (``redriven_at``) once the broker
acknowledged it, chunk by chunk, so a second redrive skips it (unless asked ``again``) and
a crash between publish and mark resends at most a chunk, never loses one. An event
dead-lettered twice (a crash before its offset committed) is published once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from gatestream.consumers.deadletter import Coords, Redriven, iso_ms, mark_redriven, redriven
from gatestream.consumers.decoder import DecodeError, Decoder, RegistryUnavailable
from gatestream.kafka import base_config, consumer_config
from gatestream.kafka_access import ACLS_HINT, KafkaRefused, is_authorization_error
from gatestream.schemas import catalog_of
from gatestream.schemas.presence import IDENTITY_HEADERS
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
    def source(self) -> Coords:
        h = self.headers
        return (
            h.get("gatestream.source.topic", ""),
            int(h.get("gatestream.source.partition", -1)),
            int(h.get("gatestream.source.offset", -1)),
        )

    @property
    def event(self) -> Coords:
        """Which event this is: its source coordinates (the same for an event dead-lettered
        twice), else where it sits in the dead-letter topic."""
        src = self.source
        return src if src[0] and src[2] >= 0 else ("", self.partition, self.offset)


def read(settings: IngestSettings, timeout: float = 15.0) -> Iterator[DeadLetter]:
    """Every record of the dead-letter topic, from the beginning to its end as of now."""
    c = Consumer(
        {
            **consumer_config(settings, f"gatestream-dlq-reader-{time.monotonic_ns()}", member=False),
            "enable.partition.eof": True,
        }
    )
    try:
        md = c.list_topics(settings.dlq_topic, timeout=10).topics.get(settings.dlq_topic)
        if md is None or (md.error is not None and md.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return  # no dead-letter topic yet: nothing was ever dead-lettered
        if md.error is not None:  # e.g. not even DESCRIBE on it: an error, never "0 records"
            _refused_or_raise(settings, md.error)
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
                err = m.error()
                if err is not None:
                    # DESCRIBE (WRITE implies it) but no READ; a group error is not one (the reader
                    # assigns its partitions and commits nothing: its group needs no ACL)
                    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        _refused_or_raise(settings, err)
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


def _refused_or_raise(settings: IngestSettings, err: KafkaError) -> NoReturn:
    """A refusal to read the dead-letter topic is one line (the CLI exits 2 with it); any other
    error is raised as it is."""
    if is_authorization_error(err):
        raise KafkaRefused(settings.kafka_principal, f"topic {settings.dlq_topic}", "no READ", ACLS_HINT)
    raise KafkaException(err)


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")


def _raw(v: Any) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


@dataclass
class Counts:
    pending: int = 0
    redriven: int = 0


def summary(letters: list[DeadLetter], done: dict[Coords, datetime]) -> dict[tuple[str, str], Counts]:
    """Events (not records: an event dead-lettered twice counts once) per (reason, source
    topic), pending or redriven (``done``: see deadletter.redriven)."""
    out: dict[tuple[str, str], Counts] = {}
    seen: set[Coords] = set()
    for d in letters:
        if d.event in seen:
            continue
        seen.add(d.event)
        counts = out.setdefault((d.reason, d.source[0]), Counts())
        if d.event in done:
            counts.redriven += 1
        else:
            counts.pending += 1
    return out


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
        event = Decoder(registry, reader).decode(letter.value)
    except DecodeError as exc:
        return {"undecoded": f"{exc.reason}: {exc.detail}"}
    except RegistryUnavailable as exc:  # says nothing about the letter
        return {"undecoded": f"schema registry unreachable: {exc}"}
    for name in _timestamp_fields(reader):  # the decoder keeps them as int milliseconds
        if isinstance(event.get(name), int):
            event[name] = iso_ms(event[name])
    return {"event": event}


def _timestamp_fields(schema: dict[str, Any]) -> list[str]:
    """The record's fields of logical type timestamp-millis (also inside a union)."""
    out = []
    for f in schema.get("fields", []):
        types = f.get("type")
        for t in types if isinstance(types, list) else [types]:
            if isinstance(t, dict) and t.get("logicalType") == "timestamp-millis":
                out.append(str(f["name"]))
    return out


@dataclass
class Redrive:
    """What a redrive did (or, planned only, would do)."""

    published: int = 0
    skipped: int = 0  # no value (too large when dead-lettered) or no source topic: cannot be published
    already_redriven: int = 0  # redriven before: published again only when asked to
    duplicates: int = 0  # the same event dead-lettered twice: published once
    todo: list[DeadLetter] = field(default_factory=list, repr=False)

    def report(self) -> dict[str, int]:
        return {
            "published": self.published, "skipped": self.skipped, "already_redriven": self.already_redriven,
            "duplicates": self.duplicates,
        }  # fmt: skip


def plan(settings: IngestSettings, letters: list[DeadLetter], done: dict[Coords, datetime], again: bool) -> Redrive:
    """Which of ``letters`` a redrive publishes: each event once, none already redriven
    (``done``) unless ``again``, none without a value or a source topic."""
    out = Redrive()
    seen: set[Coords] = set()
    for d in letters:
        topic = d.source[0]
        if d.value is None or not topic or topic == settings.dlq_topic:
            out.skipped += 1
        elif d.event in seen:
            out.duplicates += 1
        elif d.event in done and not again:
            out.already_redriven += 1
        else:
            out.todo.append(d)
        seen.add(d.event)
    return out


def redrive(
    settings: IngestSettings, conn: psycopg.Connection[Any], letters: list[DeadLetter], *, again: bool = False,
    chunk: int = 1000,
) -> Redrive:  # fmt: skip
    """Publish each chosen event's original key and value to its source topic, ``chunk``
    at a time: publish, wait for the broker's acknowledgement, then mark what was
    acknowledged as redriven in ``conn``'s database."""
    work = plan(settings, letters, {} if again else redriven(conn, {d.source[0] for d in letters}), again)
    producer = Producer({**base_config(settings), "enable.idempotence": True, "acks": "all"})
    for i in range(0, len(work.todo), chunk):
        part = work.todo[i : i + chunk]
        acked, errors = _publish(settings, producer, part)
        mark_redriven(conn, [_mark(d) for d in acked])
        work.published += len(acked)
        if len(acked) < len(part):
            raise RuntimeError(
                f"redrive: {len(part) - len(acked)} of a chunk of {len(part)} not acknowledged ({errors[:3]}); "
                f"{work.published} published and marked so far: run it again to publish the rest"
            )
    return work


def _publish(
    settings: IngestSettings, producer: Producer, part: list[DeadLetter]
) -> tuple[list[DeadLetter], list[str]]:
    """Publish ``part``; return the letters the broker acknowledged, and the errors."""
    acked: list[DeadLetter] = []
    errors: list[str] = []

    def delivered(d: DeadLetter, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            acked.append(d)
        else:
            errors.append(str(err))

    for d in part:
        origin = f"{settings.dlq_topic}[{d.partition}]@{d.offset}".encode()
        producer.produce(
            d.source[0], key=d.key, value=d.value,
            headers=[("gatestream.redriven_from", origin), *_identity(d)],
            on_delivery=functools.partial(delivered, d),
        )  # fmt: skip
        producer.poll(0)
    producer.flush(60)
    return acked, errors


def _identity(d: DeadLetter) -> list[tuple[str, bytes]]:
    """The gateway identity headers the event carried (kept by its dead letter)."""
    return [(k, d.headers[k].encode()) for k in IDENTITY_HEADERS if d.headers.get(k)]


def _mark(d: DeadLetter) -> Redriven:
    h = d.headers
    return Redriven(d.source, d.reason, h.get("gatestream.consumer_group", ""), h.get("gatestream.dead_lettered_at"))
