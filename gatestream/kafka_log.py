"""A Kafka client's own log lines and errors (librdkafka's), summarized, and whether it
reaches the broker as a metric.

With the broker away, librdkafka reports each failed connection attempt: about twenty
"Connection refused" lines a second per consumer. ``ClientLog`` is a client's
``logger`` (every gatestream client's, see ``gatestream.kafka.base_config``):

- a warning or error is logged at full detail the first time;
- what comes after it is counted: at most one line per ``interval_s`` says how many
  came meanwhile (and the last of them);
- the end: where the caller can tell that the broker answers again (``reachable``, the
  ingest and replay consumers' health check), one line "broker reachable again after
  N s, M errors suppressed"; otherwise the episode ends after ``interval_s`` without
  an error, and its remaining count goes out with the next error's line.

Lines below warning pass through. With ``client`` set (a kind: ingest, replay; a few
values, never an id), ``gatestream_kafka_broker_up{client}`` is 0 from the first error
that says the broker cannot be reached (``error_cb``, ``unreachable``) until
``reachable``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError
from prometheus_client import Gauge

BROKER_UP = Gauge(
    "gatestream_kafka_broker_up",
    "1 while this process's Kafka client reaches the broker, 0 from its first connection error until the broker "
    "answers again.",
    ["client"],
)
UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
INTERVAL_S = 30.0


class ErrorSummary:
    """Repeated errors of one source: the first at full detail, then a count per interval."""

    def __init__(
        self, log: Any, *, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self.interval_s = interval_s
        self._clock = clock
        self.since: float | None = None  # the episode's first error
        self.suppressed = 0  # errors of the episode not logged one by one
        self._line_at = 0.0  # the episode's last line
        self._last_at = 0.0  # its last error
        self._pending = 0  # errors since its last line
        self._last = ""

    def error(self, level: int, message: str) -> None:
        now = self._clock()
        if self.since is not None and now - self._last_at >= self.interval_s:
            self._close()  # the previous errors had stopped
        self._last_at = now
        if self.since is None:
            self.since = self._line_at = now
            self._log.log(level, message)
            return
        self.suppressed += 1
        self._pending += 1
        self._last = message
        if now - self._line_at >= self.interval_s:
            self._log.warning(
                f"Kafka client errors go on: {self._pending} more in {now - self._line_at:.0f} s",
                repeated=self._pending, suppressed=self.suppressed, for_s=round(now - self.since), last=message,
            )  # fmt: skip
            self._line_at, self._pending = now, 0

    def _close(self) -> None:
        if self._pending and self.since is not None:
            self._log.warning(
                f"Kafka client errors stopped after {self._last_at - self.since:.0f} s, {self.suppressed} suppressed",
                repeated=self._pending, suppressed=self.suppressed, last=self._last,
            )  # fmt: skip
        self.since, self.suppressed, self._pending, self._last = None, 0, 0, ""

    def recovered(self, down_since: float | None = None) -> None:
        """The source works again: one line with how long it did not and what was left out."""
        starts = [t for t in (self.since, down_since) if t is not None]
        if starts:
            down_s = self._clock() - min(starts)
            self._log.info(
                f"broker reachable again after {down_s:.0f} s, {self.suppressed} errors suppressed",
                down_s=round(down_s, 1), suppressed=self.suppressed,
            )  # fmt: skip
        self.since, self.suppressed, self._pending, self._last = None, 0, 0, ""


class ClientLog:
    """One Kafka client's ``logger`` (and, with ``client``, its broker reachability)."""

    def __init__(
        self, client: str | None = None, *, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self._clock = clock
        self._out = structlog.get_logger("librdkafka").bind(logger="librdkafka")
        self.summary = ErrorSummary(self._out, interval_s=interval_s, clock=clock)
        self.down_since: float | None = None
        self._lock = threading.Lock()
        if client is not None:
            BROKER_UP.labels(client).set(1)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """librdkafka's log callback (confluent-kafka calls ``logger.log``)."""
        message = fmt % args if args else fmt
        if level < logging.WARNING:
            self._out.log(level, message)
            return
        with self._lock:
            self.summary.error(level, message)

    def error(self, err: KafkaError) -> None:
        """For ``error_cb``: an error that says the broker cannot be reached marks it down."""
        if err.code() in UNREACHABLE:
            self.unreachable()

    def unreachable(self) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = self._clock()
            if self.client is not None:
                BROKER_UP.labels(self.client).set(0)

    def reachable(self) -> None:
        """The broker answered (a metadata request succeeded)."""
        with self._lock:
            if self.down_since is None:  # it never said it could not reach it
                return
            self.summary.recovered(self.down_since)
            self.down_since = None
            if self.client is not None:
                BROKER_UP.labels(self.client).set(1)
