"""The ingest consumer: a consumer-group member that micro-batches topics into hypertables.

Exactly-once effect: a batch's rows and its partitions' next offsets commit in one
database transaction, and partitions start where the database says (read in
``on_assign``), never where Kafka's committed offsets say. A member that lost a
partition cannot commit for it (see ``consumers.offsets``). Scale by starting more
processes with the same group.

Pipelining: while one batch is written (COPY and commit, in a writer thread), the next
is read and decoded. Only one batch is in flight; the next one is handed over after the
previous one's outcome is known, so its expected offsets are exact. A batch that fails
(fenced, database down, dead-letter topic down) is rolled back, and its partitions are
re-read from the stored offsets, dropping what the next batch held for them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from gatestream import logs
from gatestream.consumers import metrics
from gatestream.consumers.batch import MicroBatch, Plausibility
from gatestream.consumers.batch_writer import BatchWriter, WriteResult
from gatestream.consumers.deadletter import DeadLetterError, DeadLetters, Reject, first_time
from gatestream.consumers.faults import FaultHooks
from gatestream.consumers.observe import IngestObserver
from gatestream.consumers.offsets import FencedError, read_offsets
from gatestream.consumers.partitions import UNKNOWN, PartitionRange, Partitions
from gatestream.consumers.routes import Route, build_routes
from gatestream.database import connect
from gatestream.kafka import base_config, consumer_config
from gatestream.logs import RateLimitedLog
from gatestream.settings import IngestSettings
from gatestream.signals import on_stop_signals

__all__ = ["IngestSummary", "Ingestor", "PartitionRange", "Route", "build_routes"]

log = structlog.get_logger("gatestream.ingest")

TP = tuple[str, int]
Moves = dict[TP, tuple[int | None, int]]


@dataclass
class IngestSummary:
    consumed: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    fenced: int = 0
    seconds: float = 0.0
    first_event_at: float | None = None  # monotonic clock, for throughput figures
    last_commit_at: float | None = None

    def report(self) -> dict[str, int | float]:
        return {
            "consumed": self.consumed, "inserted": self.inserted, "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered, "batches": self.batches, "fenced": self.fenced,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


@dataclass
class _InFlight:
    future: Future[tuple[WriteResult, list[tuple[str, str]]]]
    batch: MicroBatch
    moves: Moves
    submitted: float


class Ingestor:
    def __init__(
        self,
        settings: IngestSettings,
        routes: dict[str, Route],
        *,
        group_id: str | None = None,
        upsert: bool = False,
        accept: Callable[[Message, dict[str, Any]], bool] | None = None,
        stop_when: Callable[[IngestSummary], bool] | None = None,
        assignment: list[PartitionRange] | None = None,
        on_turn: Callable[[IngestSummary], None] | None = None,
        dry_run: bool = False,
        poll_max: int = 10000,
    ) -> None:
        """``accept`` filters decoded events (skipped ones still move the offsets);
        ``stop_when`` ends the run once it returns true (checked after each loop turn);
        ``assignment`` reads these partition ranges without joining a group, and ends
        when all are read (replays); ``on_turn`` is called after each loop turn
        (progress, rate limits); ``dry_run`` writes every batch inside one transaction
        that is rolled back when the run ends, and sends no dead letters: later batches see
        what earlier ones would have written (a re-published event counts as present once
        its first copy would have been inserted), so its counts are the real run's."""
        self.settings = settings
        self.stop_when = stop_when
        self.assignment = assignment
        self.on_turn = on_turn
        self.dry_run = dry_run
        self.poll_max = poll_max  # messages per poll at most (a rate-limited replay polls in small steps)
        self.routes = routes
        self.group = group_id or settings.group_id
        self.upsert = upsert
        self.accept = accept
        self.stop_event = threading.Event()
        self.summary = IngestSummary()
        self._conn = self._connect()  # the writer thread's
        self._meta = self._connect()  # offset reads on assignment and resync
        self._writer = BatchWriter(self._conn, self.group, async_commit=settings.async_commit)
        self._dry_tx: contextlib.AbstractContextManager[psycopg.Transaction] | None = None
        self._begin_dry_run()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        self._inflight: _InFlight | None = None
        time_index = {
            t: r.spec.columns.index(r.time_field) for t, r in routes.items() if r.time_field in r.spec.columns
        }
        self.observer = IngestObserver(self.group, time_index, enabled=settings.metrics_enabled)
        conf = consumer_config(settings, self.group)
        conf["error_cb"] = self.observer.kafka_error
        if assignment is not None:
            conf["enable.partition.eof"] = True
        self._consumer = Consumer(conf)
        self._dlq = DeadLetters(base_config(settings), settings.dlq_topic, self.group)
        # every dead letter is logged, at most 20 lines per 10 s (then a count of those left out)
        self._dead_letter_log = RateLimitedLog(log, per_s=2.0, burst=20)
        self._faults = FaultHooks(settings.fault_hooks)
        self.parts = Partitions()
        self._plausible = Plausibility(
            int(settings.earliest_event_time.timestamp() * 1000), int(settings.max_future_skew_s * 1000)
        )
        self._batch = self._new_batch()
        self._last_event = time.monotonic()
        self._assigned_once = False
        self._retry_pause = 0.0  # grows while batches fail for reasons nobody foresaw

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.settings.database_url, stop=self.stop_event)

    def _begin_dry_run(self) -> None:
        """A dry run's batches all write inside one transaction, rolled back at the end."""
        if self.dry_run:
            tx = self._conn.transaction(force_rollback=True)
            tx.__enter__()
            self._dry_tx = tx

    def _reconnect_writer(self) -> None:
        self._conn.close()
        self._conn = self._connect()
        self._writer = BatchWriter(self._conn, self.group, async_commit=self.settings.async_commit)
        if self.dry_run:
            log.warning("dry run: the database connection was lost; what it had written is gone, counts may be off")
            self._begin_dry_run()

    def _new_batch(self) -> MicroBatch:
        return MicroBatch(
            self.routes, self.parts, plausible=self._plausible, accept=self.accept, on_end=self._at_end,
            on_decode_error=self.observer.decode_error,
        )  # fmt: skip

    def _read_stored(self, parts: list[TP]) -> dict[TP, int]:
        while True:
            try:
                return read_offsets(self._meta, self.group, parts)
            except psycopg.OperationalError as exc:
                log.warning("cannot read offsets; reconnecting", error=str(exc).strip())
                time.sleep(1)
                self._meta.close()
                self._meta = self._connect()

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [(p.topic, p.partition) for p in partitions]
        stored = self._read_stored(parts)
        self._faults.hit("on-assign")
        for p in partitions:
            begin = self.parts.take((p.topic, p.partition), stored.get((p.topic, p.partition)))
            p.offset = begin if begin >= 0 else OFFSET_BEGINNING
        consumer.incremental_assign(partitions)
        logs.set_identity(group=self.group, member=consumer.memberid())
        self._assigned_once = True
        self._last_event = time.monotonic()
        metrics.REBALANCES.labels("assign").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.owned))
        log.info("partitions assigned", partitions=_fmt(parts), with_stored_offsets=len(stored))

    def _assign_ranges(self, ranges: list[PartitionRange]) -> None:
        """Bounded run: read these ranges, resuming where this run's group stored progress."""
        parts = [(r.topic, r.partition) for r in ranges]
        stored = self._read_stored(parts)
        assignment = []
        for r in ranges:
            begin = self.parts.take((r.topic, r.partition), stored.get((r.topic, r.partition)), r.start, r.end)
            assignment.append(TopicPartition(r.topic, r.partition, begin if begin >= 0 else OFFSET_BEGINNING))
        self._consumer.assign(assignment)
        self._assigned_once = True
        log.info("partition ranges assigned", partitions=_fmt(parts), resumed=len(stored))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we hold while the partitions are still ours; the new owner starts there.
        self._faults.hit("on-revoke")
        self._flush()
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
        self.observer.forget(parts)
        metrics.REBALANCES.labels(kind).inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.owned))
        log.info(f"partitions {kind}", partitions=_fmt(parts))

    def _at_end(self, topic: str, partition: int, high_watermark: int) -> None:
        """End of partition: everything before ``high_watermark`` has been delivered to us."""
        tp = (topic, partition)
        if tp in self.parts.ends:
            self.parts.reached_end(tp, high_watermark)
            if self.parts.next.get(tp, UNKNOWN) < high_watermark and tp not in self._batch.ends:
                self.parts.next[tp] = high_watermark

    # ------------------------------------------------------------------ writing
    def _write(self, batch: MicroBatch, moves: Moves) -> tuple[WriteResult, list[tuple[str, str]]]:
        """Runs in the writer thread: rows, dead letters, offsets, one transaction."""
        sent: list[tuple[str, str]] = []

        def rejects_of(result: WriteResult) -> list[Reject]:
            refused = [Reject(r.origin, r.reason, r.detail, r.exception, r.sqlstate) for r in result.rejected]
            return batch.rejects + refused

        def before_commit(result: WriteResult) -> None:
            sent.clear()
            for reject in first_time(self._conn, self.group, rejects_of(result)):
                self._dlq.send(reject)
                sent.append((cast(str, reject.msg.topic()), reject.reason))
                self._dead_letter_log.warning(
                    "event dead-lettered", topic=reject.msg.topic(), partition=reject.msg.partition(),
                    offset=reject.msg.offset(), reason=reject.reason, error=reject.detail[:300],
                )  # fmt: skip
            self._dlq.confirm()
            self._faults.hit("before-commit")  # rows, dead letters and offsets written, not committed

        def count_only(result: WriteResult) -> None:  # dry run: what would be published (rolled back)
            for reject in first_time(self._conn, self.group, rejects_of(result)):
                sent.append((cast(str, reject.msg.topic()), reject.reason))

        result = self._writer.write(
            list(batch.tables.values()), moves, count_only if self.dry_run else before_commit, upsert=self.upsert
        )
        return result, sent

    def _submit(self) -> None:
        """Hand the open batch to the writer thread (after the previous one finished)."""
        self._await()
        batch = self._batch
        if not batch.ends:
            return
        self._batch = self._new_batch()
        moves = {tp: (self.parts.stored.get(tp), end) for tp, end in batch.ends.items() if tp in self.parts.owned}
        if moves:
            fut = self._pool.submit(self._write, batch, moves)
            self._inflight = _InFlight(fut, batch, moves, time.monotonic())

    def _await(self) -> None:
        """Wait for the batch in flight and act on its outcome."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        moves = inflight.moves
        try:
            result, sent_dlq = inflight.future.result()
        except FencedError as exc:
            self.summary.fenced += 1
            metrics.FENCED_BATCHES.inc()
            metrics.BATCH_FAILURES.labels("fenced").inc()
            log.warning(
                "batch fenced: another member moved these offsets; rolled back",
                partitions=_fmt(exc.partitions),
                offsets=_ranges(moves),
            )
            self._resync(list(moves))
            return
        except DeadLetterError as exc:
            log.error(
                "dead-letter topic unavailable; batch rolled back, will be retried",
                error=str(exc),
                offsets=_ranges(moves),
            )
            metrics.BATCH_FAILURES.labels("dead-letter").inc()
            self._resync(list(moves))
            time.sleep(1)
            return
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.error(
                "database error; batch rolled back, will be retried", error=str(exc).strip(), offsets=_ranges(moves)
            )
            self.observer.database(False, str(exc).strip()[:200])
            metrics.BATCH_FAILURES.labels("database").inc()
            self._reconnect_writer()
            # The server may have crashed: with asynchronous commits, batches it had
            # acknowledged may be gone (rows and offsets together). Read every owned
            # partition again from what is stored now, not just this batch's.
            self._resync(sorted(set(moves) | (self.parts.owned if self.settings.async_commit else set())))
            return
        except Exception:  # noqa: BLE001 - last resort: rows are isolated in the writer; keep running
            log.exception("batch failed unexpectedly; rolled back, will be retried", offsets=_ranges(moves))
            metrics.BATCH_FAILURES.labels("internal").inc()
            self._resync(list(moves))
            self._retry_pause = min(max(self._retry_pause * 2, 0.5), 30.0)
            time.sleep(self._retry_pause)
            return
        self._retry_pause = 0.0
        now = time.monotonic()
        for tp, (_, end) in moves.items():  # (a dry run's too: inside its open transaction they moved)
            self.parts.stored[tp] = end
        s = self.summary
        s.last_commit_at = now
        s.batches += 1
        s.inserted += result.inserted
        s.duplicates += result.duplicates
        s.dead_lettered += len(sent_dlq)
        self.observer.database(True)
        metrics.BATCH_COMMIT_SECONDS.observe(now - inflight.submitted)
        unmapped: dict[str, int] = {}
        for reject in inflight.batch.rejects:
            topic = cast(str, reject.msg.topic())
            unmapped[topic] = unmapped.get(topic, 0) + 1
        self.observer.committed(inflight.batch.tables, result, sent_dlq, moves, unmapped)
        if result.duplicates:
            log.info("duplicate events skipped", duplicates=result.duplicates)
        log.debug(
            "batch committed", rows=result.inserted, duplicates=result.duplicates, dead_lettered=len(sent_dlq),
            offsets=_ranges(moves),
            commit_ms=round((now - inflight.submitted) * 1000, 1),
        )  # fmt: skip
        self._faults.hit("after-commit")
        if self.assignment is None and not self.dry_run:
            self._mirror_to_kafka({tp: end for tp, (_, end) in moves.items()})

    def _flush(self) -> None:
        self._submit()
        self._await()

    def _mirror_to_kafka(self, offsets: dict[TP, int], *, final: bool = False) -> None:
        """Mirror stored offsets to Kafka's group for tools (lag dashboards); never read
        back. After each batch asynchronously; on the way out synchronously, since the
        last asynchronous commit may still be in flight when the client closes."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if final:
                self._consumer.commit(offsets=tps, asynchronous=False)
            else:
                self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            if final:
                log.info("could not mirror the final offsets to Kafka (advisory only)", error=str(exc))

    def _resync(self, parts: list[TP]) -> None:
        """After a rolled-back batch: read those partitions again from the stored offsets."""
        owned = [tp for tp in parts if tp in self.parts.owned]
        self._batch.drop(set(owned))
        stored = self._read_stored(owned)
        for tp in owned:
            off = stored.get(tp)
            self.parts.stored[tp] = off
            self.parts.next[tp] = off if off is not None else UNKNOWN
            try:
                self._consumer.seek(TopicPartition(tp[0], tp[1], off if off is not None else OFFSET_BEGINNING))
            except KafkaException as exc:
                log.warning("seek failed; partition re-read after the next rebalance", tp=_k(tp), error=str(exc))

    def _ping_db(self) -> None:
        try:
            self._meta.execute("SELECT 1")
        except psycopg.OperationalError:
            self._meta.close()
            self._meta = psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=2)

    def ready(self) -> tuple[bool, str]:
        """For /readyz: connected to broker and database, partitions assigned."""
        return self.observer.ready(self.parts)

    # ------------------------------------------------------------------ main loop
    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self) -> IngestSummary:
        on_stop_signals(self.request_stop)
        started = time.monotonic()
        if self.assignment is not None:
            self._assign_ranges(self.assignment)
        else:
            self._consumer.subscribe(
                list(self.routes), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        log.info("ingest started", group=self.group, topics=list(self.routes), dry_run=self.dry_run)
        max_rows, max_age = self.settings.batch_max_rows, self.settings.batch_max_ms / 1000
        idle = self.settings.stop_after_idle_s
        try:
            while not self.stop_event.is_set():
                batch = self._batch
                timeout = 0.1
                if batch.ends:
                    timeout = max(0.0, min(timeout, batch.started + max_age - time.monotonic()))
                msgs = self._consumer.consume(
                    num_messages=max(1, min(self.poll_max, max_rows - batch.count)), timeout=timeout
                )
                now = time.monotonic()
                if msgs:
                    if self.summary.first_event_at is None:
                        self.summary.first_event_at = now
                    self._last_event = now
                    self.summary.consumed += self._batch.add_many(msgs)
                batch = self._batch
                if batch.ends and (batch.count >= max_rows or now - batch.started >= max_age):
                    self._submit()
                elif self._inflight is not None and self._inflight.future.done():
                    self._await()
                self.observer.tick(self._consumer, self.parts, self._batch.pending_timestamps, self._ping_db)
                if self.on_turn is not None:
                    self.on_turn(self.summary)
                if self.stop_when is not None and self.stop_when(self.summary):
                    break
                if (
                    self.assignment is not None and self.parts.all_finished()
                    and not self._batch.ends and self._inflight is None
                ):  # fmt: skip
                    log.info("all partition ranges read")
                    break
                if (
                    idle is not None and self._assigned_once and not self._batch.ends and self._inflight is None
                    and now - self._last_event >= idle
                ):  # fmt: skip
                    log.info("idle; stopping", idle_s=idle)
                    break
            self._flush()
        finally:
            self.summary.seconds = time.monotonic() - started
            self._close()
        log.info("ingest stopped", **self.summary.report())
        return self.summary

    def _close(self) -> None:
        try:
            self._await()
        except Exception:  # noqa: BLE001 - closing anyway; offsets were not advanced
            pass
        if self.assignment is None and not self.dry_run:
            self._mirror_to_kafka({tp: o for tp, o in self.parts.stored.items() if o is not None}, final=True)
        try:
            self._consumer.close()  # leaves the group: partitions move at once
        except (KafkaException, RuntimeError):
            pass
        self._pool.shutdown(wait=True)
        self._dlq.close()
        if self._dry_tx is not None:
            try:
                self._dry_tx.__exit__(None, None, None)  # force_rollback: nothing of the dry run stays
            except psycopg.Error:
                pass
        self._conn.close()
        self._meta.close()


def _ranges(moves: Moves) -> dict[str, list[int | None]]:
    """topic[partition] -> [first offset, end offset) of a batch, for log lines."""
    return {_k(tp): [start, end] for tp, (start, end) in moves.items()}


def _k(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


def _fmt(parts: list[TP]) -> dict[str, list[int]]:
    """Partitions grouped by topic, for compact log lines."""
    out: dict[str, list[int]] = {}
    for t, p in sorted(parts):
        out.setdefault(t, []).append(p)
    return out
