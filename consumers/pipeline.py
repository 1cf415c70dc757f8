"""The batch pipeline shared by the ingest consumer and replay: read, decode, write, checkpoint.

A driver (``consumers.ingest.Ingestor``: a group member; ``consumers.replay_reader``:
bounded partition ranges) says which partitions to read and when to stop; this loop
does the rest, the same way for both:

- messages are decoded into a micro-batch (``consumers.batch``) until the consumer has
  nothing more buffered and the writer is free, or it is full or old (``consumers.flush``);
- the batch goes to a writer thread: rows by COPY (``consumers.batch_writer``), then the
  checkpoint (offsets under the fence, dead letters; ``consumers.checkpoint``), all in
  one transaction;
- while one batch is written, the next is read and decoded. Only one batch is in flight;
  the next is handed over after the previous one's outcome is known, so its expected
  offsets are exact. A batch that fails (fenced, database down, dead-letter topic down)
  is rolled back and its partitions are re-read from the stored offsets, dropping what
  the next batch held for them.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from gatestream.consumers import metrics
from gatestream.consumers.batch import MicroBatch, Plausibility
from gatestream.consumers.batch_writer import BatchWriter, WriteResult
from gatestream.consumers.checkpoint import Checkpoint
from gatestream.consumers.deadletter import DeadLetterError, DeadLetters, Reject
from gatestream.consumers.faults import FaultHooks
from gatestream.consumers.flush import FlushRule
from gatestream.consumers.observe import IngestObserver
from gatestream.consumers.offsets import FencedError, Moves, OffsetStore
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.presence import PresenceTracker
from gatestream.consumers.registry_outage import RegistryOutage
from gatestream.consumers.routes import Route
from gatestream.consumers.transcoder import BatchTranscoder, choose_path, make_transcoder
from gatestream.database import connect, sever
from gatestream.kafka import base_config, consumer_config
from gatestream.settings import IngestSettings
from gatestream.signals import on_stop_signals
from gatestream.waiting import after_stuck_stop, first_line

log = structlog.get_logger("gatestream.ingest")

TP = tuple[str, int]


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
    future: Future[tuple[WriteResult, list[Reject]]]
    batch: MicroBatch
    moves: Moves
    submitted: float


class BatchPipeline:
    """The loop; drivers override the hooks at the end of the class."""

    # A driver may set these before this class's __init__ runs:
    upsert = False  # every batch takes the duplicate-tolerant path (replay: rows may be there)
    dry_run = False  # nothing is published; the driver rolls the writes back
    # Messages per consume() at most. Draining a backlog, consume() alone cost ~2.3-2.8 µs of
    # process CPU per message with 10000, 1.35 with 1000, 1.1 with 500, 1.0 with 200 (librdkafka's
    # fetch threads included; cold memory per big batch): 500 keeps that and the loop's own
    # per-turn cost (~0.05 µs per message) low. A batch still grows to batch_max_rows.
    poll_max = 500

    # the event that ends the run; a driver may set it first (e.g. to the one the
    # command's signal handlers set while it was still starting)
    stop_event: threading.Event

    def __init__(self, settings: IngestSettings, routes: dict[str, Route], group: str, **consumer_conf: Any) -> None:
        self.settings = settings
        self.routes = routes
        self.group = group
        if not hasattr(self, "stop_event"):
            self.stop_event = threading.Event()
        self.summary = IngestSummary()
        self._conn = self._connect()  # the writer thread's
        self._writer = BatchWriter(self._conn, async_commit=settings.async_commit)
        self.offsets = OffsetStore(group, settings.database_url, stop=self.stop_event)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        self._inflight: _InFlight | None = None
        time_index = {
            t: r.spec.columns.index(r.time_field) for t, r in routes.items() if r.time_field in r.spec.columns
        }
        self.observer = IngestObserver(group, time_index, enabled=settings.metrics_enabled, client=self.kind)
        conf = {
            **consumer_config(settings, group), "error_cb": self.observer.kafka_error,
            "logger": self.observer.kafka_log, **consumer_conf,
        }  # fmt: skip
        self._consumer = Consumer(conf)
        self._dlq = DeadLetters(base_config(settings), settings.dlq_topic, group)
        self._checkpoint = Checkpoint(self.offsets, self._dlq, publish=not self.dry_run)
        self._faults = FaultHooks(settings.fault_hooks)
        self.parts = Partitions()
        self._plausible = Plausibility(
            int(settings.earliest_event_time.timestamp() * 1000), int(settings.max_future_skew_s * 1000)
        )
        self._native = self._transcoder()
        self._presence = (
            PresenceTracker(routes, unknown_gateway=settings.unknown_gateway, grain_s=settings.presence_grain_s)
            if settings.presence_tracking
            else None
        )
        self._batch = self._new_batch()
        self._retry_pause = 0.0  # grows while batches fail for reasons nobody foresaw
        self._returns_seen = 0  # offsets.returns already acted on (_database_returned)
        self._registry = RegistryOutage(self.observer.registry)
        # What is alive now (modules, schemas, plans, a bench's own data) lives as long as the
        # process: keep it out of the collector's full passes, which walked all of it every few
        # batches as the held Kafka messages (GC-tracked) aged (~1.2-1.7 µs per event, bench ingest).
        gc.freeze()

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.settings.database_url, stop=self.stop_event)

    def _reconnect_writer(self) -> None:
        self._conn.close()
        self._conn = self._connect()
        self._writer = BatchWriter(self._conn, async_commit=self.settings.async_commit)
        self._writer_reconnected()

    def _new_batch(self) -> MicroBatch:
        return MicroBatch(
            self.routes, self.parts, plausible=self._plausible, accept=self.event_filter, on_end=self._at_end,
            on_decode_error=self.observer.decode_error, native=self._native,
            on_consumer_error=self.observer.consumer_error,
        )  # fmt: skip

    def _transcoder(self) -> BatchTranscoder | None:
        """The native decode path where it is built and usable (one log line says which runs, and why)."""
        info = self._conn.info
        why = choose_path(
            self.settings.native_decode, self.event_filter is not None, info.parameter_status("server_encoding"),
            info.encoding,
        )  # fmt: skip
        native = None
        if why is None:
            p = self._plausible
            native = make_transcoder(
                self.routes, earliest_ms=p.earliest_ms, max_future_ms=p.max_future_ms, id_fields=p.ID_FIELDS
            )
        path = "native" if native is not None else "python"
        log.info("avro decoding path", path=path, **({"why": why} if why else {}))
        return native

    # ------------------------------------------------------------------ writing
    def _write(self, batch: MicroBatch, moves: Moves) -> tuple[WriteResult, list[Reject]]:
        """Runs in the writer thread: presence and the tenant check, rows, then the
        checkpoint, one transaction."""
        sent: list[Reject] = []
        checked: list[Reject] = []  # refused by the tenant check (consumers.presence)

        def presence() -> None:
            if self._presence is not None:
                checked[:] = self._presence.apply(self._conn, batch.tables)

        def checkpoint(result: WriteResult) -> None:
            refused = [Reject(r.origin, r.reason, r.detail, r.exception, r.sqlstate) for r in result.rejected]
            sent[:] = self._checkpoint.commit(self._conn, moves, batch.rejects + checked + refused)
            self._faults.hit("before-commit")  # rows, dead letters and offsets written, not committed

        result = self._writer.write(list(batch.tables.values()), checkpoint, upsert=self.upsert, before_rows=presence)
        return result, sent

    def _submit(self) -> None:
        """Hand the open batch to the writer thread (after the previous one finished)."""
        self._await()
        batch = self._batch
        if not batch.ends:
            return
        self._batch = self._new_batch()
        moves = self.offsets.moves({tp: end for tp, end in batch.ends.items() if tp in self.parts.owned})
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
            result, sent = inflight.future.result()
        except FencedError as exc:
            self.summary.fenced += 1
            metrics.FENCED_BATCHES.inc()
            metrics.BATCH_FAILURES.labels("fenced").inc()
            log.warning(
                "batch fenced: another member moved these offsets; rolled back",
                partitions=fmt_parts(exc.partitions), offsets=_ranges(moves),
            )  # fmt: skip
            self._resync(list(moves))
            return
        except DeadLetterError as exc:
            log.error("dead-letter topic unavailable; batch rolled back, will be retried", error=str(exc),
                      offsets=_ranges(moves))  # fmt: skip
            metrics.BATCH_FAILURES.labels("dead-letter").inc()
            self._resync(list(moves))
            self.stop_event.wait(1)
            return
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.error(
                "database error; batch rolled back, will be retried", error=str(exc).strip(), offsets=_ranges(moves)
            )
            self.observer.database(False, str(exc).strip()[:200])
            metrics.BATCH_FAILURES.labels("database").inc()
            if self.stop_event.is_set():
                return  # stopping: the next owner reads these partitions from the stored offsets
            self._reconnect_writer()
            # The server may have crashed (with asynchronous commits, batches it had
            # acknowledged may be gone), or the URL's next host may be a promoted standby
            # that never received the last commits: either way rows and offsets went back
            # together. Read every owned partition again from what is stored now, not just
            # this batch's: a quiet partition would otherwise keep its lost tail missing.
            self._resync(sorted(set(moves) | self.parts.owned))
            return
        except Exception:  # noqa: BLE001 - last resort: rows are isolated in the writer; keep running
            log.exception("batch failed unexpectedly; rolled back, will be retried", offsets=_ranges(moves))
            metrics.BATCH_FAILURES.labels("internal").inc()
            self._resync(list(moves))
            self._retry_pause = min(max(self._retry_pause * 2, 0.5), 30.0)
            self.stop_event.wait(self._retry_pause)
            return
        self._retry_pause = 0.0
        self.offsets.advanced(moves)  # (a dry run's too: inside its open transaction they moved)
        self._account(inflight, result, sent)
        self._faults.hit("after-commit")
        self._committed(moves)

    def _account(self, inflight: _InFlight, result: WriteResult, sent: list[Reject]) -> None:
        """Summary, metrics and the log line of a committed batch."""
        now = time.monotonic()
        s = self.summary
        s.last_commit_at = now
        s.batches += 1
        s.inserted += result.inserted
        s.duplicates += result.duplicates
        s.dead_lettered += len(sent)
        self.observer.database(True)
        metrics.BATCH_COMMIT_SECONDS.observe(now - inflight.submitted)
        unmapped: dict[str, int] = {}
        for reject in inflight.batch.rejects:
            topic = cast(str, reject.msg.topic())
            unmapped[topic] = unmapped.get(topic, 0) + 1
        dead = [(cast(str, r.msg.topic()), r.reason) for r in sent]
        self.observer.committed(inflight.batch.tables, result, dead, inflight.moves, unmapped)
        if result.duplicates:
            log.info("duplicate events skipped", duplicates=result.duplicates)
        log.debug(
            "batch committed", rows=result.inserted, duplicates=result.duplicates, dead_lettered=len(sent),
            offsets=_ranges(inflight.moves), commit_ms=round((now - inflight.submitted) * 1000, 1),
        )  # fmt: skip

    def _flush(self) -> None:
        self._submit()
        self._await()

    def _database_returned(self) -> None:
        """A health ping failed and then reached the database again while no batch was in
        flight: the server may be a promoted standby (or a crashed one) without the last
        commits, and nothing would tell a member with no batch to write. Replace the writer's
        connection and read every owned partition again from what is stored now, as after a
        failed batch."""
        self._returns_seen = self.offsets.returns
        log.warning("database back after a failed health check: owned partitions re-read from the stored offsets")
        self._reconnect_writer()
        self._resync(sorted(self.parts.owned))

    def _resync(self, parts: list[TP]) -> None:
        """After a rolled-back batch: read those partitions again from the stored offsets."""
        owned = [tp for tp in parts if tp in self.parts.owned]
        self._batch.drop(set(owned))
        for tp, off in self.offsets.reload(owned).items():
            self._seek(tp, off)

    def _seek(self, tp: TP, offset: int | None) -> None:
        """Read ``tp`` again from ``offset`` (``Partitions.seek`` says where that is)."""
        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], self.parts.seek(tp, offset)))
        except KafkaException as exc:
            log.warning("seek failed; partition re-read after the next rebalance", tp=_k(tp), error=str(exc))

    def _pause_on_registry(self) -> None:
        """The open batch stopped at an event the registry could not be asked about: read
        its partitions again from there, commit what was decoded before, wait, retry."""
        batch = self._batch
        stops, exc = batch.stalled, batch.stall
        assert exc is not None
        batch.stalled, batch.stall = {}, None
        for tp, off in stops.items():  # before the submit: a failed batch's resync then wins
            self._seek(tp, off)
        wait = self._registry.stalled(stops, exc)
        self._submit()
        self.stop_event.wait(wait)

    def ready(self) -> tuple[bool, str]:
        """For /readyz: broker, database and schema registry reachable."""
        return self.observer.ready(self.parts)

    # ------------------------------------------------------------------ main loop
    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self) -> IngestSummary:
        on_stop_signals(self.request_stop)
        started = time.monotonic()
        finished = threading.Event()
        after_stuck_stop(self.stop_event, finished, self.settings.stop_grace_s, self._cut_database)
        rule = FlushRule(self.settings.batch_max_rows, self.settings.batch_max_ms / 1000, self.settings.batch_adaptive)
        unreachable = ""
        try:
            self._start()
            while not self.stop_event.is_set():
                batch = self._batch
                inflight = self._inflight
                msgs, drained = rule.read(
                    self._consumer, rule.asked(batch.count, self.poll_max),
                    age_s=time.monotonic() - batch.started if batch.ends else None,
                    writer=inflight.future if inflight is not None else None,
                )  # fmt: skip
                now = time.monotonic()
                if msgs:
                    if self.summary.first_event_at is None:
                        self.summary.first_event_at = now
                    self.summary.consumed += self._batch.add_many(msgs)
                    if self._batch.stall is not None:
                        self._pause_on_registry()
                self._registry.check(self.parts)
                batch = self._batch
                writer_free = self._inflight is None or self._inflight.future.done()
                if batch.ends and rule.due(batch.count, now - batch.started, drained=drained, writer_free=writer_free):
                    self._submit()
                elif self._inflight is not None and self._inflight.future.done():
                    self._await()
                self.observer.tick(
                    self._consumer, self.parts.owned, self.offsets.expected, self._batch.pending_timestamps,
                    self.offsets.ping,
                )  # fmt: skip
                if self.offsets.returns != self._returns_seen and self._inflight is None:
                    self._database_returned()
                if self._done(bool(msgs), idle=not self._batch.ends and self._inflight is None):
                    break
            self._flush()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not self.stop_event.is_set():
                raise
            unreachable = first_line(exc)  # asked to stop while the database was away: that is a stop
        finally:
            self.summary.seconds = time.monotonic() - started
            self._close()
            finished.set()
        # one line, also when the database was away at the stop (then the batch in hand
        # rolled back; whoever reads these partitions next starts at the stored offsets)
        away = {"database": f"unreachable, batch in hand not committed: {unreachable}"} if unreachable else {}
        log.info(f"{self.kind} stopped", **self.summary.report(), **away)
        return self.summary

    def _cut_database(self) -> None:
        """Stopping, and the batch in hand did not commit within ``stop_grace_s``: a
        database that does not answer must not keep the process. Cut its links: the calls
        blocked on them fail at once, the transaction rolls back."""
        sever(self._conn)
        self.offsets.sever()

    def _close(self) -> None:
        try:
            self._await()
        except Exception:  # noqa: BLE001 - closing anyway; offsets were not advanced
            pass
        self._closing()
        try:
            self._consumer.close()  # leaves the group: partitions move at once
        except (KafkaException, RuntimeError, psycopg.Error):  # a revoke's flush while the database is away
            pass
        self._pool.shutdown(wait=True)
        self._dlq.close()
        self._conn.close()
        self.offsets.close()

    # ------------------------------------------------------------------ the driver's hooks
    kind = "ingest"  # for log lines
    # which decoded events to keep (a skipped one still moves the offsets); None: all.
    # A driver sets it before this class's __init__ runs.
    event_filter: Callable[[Message, dict[str, Any]], bool] | None = None

    def _start(self) -> None:
        """Subscribe or assign; called once, before the loop."""
        raise NotImplementedError

    def _done(self, got_messages: bool, *, idle: bool) -> bool:
        """After each loop turn: whether to stop (``idle``: nothing held, nothing in flight)."""
        raise NotImplementedError

    def _at_end(self, topic: str, partition: int, high_watermark: int) -> None:
        """End of partition reached (only where the driver enabled ``enable.partition.eof``)."""

    def _committed(self, moves: Moves) -> None:
        """A batch committed (called in the loop's thread)."""

    def _writer_reconnected(self) -> None:
        """The writer's connection was replaced after a database error."""

    def _closing(self) -> None:
        """The loop ended; the consumer is still open."""


def _ranges(moves: Moves) -> dict[str, list[int | None]]:
    """topic[partition] -> [first offset, end offset) of a batch, for log lines."""
    return {_k(tp): [start, end] for tp, (start, end) in moves.items()}


def _k(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


def fmt_parts(parts: list[TP]) -> dict[str, list[int]]:
    """Partitions grouped by topic, for compact log lines."""
    out: dict[str, list[int]] = {}
    for t, p in sorted(parts):
        out.setdefault(t, []).append(p)
    return out
