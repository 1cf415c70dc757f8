"""The replay driver of the batch pipeline: read fixed partition ranges, then stop.

It joins no consumer group (manual assignment, so the live ingest group never
rebalances because of a replay) and stores its progress under the run's own group in
the offset store, with the rows, like ingest. Each range ends at its planned end, or
where the broker says the partition ends when the reader gets there (end-of-partition
events), whichever comes first. Batches always take the duplicate-tolerant path: the
rows may be there already.

A dry run writes every batch inside one transaction that is rolled back when the run
ends, and publishes no dead letters: later batches see what earlier ones would have
written (a re-published event counts as present once its first copy would have been
inserted), so its counts are the real run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from confluent_kafka import Message, TopicPartition

from gatestream.consumers.offsets import UNKNOWN
from gatestream.consumers.partitions import PartitionRange
from gatestream.consumers.pipeline import BatchPipeline, IngestSummary, fmt_parts
from gatestream.consumers.routes import Route
from gatestream.settings import IngestSettings

log = structlog.get_logger("gatestream.replay")


class RangeReader(BatchPipeline):
    kind = "replay"
    upsert = True

    def __init__(
        self,
        settings: IngestSettings,
        routes: dict[str, Route],
        group: str,
        ranges: list[PartitionRange],
        *,
        event_filter: Callable[[Message, dict[str, Any]], bool] | None = None,
        on_turn: Callable[[IngestSummary], None] | None = None,
        dry_run: bool = False,
        poll_max: int = 10000,
    ) -> None:
        """``on_turn`` is called after each loop turn (progress, rate limits); ``poll_max``
        bounds the messages per poll (a rate-limited replay polls in small steps)."""
        self.ranges = ranges
        self.on_turn = on_turn
        self.event_filter = event_filter
        self.dry_run = dry_run
        self.poll_max = poll_max
        super().__init__(settings, routes, group, **{"enable.partition.eof": True})
        self._dry_tx: contextlib.AbstractContextManager[psycopg.Transaction] | None = None
        self._begin_dry_run()

    def _start(self) -> None:
        """Read the ranges, resuming where this run's group stored progress."""
        claimed = self.offsets.claim((r.topic, r.partition) for r in self.ranges)
        assignment = []
        for r in self.ranges:
            tp = (r.topic, r.partition)
            assignment.append(TopicPartition(r.topic, r.partition, self.parts.take(tp, claimed[tp], r.start, r.end)))
        self._consumer.assign(assignment)
        resumed = sum(1 for o in claimed.values() if o is not None)
        log.info("partition ranges assigned", partitions=fmt_parts(list(claimed)), resumed=resumed)

    @property
    def complete(self) -> bool:
        """Every range was read to its end (and the run was not stopped early)."""
        return self.parts.all_finished() and not self.stop_event.is_set()

    # ------------------------------------------------------------------ the pipeline's hooks
    def _done(self, got_messages: bool, *, idle: bool) -> bool:
        if self.on_turn is not None:
            self.on_turn(self.summary)
        if idle and self.parts.all_finished():
            log.info("all partition ranges read")
            return True
        return False

    def _at_end(self, topic: str, partition: int, high_watermark: int) -> None:
        """Everything before ``high_watermark`` has been delivered: the range ends there at the latest."""
        tp = (topic, partition)
        if tp in self.parts.ends:
            self.parts.reached_end(tp, high_watermark)
            if self.parts.next.get(tp, UNKNOWN) < high_watermark and tp not in self._batch.ends:
                self.parts.next[tp] = high_watermark

    def _begin_dry_run(self) -> None:
        if self.dry_run:
            tx = self._conn.transaction(force_rollback=True)
            tx.__enter__()
            self._dry_tx = tx

    def _writer_reconnected(self) -> None:
        if self.dry_run:
            log.warning("dry run: the database connection was lost; what it had written is gone, counts may be off")
            self._begin_dry_run()

    def _closing(self) -> None:
        if self._dry_tx is not None:
            try:
                self._dry_tx.__exit__(None, None, None)  # force_rollback: nothing of the dry run stays
            except psycopg.Error:
                pass
