"""The ingest consumer: a consumer-group member that micro-batches topics into hypertables.

Exactly-once effect: a batch's rows and its partitions' next offsets commit in one
database transaction (``consumers.pipeline``), and partitions start where the database
says (read in ``on_assign`` from the offset store), never where Kafka's committed
offsets say. A member that lost a partition cannot commit for it (the fence, see
``consumers.offsets``). Scale by starting more processes with the same group.

This module is the group-membership driver of the pipeline: subscribing, the
rebalance callbacks, mirroring stored offsets to Kafka for tools, and when to stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from gatestream import logs
from gatestream.consumers import metrics
from gatestream.consumers.offsets import Moves, mirror_to_kafka
from gatestream.consumers.pipeline import TP, BatchPipeline, IngestSummary, fmt_parts
from gatestream.consumers.routes import Route, build_routes
from gatestream.settings import IngestSettings

__all__ = ["IngestSummary", "Ingestor", "Route", "build_routes"]

log = structlog.get_logger("gatestream.ingest")

MIRROR_EVERY_S = 1.0  # committed offsets are mirrored to Kafka's group at most this often


class Ingestor(BatchPipeline):
    def __init__(
        self,
        settings: IngestSettings,
        routes: dict[str, Route],
        *,
        group_id: str | None = None,
        stop_when: Callable[[IngestSummary], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop_when`` ends the run once it returns true (checked after each loop turn);
        ``settings.stop_after_idle_s`` ends it after that long without an event; ``stop``
        (set by a signal handler) ends it at once."""
        self.stop_when = stop_when
        if stop is not None:
            self.stop_event = stop
        super().__init__(settings, routes, group_id or settings.group_id)
        self._last_event = time.monotonic()
        self._assigned_once = False
        self._first_offsets: dict[TP, int] = {}  # partitions with nothing stored -> where reading starts
        self._unmirrored: dict[TP, int] = {}  # committed, not yet mirrored to Kafka (see _mirror_committed)
        self._next_mirror = 0.0

    def _start(self) -> None:
        self._consumer.subscribe(
            list(self.routes), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        # the consumer protocol's member id is the client's own (KIP-1082), known from here on; a
        # classic member learns its id when it joins, and the first assignment sets it then
        logs.set_identity(group=self.group, member=self._consumer.memberid())
        log.info("ingest started", topics=list(self.routes))

    # ------------------------------------------------------------------ rebalance
    # librdkafka calls these from inside consume(), in the loop's thread: nothing else
    # runs meanwhile, so they may flush, drop and seek without locks.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Start where the database says; Kafka's committed offsets are only a mirror.
        claimed = self.offsets.claim((p.topic, p.partition) for p in partitions)
        self._faults.hit("on-assign")
        for p in partitions:
            p.offset = self.parts.take((p.topic, p.partition), claimed[(p.topic, p.partition)])
        consumer.incremental_assign(partitions)
        self._mirror_to_kafka(self._starting_offsets(consumer, claimed))
        logs.set_identity(group=self.group, member=consumer.memberid())
        self._assigned_once = True
        self._last_event = time.monotonic()
        metrics.REBALANCES.labels("assign").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.owned))
        stored = sum(1 for o in claimed.values() if o is not None)
        log.info("partitions assigned", partitions=fmt_parts(list(claimed)), with_stored_offsets=stored)

    def _starting_offsets(self, consumer: Consumer, claimed: dict[TP, int | None]) -> dict[TP, int]:
        """Where each newly assigned partition starts: its stored offset, or for one with
        nothing stored its first offset (the low watermark), so Kafka's lag tools list every
        partition from the moment it is assigned, not only after its first commit."""
        starts: dict[TP, int] = {}
        for tp, stored in claimed.items():
            if stored is not None:
                starts[tp] = stored
                continue
            try:
                low, _ = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=5, cached=False)
            except KafkaException as exc:
                log.info("cannot read a partition's first offset; not mirrored yet", tp=f"{tp[0]}[{tp[1]}]",
                         error=str(exc))  # fmt: skip
                continue
            starts[tp] = self._first_offsets[tp] = low
        return starts

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we hold while the partitions are still ours; the new owner starts there.
        self._faults.hit("on-revoke")
        self._flush()
        self._mirror_committed(force=True)  # while the partitions are still ours
        self._forget([(p.topic, p.partition) for p in partitions], "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session timed out): another member may own them already; a commit would be
        # fenced, so drop what we hold for them without trying.
        parts = [(p.topic, p.partition) for p in partitions]
        self._await()
        self._batch.drop(set(parts))
        self._forget(parts, "lost")

    def _forget(self, parts: list[TP], kind: str) -> None:
        self.parts.drop(parts)
        for tp in parts:
            self._unmirrored.pop(tp, None)
        self.offsets.release(parts)
        for tp in parts:
            self._first_offsets.pop(tp, None)
        self.observer.forget(parts)
        metrics.REBALANCES.labels(kind).inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.owned))
        log.info(f"partitions {kind}", partitions=fmt_parts(parts))

    # ------------------------------------------------------------------ the pipeline's hooks
    def _done(self, got_messages: bool, *, idle: bool) -> bool:
        now = time.monotonic()
        self._mirror_committed()
        if got_messages:
            self._last_event = now
        if self.stop_when is not None and self.stop_when(self.summary):
            return True
        limit = self.settings.stop_after_idle_s
        if limit is not None and self._assigned_once and idle and now - self._last_event >= limit:
            log.info("idle; stopping", idle_s=limit)
            return True
        return False

    def _committed(self, moves: Moves) -> None:
        self._unmirrored.update({tp: end for tp, (_, end) in moves.items()})
        self._mirror_committed()

    def _mirror_committed(self, *, force: bool = False) -> None:
        """Mirror the offsets committed since the last mirror, at most every MIRROR_EVERY_S
        (checked each loop turn, so the last batch's are mirrored within that too): with
        small batches at low rates, one Kafka offset commit per batch would be hundreds a
        second of broker work for an advisory copy."""
        now = time.monotonic()
        if self._unmirrored and (force or now >= self._next_mirror):
            self._mirror_to_kafka(self._unmirrored)
            self._unmirrored = {}
            self._next_mirror = now + MIRROR_EVERY_S

    def _closing(self) -> None:
        held = {tp: o if o is not None else self._first_offsets.get(tp) for tp, o in self.offsets.expected.items()}
        self._mirror_to_kafka({tp: o for tp, o in held.items() if o is not None}, final=True)

    def _mirror_to_kafka(self, offsets: dict[TP, int], *, final: bool = False) -> None:
        """At assignment (where each partition starts), after batches asynchronously
        (``_mirror_committed``) and on the way out synchronously (``offsets.mirror_to_kafka``)."""
        mirror_to_kafka(self._consumer, offsets, final=final)
