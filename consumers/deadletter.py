"""Dead-letter topic: events that cannot be decoded or stored, with the reason in headers.

The original key and value bytes are kept untouched, so a fixed consumer can re-read
them, and ``gatestream dlq redrive`` can publish them back. Headers (all strings), in the
manner of Kafka Connect's error headers: ``gatestream.reason`` (a Reason),
``gatestream.error`` (the detail), ``gatestream.exception.class`` and ``.message``,
``gatestream.sqlstate`` (where the database refused), ``gatestream.source.topic`` /
``.partition`` / ``.offset`` / ``.timestamp_ms``, ``gatestream.consumer_group`` and
``gatestream.dead_lettered_at`` (ISO 8601, UTC), and the source's gateway identity
headers (``schemas.presence``), which a redrive publishes back with the event.
A dead letter is published and acknowledged before the offsets that skip its event
commit, so an event is never dropped silently; after a crash in between, the same dead
letter may be published twice (same source coordinates). An event too large to be
published again with the headers (the broker's size limit) is dead-lettered without its
value, with ``gatestream.value_omitted`` = its size: its coordinates still lead to it.
gatestream.dead_letters also records what ``gatestream dlq redrive`` published back
(``redriven_at``), so a redrive publishes each event once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, cast

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from gatestream.schemas.presence import IDENTITY_HEADERS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Reason(StrEnum):
    """Why an event went to the dead-letter topic (header ``gatestream.reason``)."""

    NULL_VALUE = "null-value"  # a tombstone: no value
    NOT_WIRE_FORMAT = "not-wire-format"  # not magic byte 0 + schema id + Avro
    UNKNOWN_SCHEMA_ID = "unknown-schema-id"  # the registry (or catalog) has no such id
    BAD_WRITER_SCHEMA = "bad-writer-schema"  # the id's schema is not a usable record
    INCOMPATIBLE_SCHEMA = "incompatible-schema"  # a schema of another event type
    MALFORMED_AVRO = "malformed-avro"  # the body does not decode with its schema
    UNMAPPABLE = "unmappable"  # decoded, but it cannot become a row
    EVENT_TIME_OUT_OF_RANGE = "event-time-out-of-range"  # before the earliest accepted time, or too far ahead
    INVALID_IDENTIFIER = "invalid-identifier"  # an organization or device id of 0 or below
    REJECTED_BY_DATABASE = "rejected-by-database"  # a CHECK, a NUL byte, ... (SQLSTATE in the detail)
    INTERNAL_ERROR = "internal-error"  # failed for a reason nobody foresaw (exception class in the detail)
    INVALID_POLICY_EVENT = "invalid-policy-event"  # the policy consumer's change events
    INVALID_CHANGE_EVENT = "invalid-change-event"  # not a Debezium change event of retention_policies (CDC topic)
    TENANT_MISMATCH = "tenant-mismatch"  # its organization is not the organization of the gateway that sent it
    UNKNOWN_GATEWAY = "unknown-gateway"  # its gateway is not registered (GATESTREAM_UNKNOWN_GATEWAY=refuse)


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch (Avro timestamp-millis) as ISO 8601 UTC, exactly; a
    value past the calendar (year 1 to 9999) says so instead."""
    try:
        return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
    except OverflowError:
        return f"{ms} ms since the epoch (outside the calendar)"


class Reject(NamedTuple):
    """One event on its way to the dead-letter topic."""

    msg: Message  # the source message: topic, partition, offset, key, value
    reason: str  # a Reason
    detail: str  # what went wrong, for a person
    exception: str | None = None  # the exception's class, where one was raised
    sqlstate: str | None = None  # where the database refused


class DeadLetterError(Exception):
    pass


def first_time(conn: psycopg.Connection[Any], group: str, rejects: list[Reject]) -> list[Reject]:
    """Record ``rejects`` in gatestream.dead_letters (within the caller's transaction) and
    return those not dead-lettered before: an offset read again (a replay, a redelivery
    after a rollback that kept the record) is not published to the dead-letter topic twice."""
    if not rejects:
        return []
    coords = [(cast(str, r.msg.topic()), cast(int, r.msg.partition()), cast(int, r.msg.offset())) for r in rejects]
    cur = conn.execute(
        """INSERT INTO gatestream.dead_letters (source_topic, source_partition, source_offset, reason, consumer_group)
           SELECT t, p, o, r, %s FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[]) AS v(t, p, o, r)
           ON CONFLICT DO NOTHING
           RETURNING source_topic, source_partition, source_offset""",
        (group, [c[0] for c in coords], [c[1] for c in coords], [c[2] for c in coords], [r.reason for r in rejects]),
    )
    new = set(cur.fetchall())
    return [r for r, c in zip(rejects, coords, strict=True) if c in new]


Coords = tuple[str, int, int]  # source topic, partition, offset


def redriven(conn: psycopg.Connection[Any], topics: Iterable[str]) -> dict[Coords, datetime]:
    """When each dead-lettered event of ``topics`` was last redriven (``gatestream dlq
    redrive``); events never redriven are absent."""
    try:
        rows = conn.execute(
            """SELECT source_topic, source_partition, source_offset, redriven_at FROM gatestream.dead_letters
                WHERE redriven_at IS NOT NULL AND source_topic = ANY(%s)""",
            (sorted(set(topics)),),
        ).fetchall()
    except psycopg.errors.UndefinedColumn as exc:
        raise DeadLetterError("the database has no redrive marks (sql/010): run gatestream db migrate") from exc
    return {(t, p, o): at for t, p, o, at in rows}


class Redriven(NamedTuple):
    """One event published back to its source topic and acknowledged, with what its dead
    letter says (for an event this database never recorded)."""

    source: Coords
    reason: str
    group: str
    dead_lettered_at: str | None  # ISO 8601, from the dead letter's header


def mark_redriven(conn: psycopg.Connection[Any], done: list[Redriven]) -> None:
    """Record ``done`` as redriven now, in one statement. An event dead-lettered before
    this database recorded dead letters (or against another database) gets its row here."""
    if not done:
        return
    conn.execute(
        """INSERT INTO gatestream.dead_letters AS d (source_topic, source_partition, source_offset, reason,
                  consumer_group, dead_lettered_at, redriven_at, redrives)
           SELECT t, p, o, r, g, coalesce(a::timestamptz, now()), now(), 1
             FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[], %s::text[], %s::text[]) AS v(t, p, o, r, g, a)
           ON CONFLICT (source_topic, source_partition, source_offset)
           DO UPDATE SET redriven_at = now(), redrives = d.redrives + 1""",
        (
            [d.source[0] for d in done], [d.source[1] for d in done], [d.source[2] for d in done],
            [d.reason for d in done], [d.group for d in done], [d.dead_lettered_at for d in done],
        ),
    )  # fmt: skip


class DeadLetters:
    def __init__(self, producer_conf: dict[str, Any], topic: str, group: str) -> None:
        conf = dict(producer_conf)
        conf.setdefault("enable.idempotence", True)
        conf.setdefault("acks", "all")
        conf.setdefault("linger.ms", 5)
        self._producer = Producer(conf)
        self.topic = topic
        self.group = group
        self._errors: list[str] = []
        self._pending = 0
        self.sent = 0
        self._closed = False

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._pending -= 1
        if err is not None:
            self._errors.append(str(err))  # (a too-large record is refused in produce(), not here)
        else:
            self.sent += 1

    def send(self, reject: Reject) -> None:
        """Publish ``reject`` with its original key and value and the Kafka Connect-style
        headers (see the module's doc); acknowledged by ``confirm``."""
        msg = reject.msg
        ts_type, ts = msg.timestamp()
        key, value = msg.key(), msg.value()
        fields = {
            "gatestream.reason": reject.reason,
            "gatestream.error": reject.detail[:4000],
            "gatestream.exception.class": reject.exception or "",
            "gatestream.exception.message": reject.detail[:4000],
            "gatestream.sqlstate": reject.sqlstate or "",
            "gatestream.source.topic": msg.topic() or "",
            "gatestream.source.partition": str(msg.partition()),
            "gatestream.source.offset": str(msg.offset()),
            "gatestream.source.timestamp_ms": str(ts) if ts_type else "",
            "gatestream.consumer_group": self.group,
            "gatestream.dead_lettered_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        headers: list[tuple[str, str | bytes | None]] = [(k, v.encode()) for k, v in fields.items()]
        # the gateway's identity goes with it, so a redriven event is checked as the original was
        headers += [(k, v) for k, v in cast(list[tuple[str, bytes]], msg.headers() or []) if k in IDENTITY_HEADERS]
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or value is None:
                    raise DeadLetterError(f"dead-letter topic {self.topic}: {exc}") from exc
                headers.append(("gatestream.value_omitted", str(len(value)).encode()))
                value = None
        self._pending += 1

    def confirm(self, timeout: float = 30.0) -> None:
        """Wait until every dead letter sent so far is acknowledged; raise if any was not."""
        if self._pending:
            self._producer.flush(timeout)
        if self._pending or self._errors:
            errors, self._errors = self._errors, []
            raise DeadLetterError(
                f"dead-letter topic {self.topic}: {self._pending} unacknowledged, errors: {errors[:3]}"
            )

    def close(self) -> None:
        """Deliver what is queued (up to 10 s), then destroy the producer. Not left to garbage
        collection: a pipeline freezes the heap alive at its start (gc.freeze), itself and this
        producer included, so nothing would ever destroy it; its librdkafka threads (a TLS
        connection to the broker) would still run while exit() tears down OpenSSL's state -
        a heap corruption waiting to happen (README: "Kafka clients at exit")."""
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.flush(10)
        finally:
            self._producer.close()
