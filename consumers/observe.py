"""What an ingest consumer tells the outside: metrics after each batch, lag and readiness.

Kept out of the hot path: per-event figures (end-to-end latency) are sampled at commit
time, one event in ``SAMPLE``; lag and health are refreshed every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from gatestream.consumers import metrics
from gatestream.consumers.batch_writer import TableBatch, WriteResult
from gatestream.consumers.transcoder import row_time_ms
from gatestream.kafka_access import AUTHORIZATION_FAILURES, is_authorization_error
from gatestream.kafka_log import ClientLog

log = structlog.get_logger("gatestream.ingest")

if TYPE_CHECKING:
    from gatestream.consumers.partitions import Partitions

SAMPLE = 16
REFUSED_FOR_S = 30.0  # unready this long after the last authorization failure
TP = tuple[str, int]


class IngestObserver:
    def __init__(
        self, group: str, time_index: dict[str, int], *, enabled: bool = True, every_s: float = 2.0,
        client: str = "ingest",
    ) -> None:  # fmt: skip
        """``time_index``: per topic, where the event time sits in a row; ``client``: the
        consumer's kind, the label of its broker-reachability metric."""
        self.group = group
        self.time_index = time_index
        self.enabled = enabled
        self.every_s = every_s
        self.broker_ok = True
        self.broker_error = ""
        self.db_ok = True
        self.db_error = ""
        self.registry_ok = True
        self.registry_error = ""
        self._next_tick = 0.0
        self._lagging_since: dict[TP, float] = {}
        self.kafka_log = ClientLog(client)  # the consumer's librdkafka ``logger``
        self.refused_at: float | None = None  # the last authorization failure (monotonic)
        self.refused_error = ""

    # ------------------------------------------------------------------ health
    def consumer_error(self, err: KafkaError) -> None:
        """An error event among the consumed messages. A refusal (an ACL taken away) is an
        outage: nothing is read from that partition, so nothing is lost or dead-lettered;
        librdkafka asks again, and the process is unready until REFUSED_FOR_S pass without one."""
        if is_authorization_error(err):
            self._refused(err, "consume")
        else:
            log.warning("consumer error", error=str(err))

    def _refused(self, err: KafkaError, operation: str) -> None:
        AUTHORIZATION_FAILURES.labels(operation).inc()
        now = time.monotonic()
        if self.refused_at is None or now - self.refused_at >= REFUSED_FOR_S:
            log.error("Kafka refused this consumer: waiting for an ACL (gatestream kafka acls ensure)", error=str(err))
        self.refused_at, self.refused_error = now, str(err)

    def kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: all brokers down makes the process unready; so does a refusal."""
        if is_authorization_error(err):
            self._refused(err, "consume")
            return
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.broker_ok = False
            self.broker_error = str(err)
            self.kafka_log.unreachable()

    def database(self, ok: bool, error: str = "") -> None:
        self.db_ok, self.db_error = ok, error

    def registry(self, ok: bool, error: str = "") -> None:
        self.registry_ok, self.registry_error = ok, error

    def ready(self, parts: Partitions) -> tuple[bool, str]:
        """Ready = can work: broker, database and (when ingest needs it) the schema
        registry reachable. Owning no partitions is not a
        fault (a standby member, or between rebalances) and must not flap readiness."""
        if not self.db_ok:
            return False, f"database unreachable: {self.db_error}"
        if not self.broker_ok:
            return False, f"broker unreachable: {self.broker_error}"
        if not self.registry_ok:
            return False, f"schema registry unreachable, ingest paused: {self.registry_error}"
        if self.refused_at is not None and time.monotonic() - self.refused_at < REFUSED_FOR_S:
            return False, f"Kafka refused this consumer (an ACL is missing), waiting: {self.refused_error}"
        return True, f"ok: {len(parts.owned)} partitions assigned"

    # ------------------------------------------------------------------ per batch
    def committed(
        self, tables: dict[str, TableBatch], result: WriteResult, dead: list[tuple[str, str]],
        moves: dict[TP, tuple[int | None, int]], unmapped: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        """``unmapped``: per topic, events of the batch that never became rows (undecodable,
        unmappable): consumed all the same."""
        if not self.enabled:
            return
        now = time.time()
        metrics.LAST_COMMIT_TIMESTAMP.labels(self.group).set(now)
        metrics.BATCH_ROWS.observe(result.inserted + result.duplicates)
        for name, n in result.inserted_by_table.items():
            metrics.ROWS_INSERTED.labels(name).inc(n)
        for name, n in result.duplicates_by_table.items():
            if n:
                metrics.DUPLICATES.labels(name).inc(n)
        for topic, reason in dead:
            metrics.DEAD_LETTERED.labels(topic, reason).inc()
        for topic, tb in tables.items():
            consumed = len(tb.rows) + (unmapped or {}).get(topic, 0)
            if consumed:
                metrics.EVENTS_CONSUMED.labels(topic).inc(consumed)
            if not tb.rows:
                continue
            ti = self.time_index.get(topic, -1)
            ev_hist = metrics.EVENT_TO_COMMIT_SECONDS.labels(topic)
            br_hist = metrics.BROKER_TO_COMMIT_SECONDS.labels(topic)
            for i in range(0, len(tb.rows), SAMPLE):
                msg = tb.origins[i]
                ts_type, ts = msg.timestamp()
                if ts_type:
                    br_hist.observe(max(0.0, now - ts / 1000))
                t = row_time_ms(tb.rows[i], ti) if ti >= 0 else None
                if isinstance(t, int):
                    ev_hist.observe(max(0.0, now - t / 1000))

    def decode_error(self, topic: str, reason: str) -> None:
        if self.enabled:
            metrics.DECODE_ERRORS.labels(topic, reason).inc()

    # ------------------------------------------------------------------ every few seconds
    def tick(
        self, consumer: Any, owned: set[TP], stored: Mapping[TP, int | None],
        pending_fn: Callable[[], dict[TP, float]], db_ping: Callable[[], Any],
    ) -> None:  # fmt: skip
        """Refresh lag gauges and health, every ``every_s``. ``stored``: the next offset in
        the database per owned partition; ``pending_fn``: broker timestamp of the oldest
        uncommitted event per partition in hand."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + self.every_s
        try:
            db_ping()
            self.database(True)
        except Exception as exc:  # psycopg errors: the database is down or the link broke
            self.database(False, str(exc).strip()[:200])
        try:
            consumer.list_topics(timeout=1.0)
            self.broker_ok, self.broker_error = True, ""
            self.kafka_log.reachable()
        except KafkaException as exc:
            self.broker_ok, self.broker_error = False, str(exc)[:200]
            self.kafka_log.unreachable()
        if not self.enabled:
            return
        wall = time.time()
        pending = pending_fn()
        for tp in list(owned):
            topic, partition = tp
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            done = stored.get(tp)
            lag = max(0, high - (done if done is not None else max(low, 0)))
            metrics.LAG_MESSAGES.labels(self.group, topic, str(partition)).set(lag)
            if lag == 0:
                self._lagging_since.pop(tp, None)
                secs = 0.0
            elif tp in pending:  # the oldest uncommitted event is in hand: its age is known
                secs = max(0.0, wall - pending[tp])
            else:  # not fetched yet: at least as old as the lag we have been seeing
                secs = max(0.0, wall - self._lagging_since.setdefault(tp, wall))
            metrics.LAG_SECONDS.labels(self.group, topic, str(partition)).set(secs)

    def forget(self, parts: list[TP]) -> None:
        for topic, partition in parts:
            for g in (metrics.LAG_MESSAGES, metrics.LAG_SECONDS):
                try:
                    g.remove(self.group, topic, str(partition))
                except KeyError:
                    pass
            self._lagging_since.pop((topic, partition), None)
