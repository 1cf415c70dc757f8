"""The native decode path: a consume() batch -> binary COPY tuples, decoded in one call without the GIL.

``BatchTranscoder.add`` is ``MicroBatch.add_many``'s loop in C (``native/transcode.c``):
per message it appends to the table's rows the COPY tuple (``bytes``: what psycopg's
``write_row`` would write for the row the Python path makes, byte for byte) and moves
the partition's offsets as the Python path does. Any message it does not handle exactly
(an error event or partition end, a schema id not yet met, malformed Avro, an implausible
time, a value a column cannot take, ...) is handed, in its place in the order, to the
Python path for that one message (``MicroBatch``'s ``consumers.decoder`` path), so it
gets today's row or today's dead letter, reason and detail included. The native code only
has to be right where it says yes; the differential unit tests
(tests/unit/test_transcoder.py, tests/unit/test_native_batch.py) hold it to that.

Plans (``consumers.avro_plan``) are compiled per (topic, writer schema id) once the
topic's ``Decoder`` knows the id; a schema id met for the first time takes the Python
path in that call (which fetches it from the registry) and the native one afterwards.

``gatestream.consumers._transcode`` is the optional C extension (``native/transcode.c``,
built by ``pip install``); without it everything takes the Python path, and
``native_status()`` says why (logged once when a pipeline starts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gatestream.consumers.avro_plan import PG_EPOCH_MS, Unsupported, compile_plan
from gatestream.consumers.decoder import Decoder
from gatestream.consumers.partitions import Partitions
from gatestream.consumers.pgtypes import strip_logical_types

TP = tuple[str, int]

log = structlog.get_logger("gatestream.ingest")

try:
    from gatestream.consumers import _transcode  # type: ignore[attr-defined]

    _WHY_NOT = ""
except ImportError as _exc:  # no compiler where it was installed, or a pure-Python build
    _transcode = None
    _WHY_NOT = f"{type(_exc).__name__}: {_exc}"


def native_status() -> tuple[bool, str]:
    """Whether the native transcoder is importable, and if not, why."""
    return _transcode is not None, _WHY_NOT


LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


class BatchTranscoder:
    """Per pipeline: the plans of its routes, and the batch call."""

    def __init__(
        self,
        routes: Mapping[str, Any],
        *,
        earliest_ms: int | None,
        max_future_ms: int | None,
        id_fields: tuple[str, ...],
    ) -> None:
        """``routes``: topic -> ``consumers.routes.Route``; only routes read by a real
        ``Decoder`` are transcoded. ``earliest_ms``/``max_future_ms``: the plausibility
        window (None: no plausibility checks), ``id_fields`` those checked for > 0."""
        self.routes = {t: r for t, r in routes.items() if type(r.decoder) is Decoder}
        self.earliest_ms, self.max_future_ms = earliest_ms, max_future_ms
        self.id_fields = id_fields if earliest_ms is not None else ()
        self.plans: dict[str, dict[int, Any]] = {t: {} for t in self.routes}
        self._compiled: dict[str, dict[int, Any]] = {t: {} for t in self.routes}
        self._generation: dict[str, int] = {}

    def add(
        self, msgs: list[Any], now_ms: int, parts: Partitions, ends: dict[TP, int],
        sinks: dict[str, tuple[list[Any], list[Any]]], fallback: Callable[[int], int],
    ) -> tuple[int, int]:  # fmt: skip
        """``MicroBatch.add_many``'s loop (see ``native/transcode.c``, ``add``): rows appended
        to ``sinks`` (topic -> the table batch's rows and origins), ``parts.next`` and
        ``ends`` moved; ``fallback(i)``: the Python path for ``msgs[i]`` (events read, or -1:
        stop). Returns (events read, rows appended natively)."""
        self._sync()
        if self.earliest_ms is None or self.max_future_ms is None:
            lo, hi = LONG_MIN, LONG_MAX
        else:
            lo, hi = self.earliest_ms, min(LONG_MAX, now_ms + self.max_future_ms)
        read, added = _transcode.add(
            msgs, self.plans, lo, hi, bool(self.id_fields), parts.owned, parts.next, parts.ends, ends, sinks, fallback
        )
        return int(read), int(added)

    def _sync(self) -> None:
        """Plans for the schema ids the decoders have met since the last call."""
        for topic, route in self.routes.items():
            dec: Decoder = route.decoder
            if self._generation.get(topic) == dec.generation:
                continue
            self._generation[topic] = dec.generation
            compiled = self._compiled[topic]
            plans: dict[int, Any] = {}
            for sid, (writer, same) in dec.known_writers().items():
                if sid not in compiled:
                    compiled[sid] = self._compile(route, sid, writer, None if same else dec.reader_raw)
                if compiled[sid] is not None:
                    plans[sid] = compiled[sid]
            for sid in [s for s in compiled if s not in plans and compiled[s] is not None]:
                del compiled[sid]  # forgotten by the decoder's bounded cache
            self.plans[topic] = plans

    def _compile(self, route: Any, sid: int, writer: dict[str, Any], reader: dict[str, Any] | None) -> Any:
        spec = route.spec
        try:
            plan = compile_plan(
                strip_logical_types(writer),
                strip_logical_types(reader) if reader is not None else None,
                spec.columns, spec.type_oids, route.time_field, self.id_fields,
            )  # fmt: skip
        except Unsupported as exc:
            log.info("schema id decoded in Python (not expressible natively)", topic=route.topic, schema_id=sid,
                     why=str(exc))  # fmt: skip
            return None
        return None if plan is None else _transcode.plan(plan.codes, plan.consts)


def make_transcoder(
    routes: Mapping[str, Any], *, earliest_ms: int | None, max_future_ms: int | None, id_fields: tuple[str, ...]
) -> BatchTranscoder | None:
    """A ``BatchTranscoder`` where the extension is available (else None)."""
    if _transcode is None:
        return None
    return BatchTranscoder(routes, earliest_ms=earliest_ms, max_future_ms=max_future_ms, id_fields=id_fields)


def text_encoding_problem(server_encoding: str | None, client_encoding: str | None) -> str | None:
    """Why the native path cannot write this connection's text, or None. It writes text
    columns as the UTF-8 bytes of the Avro string: a server that does not store UTF-8, or
    a connection whose client_encoding is not UTF-8 (the server converts from it), would
    store other characters than the event's. (``client_encoding``: psycopg's
    ``conn.info.encoding``, a Python codec name.)"""
    if (server_encoding or "").upper() not in ("UTF8", "UTF-8"):
        return f"the database's server_encoding is {server_encoding}, not UTF8"
    if (client_encoding or "").lower().replace("_", "-") not in ("utf-8", "utf8"):
        return f"the connection's client_encoding is {client_encoding}, not UTF8"
    return None


def choose_path(mode: str, filtered: bool, server_encoding: str | None, client_encoding: str | None) -> str | None:
    """Why a pipeline decodes in Python, or None where the native path runs: ``mode`` is
    GATESTREAM_NATIVE_DECODE, ``filtered`` whether the run filters events by their records."""
    if mode == "off":
        return "GATESTREAM_NATIVE_DECODE=off"
    if _transcode is None:
        return f"the native transcoder is not built ({_WHY_NOT})"
    if filtered:
        return "this run filters events by their decoded records"
    return text_encoding_problem(server_encoding, client_encoding)


def row_time_ms(row: Any, index: int) -> int | None:
    """The event time (Unix ms) in column ``index`` of a row: a tuple's wire value, or a
    COPY tuple's timestamptz (metrics only: None where it cannot be read)."""
    if not isinstance(row, bytes):
        t = row[index]
        return t if isinstance(t, int) else None
    at = 2
    for _ in range(index):
        size = int.from_bytes(row[at : at + 4], "big", signed=True)
        at += 4 + max(size, 0)
    if row[at : at + 4] != b"\x00\x00\x00\x08":
        return None
    return int.from_bytes(row[at + 4 : at + 12], "big", signed=True) // 1000 + PG_EPOCH_MS
