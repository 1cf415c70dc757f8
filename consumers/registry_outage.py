"""Ingest paused on the schema registry: an event carries a schema id the consumer has
not met yet, and the registry cannot say what it is (refused, timed out, 5xx).

That is an outage, like the database's, not the event's fault: the pipeline reads the
partitions again from where decoding stopped (``MicroBatch.stalled``), commits what was
decoded before, and waits — stop-aware, backing off — before trying again. Meanwhile the
process is not ready (``/readyz``), ``gatestream_schema_registry_up`` is 0, and the log
has one line when it starts, one per ``LOG_EVERY_S`` while it lasts and one when it
ends (when every partition it stopped got past its stop, or was given away).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from gatestream.consumers import metrics
from gatestream.consumers.decoder import RegistryUnavailable
from gatestream.consumers.partitions import Partitions

log = structlog.get_logger("gatestream.ingest")

TP = tuple[str, int]
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0
LOG_EVERY_S = 30.0


class RegistryOutage:
    def __init__(self, on_change: Callable[[bool, str], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        """``on_change(ok, error)``: readiness follows (``IngestObserver.registry``)."""
        self._on_change = on_change
        self._clock = clock
        self.stops: dict[TP, int] = {}  # partition -> the offset it waits to get past
        self.since: float | None = None
        self._wait = 0.0
        self._logged_at = 0.0
        self._attempts = 0
        metrics.SCHEMA_REGISTRY_UP.set(1)

    def stalled(self, stops: dict[TP, int], exc: RegistryUnavailable) -> float:
        """Reading stopped at ``stops`` because of ``exc``; returns how long to wait."""
        now = self._clock()
        metrics.SCHEMA_REGISTRY_ERRORS.inc()
        self._attempts += 1
        for tp, off in stops.items():
            self.stops[tp] = min(off, self.stops.get(tp, off))
        self._wait = min(max(self._wait * 2, FIRST_WAIT_S), MAX_WAIT_S)
        error = str(exc)[:300]
        if self.since is None:
            self.since = self._logged_at = now
            metrics.SCHEMA_REGISTRY_UP.set(0)
            self._on_change(False, error)
            log.error(
                "schema registry unreachable; ingest paused, the same events will be read again",
                error=error, waiting_at={f"{t}[{p}]": o for (t, p), o in sorted(stops.items())},
            )  # fmt: skip
        elif now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            self._on_change(False, error)
            log.warning(
                "schema registry still unreachable; ingest paused",
                error=error, down_s=round(now - self.since), attempts=self._attempts,
            )  # fmt: skip
        return self._wait

    def check(self, parts: Partitions) -> None:
        """After a loop turn: a partition that read past its stop, or that this member no
        longer owns, waits no more; when none waits, the outage is over."""
        if not self.stops:
            return
        nxt, owned = parts.next, parts.owned
        for tp, off in list(self.stops.items()):
            if tp not in owned or nxt.get(tp, off) > off:
                del self.stops[tp]
        if self.stops or self.since is None:
            return
        down_s = self._clock() - self.since
        log.info(
            f"schema registry reachable again after {down_s:.0f} s; ingest resumed",
            down_s=round(down_s, 1), attempts=self._attempts,
        )  # fmt: skip
        self.since, self._wait, self._attempts = None, 0.0, 0
        metrics.SCHEMA_REGISTRY_UP.set(1)
        self._on_change(True, "")
