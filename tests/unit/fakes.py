"""Small stand-ins for Kafka messages, a topic's decoder and a psycopg connection, for the
unit tests of the batch and offset logic (no services)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError
from psycopg.adapt import AdaptersMap

from gatestream.consumers.decoder import DecodeError, Decoder
from gatestream.consumers.routes import Route
from gatestream.consumers.tables import TableSpec


@dataclass
class FakeMessage:
    """What the consumers read of a ``confluent_kafka.Message``. The value is JSON (see
    ``JsonDecoder``); ``eof`` makes it a partition-end event instead of a message."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None = None
    eof: bool = False
    _timestamp_ms: int = 1_700_000_000_000

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, self._timestamp_ms  # TIMESTAMP_CREATE_TIME

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self.eof else None


def event(topic: str, partition: int, offset: int, **record: Any) -> FakeMessage:
    """A message whose value decodes (with ``JsonDecoder``) to ``record``."""
    return FakeMessage(topic, partition, offset, json.dumps(record).encode())


class JsonDecoder(Decoder):
    """Decodes JSON values; ``b"bad"`` (or anything that is not JSON) is malformed."""

    def __init__(self) -> None:  # no registry, no reader schema
        pass

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError("null-value", "no value")
        try:
            record = json.loads(value)
        except ValueError as exc:
            raise DecodeError("malformed-avro", str(exc)) from exc
        if not isinstance(record, dict):
            raise DecodeError("malformed-avro", "not a record")
        return record


def route(topic: str, columns: tuple[str, ...] = ("id", "t", "organization_id")) -> Route:
    """A route whose rows are the record's ``columns`` (a missing one: the row fails to map)."""

    def row_of(record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record[c] for c in columns)

    spec = TableSpec("monitoring", topic.replace(".", "_"), columns, tuple(25 for _ in columns), row_of)
    return Route(topic, JsonDecoder(), spec, "t")


@dataclass
class FakeCursor:
    rows: list[tuple[Any, ...]]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


@dataclass
class FakeConnection:
    """Records each statement (its first words) in ``calls`` and answers it with the next
    of ``answers`` (then: no rows). ``transaction()`` is a no-op context."""

    calls: list[str] = field(default_factory=list)
    answers: list[list[tuple[Any, ...]]] = field(default_factory=list)
    adapters: AdaptersMap = field(default_factory=lambda: AdaptersMap(psycopg.adapters))

    def execute(self, query: Any, params: Any = None) -> FakeCursor:
        self.calls.append(" ".join(str(query).split())[:60])
        return FakeCursor(self.answers.pop(0) if self.answers else [])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield
