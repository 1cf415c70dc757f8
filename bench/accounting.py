"""Counting a run end to end: every topic message accounted for once.

The primary key ``(event_id, datetime)`` and ``ON CONFLICT DO NOTHING`` keep a row from
being stored twice whatever the offsets do, so "rows minus distinct event_ids" is 0 even
when a batch was read and written twice. What proves exactly-once is the bookkeeping:

- the stored offsets (``gatestream.consumer_offsets``) equal the topics' end offsets:
  every message was committed, none is still pending;
- the rows equal the distinct events published: none lost, none that was never sent;
- ingest's own ``duplicates`` counter (events it found already stored) equals the copies
  the producers resent (messages on the topics minus distinct events): a batch read
  again after its commit shows up there, and with no resends it must be 0.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from gatestream.database import connect_once
from gatestream.schemas import EventType

TP = tuple[str, int]
SKIPPED_LINE = "duplicate events skipped"  # ingest's log line of a batch that found events already stored


@dataclass
class Published:
    ends: dict[TP, int]  # every partition's end offset (high watermark)
    ids: set[str]  # the distinct event_ids on the topics

    @property
    def messages(self) -> int:
        """Messages on the topics (they were created empty, so the end offsets sum them)."""
        return sum(self.ends.values())


def read_published(broker: str | dict[str, Any], topics: list[str], timeout: float = 60) -> Published:
    """The topics' end offsets and the distinct event_ids of their messages (an Avro body
    starts with the event_id). ``broker``: a plain broker's address, or a librdkafka
    configuration (with its security settings)."""
    conf = {"bootstrap.servers": broker} if isinstance(broker, str) else broker
    c = Consumer({**conf, "group.id": f"faults-count-{uuid.uuid4().hex[:6]}"})
    try:
        md = c.list_topics(timeout=10)
        ends = {
            (t, p): int(c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1])
            for t in topics
            for p in md.topics[t].partitions
        }
        left = {tp: end for tp, end in ends.items() if end > 0}
        c.assign([TopicPartition(t, p, 0) for t, p in left])
        ids: set[str] = set()
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is not None:
                    continue
                value = m.value() or b""
                # Confluent framing, then the event_id string: a zigzag length byte (36 -> 72) and 36 chars
                ids.add(value[6:42].decode(errors="replace"))
                tp = (m.topic() or "", m.partition() or 0)
                if (m.offset() or 0) + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
        return Published(ends, ids)
    finally:
        c.close()


def stored_rows(url: str) -> tuple[int, set[str]]:
    """Rows in every hypertable, and their distinct event_ids."""
    rows, ids = 0, set[str]()
    with connect_once(url, autocommit=False) as conn:
        for et in EventType:
            got = conn.execute(
                psycopg.sql.SQL("SELECT event_id::text FROM monitoring.{}").format(psycopg.sql.Identifier(et.value))
            ).fetchall()
            rows += len(got)
            ids.update(r[0] for r in got)
    return rows, ids


def wait_for_first_rows(
    url: str, timeout: float, meanwhile: Callable[[], object] = lambda: None, *, beyond: int = 0
) -> bool:
    """Wait until the members have committed a batch (the pipeline flows), calling ``meanwhile``
    between looks; with ``beyond``, until more than that many rows are stored (a stream started
    after that many events flows too). False on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meanwhile()
        with connect_once(url) as conn:
            stored = 0
            for et in EventType:
                query = (
                    psycopg.sql.SQL("SELECT count(*) FROM monitoring.{}")
                    if beyond
                    else psycopg.sql.SQL("SELECT EXISTS (SELECT 1 FROM monitoring.{})::int")
                )
                row = conn.execute(query.format(psycopg.sql.Identifier(et.value))).fetchone()
                stored += int(row[0]) if row else 0
                if stored > beyond:
                    return True
        time.sleep(0.2)
    return False


def stored_offsets(url: str, group: str) -> dict[TP, int]:
    """The group's stored next offsets (a hot standby answers too: it is a read)."""
    with connect_once(url, autocommit=False) as conn:
        got = conn.execute(
            "SELECT topic, partition, next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s", (group,)
        ).fetchall()
    return {(t, p): int(o) for t, p, o in got}


def offsets_off(url: str, group: str, ends: dict[TP, int]) -> int:
    """Partitions whose stored next offset is not their end offset (an empty partition has none stored)."""
    stored = stored_offsets(url, group)
    return sum(1 for tp in ends.keys() | stored.keys() if stored.get(tp, 0) != ends.get(tp, 0))


def skipped_duplicates(logs: Iterable[Path]) -> int:
    """Ingest's ``duplicates`` counter summed over its processes' JSON logs (each batch that
    found events already stored logs how many; a process killed -9 keeps what it wrote)."""
    total = 0
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if SKIPPED_LINE in line:
                try:
                    total += int(json.loads(line)["duplicates"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by kill -9
    return total


FENCED_LINE = "batch fenced"  # ingest's line of a batch whose offsets another member (or a failover) moved
COMMITTED_LINE = "batch committed"  # ingest's debug line of each committed batch, with its offset ranges
DATABASE_ERROR_LINE = "database error; batch rolled back"


def _tp(key: str) -> TP:
    topic, _, partition = key.rpartition("[")
    return topic, int(partition.rstrip("]"))


def batches_not_in(logs: Iterable[Path], stored: dict[TP, int]) -> tuple[int, int]:
    """Of the batches the members committed before their first database error (each log's
    lines up to that one; the members must log at debug level), how many a database whose
    stored offsets are ``stored`` does not hold (a batch moved some partition past them), and
    how many events those partitions' offsets are behind: (batches, events)."""
    batches, ends = 0, dict[TP, int]()
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if DATABASE_ERROR_LINE in line:
                break
            if COMMITTED_LINE not in line:
                continue
            try:
                moved = {_tp(k): int(v[1]) for k, v in json.loads(line)["offsets"].items()}
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut short by kill -9
            if any(end > stored.get(tp, 0) for tp, end in moved.items()):
                batches += 1
            for tp, end in moved.items():
                ends[tp] = max(ends.get(tp, 0), end)
    return batches, sum(max(0, end - stored.get(tp, 0)) for tp, end in ends.items())


def fenced_batches(logs: Iterable[Path]) -> int:
    """Batches the members found fenced (their expected offsets were not the stored ones)."""
    return sum(path.read_text(errors="replace").count(FENCED_LINE) for path in logs)
