"""A micro-batch in the making: messages read, decoded and mapped to rows per table.

Messages from before a revoke or a seek, and past the end of a bounded range, are left
out; undecodable ones are kept as rejects for the dead-letter topic; the batch records,
per partition, the offset it moves to (the end of what it read, filtered events included).
An event whose schema the registry could not be asked about stops the batch there: it
records, per partition, the first offset it did not read (``stalled``), for the
pipeline to read again from there once the registry answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import structlog
from confluent_kafka import KafkaError, Message

from gatestream.consumers.batch_writer import TableBatch
from gatestream.consumers.deadletter import Reason, Reject, iso_ms
from gatestream.consumers.decoder import DecodeError, RegistryUnavailable
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.routes import Route
from gatestream.consumers.transcoder import BatchTranscoder

log = structlog.get_logger("gatestream.ingest")

TP = tuple[str, int]


@dataclass(frozen=True)
class Plausibility:
    """What a database should not keep, refused before the COPY: event times before
    ``earliest_ms`` or more than ``max_future_ms`` ahead of now (absurd chunks, values
    our own tools cannot read back), and organization or device ids of 0 or below."""

    earliest_ms: int
    max_future_ms: int
    ID_FIELDS: ClassVar[tuple[str, ...]] = ("organization_id", "users_on_computers_id")

    def problem(self, time_field: str, record: dict[str, Any], now_ms: int) -> tuple[str, str] | None:
        t = record.get(time_field)
        if isinstance(t, int) and not self.earliest_ms <= t <= now_ms + self.max_future_ms:
            return Reason.EVENT_TIME_OUT_OF_RANGE, self._out_of_range(time_field, t, now_ms)
        for name in self.ID_FIELDS:
            v = record.get(name)
            if isinstance(v, int) and v <= 0:
                return Reason.INVALID_IDENTIFIER, f"{name} = {v}"
        return None

    def _out_of_range(self, time_field: str, t: int, now_ms: int) -> str:
        """Why, in times a person reads, and the setting that widens the window."""
        if t < self.earliest_ms:
            return (
                f"{time_field} = {iso_ms(t)} is before the earliest accepted event time {iso_ms(self.earliest_ms)}; "
                "to accept it, set GATESTREAM_EARLIEST_EVENT_TIME earlier"
            )
        return (
            f"{time_field} = {iso_ms(t)} is {(t - now_ms) / 1000:.0f} s ahead of the consumer's clock "
            f"({iso_ms(now_ms)}), more than the accepted {self.max_future_ms / 1000:.0f} s; to accept it, "
            "raise GATESTREAM_MAX_FUTURE_SKEW_S"
        )


class MicroBatch:
    def __init__(
        self,
        routes: dict[str, Route],
        parts: Partitions,
        *,
        plausible: Plausibility | None = None,
        accept: Callable[[Message, dict[str, Any]], bool] | None = None,
        on_end: Callable[[str, int, int], None] | None = None,
        on_decode_error: Callable[[str, str], None] | None = None,
        native: BatchTranscoder | None = None,
        on_consumer_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        """``native``: the native decode path (``consumers.transcoder``), for the events it
        handles; the others (and all, with an ``accept`` filter, which needs records) take
        the Python path below."""
        self.routes = routes
        self.native = native if accept is None else None
        self.parts = parts
        self.plausible = plausible
        self.accept = accept
        self.on_end = on_end
        self.on_decode_error = on_decode_error
        self.on_consumer_error = on_consumer_error  # an error event of the consumer (not EOF); default: logged
        self.tables = {t: TableBatch(r.spec) for t, r in routes.items()}
        self.ends: dict[TP, int] = {}
        self.rejects: list[Reject] = []
        self.count = 0
        self.started = 0.0
        self.stalled: dict[TP, int] = {}  # where reading stopped, per partition (see stall)
        self.stall: RegistryUnavailable | None = None

    def add_many(self, msgs: list[Message]) -> int:
        """Add what is ours of ``msgs``; return how many events were read (errors and stale excluded)."""
        now_ms = int(time.time() * 1000)
        if not self.ends:
            self.started = time.monotonic()
        if self.native is not None:  # the loop in C; each message it does not handle: _add_python for it
            sinks = {t: (tb.rows, tb.origins) for t, tb in self.tables.items()}

            def fallback(i: int) -> int:
                read, stopped = self._add_python(msgs, i, i + 1, now_ms)
                return -1 if stopped else read

            read, added = self.native.add(msgs, now_ms, self.parts, self.ends, sinks, fallback)
            self.count += added
            return read
        return self._add_python(msgs, 0, len(msgs), now_ms)[0]

    def _add_python(self, msgs: list[Message], start: int, stop: int, now_ms: int) -> tuple[int, bool]:
        """``msgs[start:stop]`` on the Python path: (events read, whether reading stopped there)."""
        routes, accept, plausible = self.routes, self.accept, self.plausible
        owned, nxt, limits = self.parts.owned, self.parts.next, self.parts.ends
        tables, ends, rejects = self.tables, self.ends, self.rejects
        added = read = 0
        stopped = False
        for i in range(start, stop):
            msg = msgs[i]
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if self.on_end is not None:
                        self.on_end(cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset()))
                elif self.on_consumer_error is not None:
                    self.on_consumer_error(err)
                else:
                    log.warning("consumer error", error=str(err))
                continue
            topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
            tp = (topic, partition)
            if tp not in owned or offset < nxt.get(tp, 0):
                continue  # from before a revoke or a seek: not ours to write
            if limits:
                end = limits.get(tp)
                if end is not None and offset >= end:
                    continue  # past the end of a bounded range: not read, as far as anyone counts
            route = routes[topic]
            try:
                record = route.decoder.decode(msg.value())
            except RegistryUnavailable as exc:
                self._stop_at(msgs, i, exc)
                stopped = True
                break
            except DecodeError as exc:
                read += 1
                nxt[tp] = ends[tp] = offset + 1
                rejects.append(Reject(msg, exc.reason, exc.detail, _cause(exc)))
                if self.on_decode_error is not None:
                    self.on_decode_error(topic, exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure of one event is that event's, never the batch's
                read += 1
                nxt[tp] = ends[tp] = offset + 1
                rejects.append(Reject(msg, Reason.UNMAPPABLE, f"{type(exc).__name__}: {exc}", type(exc).__name__))
                continue
            read += 1
            nxt[tp] = ends[tp] = offset + 1
            try:
                if accept is not None and not accept(msg, record):
                    continue
                if plausible is not None and (bad := plausible.problem(route.time_field, record, now_ms)):
                    rejects.append(Reject(msg, *bad))
                    continue
                row = route.spec.row_of(record)
            except Exception as exc:  # noqa: BLE001 - any failure of one event is that event's, never the batch's
                rejects.append(Reject(msg, Reason.UNMAPPABLE, f"{type(exc).__name__}: {exc}", type(exc).__name__))
                continue
            tb = tables[topic]
            tb.rows.append(row)
            tb.origins.append(msg)
            added += 1
        self.count += added
        return read, stopped

    def _stop_at(self, msgs: list[Message], i: int, exc: RegistryUnavailable) -> None:
        """Decoding ``msgs[i]`` needs the registry, which cannot answer: nothing from
        there on is read. Record, per partition, the first offset of ``msgs[i:]`` to read
        again (messages of other partitions included: they were not read either)."""
        owned, nxt, limits = self.parts.owned, self.parts.next, self.parts.ends
        stalled = self.stalled
        for msg in msgs[i:]:
            if msg.error() is not None:
                continue
            tp = (cast(str, msg.topic()), cast(int, msg.partition()))
            offset = cast(int, msg.offset())
            end = limits.get(tp) if limits else None
            if tp in owned and offset >= nxt.get(tp, 0) and tp not in stalled and (end is None or offset < end):
                stalled[tp] = offset
        self.stall = exc

    def drop(self, parts: set[TP]) -> None:
        """Forget what the batch holds for ``parts`` (revoked, lost, or to be re-read)."""
        if not parts:
            return
        for tb in self.tables.values():
            keep = [i for i, m in enumerate(tb.origins) if (m.topic(), m.partition()) not in parts]
            if len(keep) != len(tb.rows):
                self.count -= len(tb.rows) - len(keep)
                tb.rows = [tb.rows[i] for i in keep]
                tb.origins = [tb.origins[i] for i in keep]
        self.rejects = [r for r in self.rejects if (r.msg.topic(), r.msg.partition()) not in parts]
        for tp in parts:
            self.ends.pop(tp, None)

    def pending_timestamps(self) -> dict[TP, float]:
        """Broker timestamp (s) of the oldest event held per partition."""
        out: dict[TP, float] = {}
        for tb in self.tables.values():
            for m in tb.origins:
                tp = (cast(str, m.topic()), cast(int, m.partition()))
                if tp not in out:
                    ts_type, ts = m.timestamp()
                    if ts_type:
                        out[tp] = ts / 1000
        return out


def _cause(exc: DecodeError) -> str:
    """The class of what made decoding fail (the DecodeError's cause), else DecodeError."""
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__
