"""The offset store: a consumer group's offsets in the database, and what one member knows of them.

Every consumer that writes to the database (ingest, replay, the policy consumer) keeps
its offsets here, never in Kafka: they commit in the same transaction as the rows (or
jobs) they account for, so a crash rewinds both together. On assignment a member
``claim``s its partitions (reads the stored offsets, which become the fence's expected
values, and where to start reading); a batch ``advance``s them inside its transaction;
once that transaction commits, ``advanced`` makes the new values the expected ones.

The fence: a batch may only move a partition's offset from the value this member last
saw (``expected``) to the batch's end. A member that lost the partition in a rebalance,
and whose new owner has already committed, finds a different stored value; its update
matches no row, FencedError is raised, and the whole transaction, rows included, rolls
back. The member then ``reload``s the partitions (or has lost them already).

``mirror_to_kafka`` copies stored offsets to the Kafka group (for lag tools), never read back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from gatestream.database import bounded, connect, connect_once, sever
from gatestream.waiting import wait_for_service

log = structlog.get_logger("gatestream.offsets")

TopicPartition = tuple[str, int]
Moves = dict[TopicPartition, tuple[int | None, int]]  # partition -> (expected, new)

FROM_BEGINNING = -2  # where to start when nothing is stored: the partition's first message
# (confluent_kafka.OFFSET_BEGINNING has the same value)
UNKNOWN = -1  # "the next offset is not known yet": nothing read, nothing stored
PING_TIMEOUT_S = 2  # a health check's connect and query each get this long


def start_of(stored: int | None) -> int:
    """Where to start reading a partition whose stored next offset is ``stored``."""
    return stored if stored is not None else FROM_BEGINNING


class FencedError(Exception):
    """The stored offsets moved under this member: it no longer owns those partitions."""

    def __init__(self, partitions: list[TopicPartition]) -> None:
        super().__init__(f"offsets moved by another member for {partitions}")
        self.partitions = partitions


def read_offsets(
    conn: psycopg.Connection[Any], group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Stored next offsets for the partitions that have one."""
    parts = list(partitions)
    if not parts:
        return {}
    rows = conn.execute(
        """SELECT o.topic, o.partition, o.next_offset
             FROM gatestream.consumer_offsets o
             JOIN unnest(%s::text[], %s::int[]) AS p(topic, partition)
               ON o.topic = p.topic AND o.partition = p.partition
            WHERE o.consumer_group = %s""",
        ([t for t, _ in parts], [p for _, p in parts], group),
    ).fetchall()
    return {(t, p): int(o) for t, p, o in rows}


def advance_offsets(conn: psycopg.Connection[Any], group: str, moves: Moves) -> None:
    """Within the caller's transaction, move each partition from expected to new, or raise FencedError."""
    updates = [(t, p, exp, new) for (t, p), (exp, new) in moves.items() if exp is not None]
    inserts = [(t, p, new) for (t, p), (exp, new) in moves.items() if exp is None]
    fenced: list[TopicPartition] = []
    if updates:
        cur = conn.execute(
            """UPDATE gatestream.consumer_offsets o
                  SET next_offset = v.new, updated_at = now(),
                      principal = coalesce(o.principal, gatestream.offset_principal())  -- sql/057
                 FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[]) AS v(topic, partition, expected, new)
                WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition
                  AND o.next_offset = v.expected
            RETURNING o.topic, o.partition""",
            ([u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates], [u[3] for u in updates], group),
        )
        done = {(t, p) for t, p in cur.fetchall()}
        fenced += [(t, p) for t, p, _, _ in updates if (t, p) not in done]
    if inserts:
        # No row yet: the first writer inserts it; a second finds the row there and is fenced.
        cur = conn.execute(
            """INSERT INTO gatestream.consumer_offsets (consumer_group, topic, partition, next_offset)
               SELECT %s, v.topic, v.partition, v.new
                 FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(topic, partition, new)
               ON CONFLICT DO NOTHING
            RETURNING topic, partition""",
            (group, [i[0] for i in inserts], [i[1] for i in inserts], [i[2] for i in inserts]),
        )
        done = {(t, p) for t, p in cur.fetchall()}
        fenced += [(t, p) for t, p, _ in inserts if (t, p) not in done]
    if fenced:
        raise FencedError(sorted(fenced))


class OffsetStore:
    """One group's offsets: reads on a connection of its own (reconnecting while the
    database is away, until ``stop`` is set), writes in the caller's transaction."""

    def __init__(self, group: str, database_url: str, *, stop: threading.Event | None = None) -> None:
        self.group = group
        self._url = database_url
        self._stop = stop or threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self.expected: dict[TopicPartition, int | None] = {}  # claimed partitions -> stored next offset
        # Times a health ping reached the database again after failing: the server may be
        # another one now (a promoted standby) or the same after a crash, with fewer commits
        # than this member saw; the member re-reads its partitions (consumers.pipeline).
        self.returns = 0
        self._ping_failed = False

    # ------------------------------------------------------------------ reading
    def _reader(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, stop=self._stop)
        return self._conn

    def read(self, parts: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The stored next offsets of ``parts`` (those that have one); waits out a database
        outage (until ``stop`` is set: then the last error is raised)."""
        parts = list(parts)
        return wait_for_service(
            "database (offsets)",
            lambda: read_offsets(self._reader(), self.group, parts),
            retry=lambda exc: isinstance(exc, psycopg.OperationalError),
            on_failure=lambda _: self.close(),
            stop=self._stop,
            first_delay=1.0,
            logger=log.bind(group=self.group),
        )

    def ping(self) -> None:
        """Raise if the database cannot be reached (for health checks: fails fast, never
        waits: a server that accepts the connection and then says nothing is cut off)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect_once(self._url, connect_timeout=PING_TIMEOUT_S)
            with bounded(self._conn, PING_TIMEOUT_S):
                self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._ping_failed = True
            self.close()
            raise
        if self._ping_failed:
            self._ping_failed = False
            self.returns += 1

    def sever(self) -> None:
        """Cut the reading connection from another thread (see ``gatestream.database.sever``)."""
        sever(self._conn)

    # ------------------------------------------------------------------ this member's claims
    def claim(self, parts: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Own ``parts``: their stored offsets (None: nothing stored) become the fence's expected values."""
        parts = list(parts)
        stored = self.read(parts)
        claimed = {tp: stored.get(tp) for tp in parts}
        self.expected.update(claimed)
        return claimed

    def reload(self, parts: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """After a rolled-back or fenced batch: what is stored now for the claimed ``parts``."""
        return self.claim([tp for tp in parts if tp in self.expected])

    def release(self, parts: Iterable[TopicPartition]) -> None:
        for tp in parts:
            self.expected.pop(tp, None)

    def moves(self, ends: dict[TopicPartition, int]) -> Moves:
        """The offset moves of a batch that read each partition up to ``ends`` (claimed ones only)."""
        return {tp: (self.expected[tp], end) for tp, end in ends.items() if tp in self.expected}

    # ------------------------------------------------------------------ writing
    def advance(self, conn: psycopg.Connection[Any], moves: Moves) -> None:
        """Inside the caller's transaction on ``conn``: the fenced move (see the module's doc)."""
        if moves:
            advance_offsets(conn, self.group, moves)

    def advanced(self, moves: Moves) -> None:
        """The transaction that made ``moves`` committed: they are the expected values now."""
        for tp, (_, end) in moves.items():
            if tp in self.expected:
                self.expected[tp] = end

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def mirror_to_kafka(consumer: Consumer, offsets: dict[TopicPartition, int], *, final: bool = False) -> None:
    """Mirror stored offsets to the consumer's Kafka group for tools (lag dashboards); never
    read back. Asynchronously, or with ``final`` synchronously (on the way out the last
    asynchronous commit may still be in flight when the client closes); a failure changes
    nothing (advisory), and only a final one is logged."""
    if not offsets:
        return
    tps = [KafkaPartition(t, p, o) for (t, p), o in offsets.items()]
    try:
        if final:
            consumer.commit(offsets=tps, asynchronous=False)
        else:
            consumer.commit(offsets=tps, asynchronous=True)
    except KafkaException as exc:
        if final:
            log.info("could not mirror the final offsets to Kafka (advisory only)", error=str(exc))
