"""Presence and the tenant check: which gateway sent each event of a batch, and is it that gateway's organization.

Runs in the batch's transaction, before its rows are written (``consumers.pipeline``),
so the registry moves exactly with the rows and offsets (a rolled-back batch leaves no
trace; a replayed one changes nothing):

1. each row of an event type that declares presence (``schemas.presence``) names its
   gateway (the record's field, else the ``gatestream.gateway_id`` header the gateway's
   ``Publisher`` stamps), its organization and its agent. Values are read from the row
   itself, a tuple (Python decode path) or a COPY tuple (native path), so both paths
   decide alike. A row that names no gateway carries no presence and is not checked;
2. gateways not in ``monitoring.gateway_instances`` are registered under the
   organization of their first event (``unknown_gateway = register``) or refused
   (``refuse``: dead letter ``unknown-gateway``); an event whose organization is not its
   gateway's is dead-lettered ``tenant-mismatch``: it never becomes a row;
3. the accepted rows are coalesced, one statement for the batch's gateways and one for
   its agents (``gatestream.track_gateways``/``track_agents``, sql/030_presence.sql):
   ``last_seen_at`` only moves forward, a status report (the newest per gateway) sets
   the status and figures only if it is newer than the one they came from and than
   anything seen; a newer event brings an OFFLINE (swept) gateway or agent back ONLINE.
   Rows are locked in id order (no deadlock between members), and only where they change:
   ``last_seen_at`` moves in steps of at least the grain (``GATESTREAM_PRESENCE_GRAIN_S``,
   sql/032_presence_grain.sql), so an agent that speaks in every batch costs a row update
   per grain, not per batch; a status change (back ONLINE) or a newer report applies at once.

Cost: this runs for every event, so the work per row is kept to C-level loops (``bench
presence`` measures it). A table's declared fields are read column-wise: tuples through
one ``itemgetter``, COPY tuples through one precompiled ``struct`` unpack where every
column up to the last one needed is fixed-width (the shipped tables; their lengths are
checked, so a NULL falls back to walking the fields). The check runs once per distinct
(gateway, organization) pair, the newest event per gateway and per agent comes from one
sort of the row indexes by time, and Python-level work (converting values, host names)
is done only for those winners. Values keep each path's raw form (a COPY tuple's uuid
is its 16 bytes, its timestamptz microseconds since 2000) until a winner's is converted
to the wire value the Python path holds, so both paths reach the same decisions.
"""

from __future__ import annotations

import itertools
import json
import operator
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, cast

import psycopg

from gatestream.consumers.avro_plan import PG_EPOCH_MS
from gatestream.consumers.batch_writer import TableBatch
from gatestream.consumers.deadletter import Reason, Reject
from gatestream.schemas.presence import AGENT_HOSTNAME_HEADER, GATEWAY_HEADER, Presence

UnknownGateway = Literal["register", "refuse"]

_INT = {21: 2, 23: 4, 20: 8}  # column type OID -> size of the big-endian integer
_FLOAT8, _BOOL, _UUID, _TSTZ = 701, 16, 2950, 1184
_DOUBLE = struct.Struct(">d")
_chain = itertools.chain.from_iterable
# fixed-width column types a COPY tuple holds at a known offset: struct code, size
_FIXED = {21: ("h", 2), 23: ("i", 4), 20: ("q", 8), _FLOAT8: ("d", 8), _BOOL: ("?", 1), _UUID: ("16s", 16),
          _TSTZ: ("q", 8)}  # fmt: skip


def _from_copy(raw: bytes, oid: int) -> Any:
    """A value of a binary COPY field as the Python path's row holds it (wire values)."""
    if oid in _INT:
        return int.from_bytes(raw, "big", signed=True)
    if oid == _TSTZ:
        return int.from_bytes(raw, "big", signed=True) // 1000 + PG_EPOCH_MS
    if oid == _UUID:
        return str(uuid.UUID(bytes=raw))
    if oid == _FLOAT8:
        return cast(float, _DOUBLE.unpack(raw)[0])
    if oid == _BOOL:
        return raw != b"\x00"
    return raw.decode()


def _same(v: Any) -> Any:
    return v


def _wire_of_fixed(oid: int) -> Callable[[Any], Any]:
    """From a fixed-offset unpack's value to the wire value (None stays None)."""
    if oid == _TSTZ:
        return lambda v: None if v is None else v // 1000 + PG_EPOCH_MS
    if oid == _UUID:
        return lambda v: None if v is None else str(uuid.UUID(bytes=v))
    return _same


class _Reader:
    """Reads the declared fields of one table's rows column-wise, tuples and COPY tuples alike.

    ``columns(rows)`` -> (one sequence per name in ``names``, the converters from those
    values to wire values). Only values a decision uses are converted."""

    def __init__(self, presence: Presence, columns: tuple[str, ...], oids: tuple[int, ...], time_field: str) -> None:
        missing = [f for f in [*presence.fields(), time_field] if f not in columns]
        if missing:
            raise ValueError(f"presence names {missing[0]!r}, not a column of the table")
        self.presence = presence
        self.names = list(dict.fromkeys([time_field, *presence.fields()]))
        self.pos = {n: k for k, n in enumerate(self.names)}
        index = [columns.index(n) for n in self.names]
        self._oids = [oids[i] for i in index]
        self._get = operator.itemgetter(*index)  # (at least two names: the time and the organization)
        self._last = max(index)
        self._wanted = {i: k for k, i in enumerate(index)}
        self._wire: list[Callable[[Any], Any]] = [_same] * len(self.names)  # the tuple path holds wire values already
        self._fixed: tuple[Callable[[bytes], tuple[Any, ...]], int, list[tuple[int, int]], list[int]] | None = None
        self._fixed_wire = [_wire_of_fixed(o) for o in self._oids]
        if all(oids[i] in _FIXED for i in range(self._last + 1)):
            fmt, lengths, at, k = ">2x", [], {}, 0  # k: the next value's place in the unpacked tuple
            for i in range(self._last + 1):  # (a COPY tuple: int16 field count, then length-prefixed fields)
                code, size = _FIXED[oids[i]]
                lengths.append((k, size))
                fmt, k = fmt + "i", k + 1
                if i in self._wanted:
                    at[i], fmt, k = k, fmt + code, k + 1
                else:
                    fmt += f"{size}x"
            self._fixed = (struct.Struct(fmt).unpack_from, k, lengths, [at[i] for i in index])

    def columns(self, rows: list[Any]) -> tuple[list[Sequence[Any]], list[Callable[[Any], Any]]]:
        # Flat lists sliced into columns: no per-row tuple outlives its row (each would be
        # one more object for the garbage collector's passes to walk while the batch lives).
        kinds = set(map(type, rows))
        n = len(rows)
        if kinds == {bytes} and self._fixed is not None:
            unpack, width, lengths, at = self._fixed
            try:
                flat = list(_chain(map(unpack, rows)))
            except struct.error:  # a row too short for the layout: a NULL
                flat = []
            if flat and all(flat[k::width].count(size) == n for k, size in lengths):  # no NULL shifted a field
                return [flat[k::width] for k in at], self._fixed_wire
        if bytes in kinds:  # a layout with variable-width fields first, a NULL, or a batch of both kinds
            flat = list(_chain(self._walk(r) if type(r) is bytes else self._get(r) for r in rows))
        else:
            flat = list(_chain(map(self._get, rows)))
        width = len(self.names)
        return [flat[k::width] for k in range(width)], self._wire

    def _walk(self, row: bytes) -> tuple[Any, ...]:
        out: list[Any] = [None] * len(self.names)
        at, wanted = 2, self._wanted
        for i in range(self._last + 1):
            size = int.from_bytes(row[at : at + 4], "big", signed=True)
            at += 4
            k = wanted.get(i)
            if k is not None and size >= 0:
                out[k] = _from_copy(row[at : at + size], self._oids[k])
            at += max(size, 0)
        return tuple(out)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, UnicodeDecodeError):
        return None


def _header(headers: Any, key: str) -> bytes | None:
    for k, v in headers or ():
        if k == key:
            return cast(bytes | None, v)
    return None


def _gateway_header(headers: Any) -> bytes | None:
    """The gateway header's value (the Publisher stamps it first)."""
    if headers and headers[0][0] == GATEWAY_HEADER:
        return cast(bytes | None, headers[0][1])
    return _header(headers, GATEWAY_HEADER)


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


def _gateway_headers(headers: list[Any]) -> list[bytes | None]:
    """Each message's gateway header value: C-level where every message comes from a Publisher."""
    try:
        firsts = list(map(_FIRST, headers))  # (TypeError: a message without headers)
        if set(map(_FIRST, firsts)) == {GATEWAY_HEADER}:
            return list(map(_SECOND, firsts))
    except (TypeError, IndexError):
        pass
    return [_gateway_header(h) for h in headers]


def _hostname(headers: Any) -> str | None:
    """The agent host name header's value (the Publisher stamps it second)."""
    if headers and len(headers) > 1 and headers[1][0] == AGENT_HOSTNAME_HEADER:
        v = headers[1][1]
    else:
        v = _header(headers, AGENT_HOSTNAME_HEADER)
    return v.decode(errors="replace")[:255] if v else None


_HEADERS = operator.methodcaller("headers")


@dataclass
class _Table:
    """One table's rows as the check sees them (phase one of ``apply``)."""

    topic: str
    reader: _Reader
    tb: TableBatch
    cols: list[Sequence[Any]]
    wire: list[Callable[[Any], Any]]
    gateways: Sequence[Any]  # per row: the gateway as read (header bytes, or the field's raw value)
    ids: dict[Any, uuid.UUID | None]  # distinct gateway as read -> its id (None: not a UUID)
    headers: list[Any] | None
    pairs: set[tuple[Any, Any]] = field(default_factory=set)


class PresenceTracker:
    """Per pipeline: the readers of the routes that declare presence, and the per-batch step."""

    def __init__(
        self, routes: Mapping[str, Any], *, unknown_gateway: UnknownGateway = "register", grain_s: float = 0.0
    ) -> None:
        """``routes``: topic -> ``consumers.routes.Route`` (those with ``presence`` are tracked);
        ``grain_s``: the least step of ``last_seen_at`` worth a row update (0: every newer event)."""
        self.unknown_gateway = unknown_gateway
        self.grain = timedelta(seconds=grain_s)
        self.readers = {
            t: _Reader(r.presence, r.spec.columns, r.spec.type_oids, r.time_field)
            for t, r in routes.items()
            if getattr(r, "presence", None) is not None
        }

    def apply(self, conn: psycopg.Connection[Any], tables: Mapping[str, TableBatch]) -> list[Reject]:
        """Check and track the rows of ``tables`` (refused rows are taken out); the rejects."""
        seen = [self._read(topic, reader, tb) for topic, reader in self.readers.items()
                if (tb := tables.get(topic)) is not None and tb.rows]  # fmt: skip
        first: dict[uuid.UUID, Any] = {}  # each gateway's organization in its first event
        for t in seen:
            k = t.reader.pos[t.reader.presence.organization]
            for key, gw in t.ids.items():
                if gw is not None and gw not in first:
                    first[gw] = t.wire[k](t.cols[k][t.gateways.index(key)])
        orgs = self._organizations(conn, first)
        rejects: list[Reject] = []
        gateways: dict[uuid.UUID, list[Any]] = {}  # id -> [seen_ms, report_ms, status, figures]
        agents: dict[str, tuple[int, Any, str | None]] = {}  # uid -> (seen_ms, gateway, host)
        for t in seen:
            self._track_table(t, self._check(t, orgs, rejects), gateways, agents)
        self._write(conn, gateways, agents, self.grain)
        return rejects

    def _read(self, topic: str, reader: _Reader, tb: TableBatch) -> _Table:
        cols, wire = reader.columns(tb.rows)
        p = reader.presence
        headers = list(map(_HEADERS, tb.origins)) if p.gateway is None or p.agent is not None else None
        if p.gateway is not None:
            gws: Sequence[Any] = cols[reader.pos[p.gateway]]
            to_wire = wire[reader.pos[p.gateway]]
            ids = {k: (None if k is None else _uuid(to_wire(k))) for k in set(gws)}
        else:
            gws = _gateway_headers(cast(list[Any], headers))
            ids = {k: (None if k is None else _uuid(k)) for k in set(gws)}
        t = _Table(topic, reader, tb, cols, wire, gws, ids, headers)
        t.pairs = set(zip(gws, cols[reader.pos[p.organization]], strict=True))
        return t

    def _check(self, t: _Table, orgs: dict[uuid.UUID, int], rejects: list[Reject]) -> list[int] | None:
        """Rejects for the table's refused rows (taken out of it); the indexes of the rows
        to track (None: all of them)."""
        p = t.reader.presence
        org_wire = t.wire[t.reader.pos[p.organization]]
        skip: set[tuple[Any, Any]] = set()  # pairs of rows not tracked: no gateway named
        bad: dict[tuple[Any, Any], tuple[str, str]] = {}  # pairs of rows refused
        for key, o in t.pairs:
            gw = t.ids[key]
            if key is None or (gw is None and p.gateway is not None):
                skip.add((key, o))  # no gateway named (not stamped, or no UUID in the field): no presence, no check
            elif gw is None:
                bad[key, o] = (Reason.UNKNOWN_GATEWAY, f"{GATEWAY_HEADER} header {key[:80]!r} is not a UUID")
            elif (own := orgs.get(gw)) is None:
                bad[key, o] = (Reason.UNKNOWN_GATEWAY, f"gateway {gw} is not registered in "
                               "monitoring.gateway_instances (GATESTREAM_UNKNOWN_GATEWAY=refuse)")  # fmt: skip
            elif (org := org_wire(o)) != own:
                bad[key, o] = (Reason.TENANT_MISMATCH, f"{p.organization} = {org}, but gateway {gw} belongs to "
                               f"organization {own}")  # fmt: skip
        if not skip and not bad:
            return None
        org_col = t.cols[t.reader.pos[p.organization]]
        pairs = list(zip(t.gateways, org_col, strict=True))
        track = [i for i, pair in enumerate(pairs) if pair not in skip and pair not in bad]
        if bad:
            tb = t.tb
            gone = [i for i, pair in enumerate(pairs) if pair in bad]
            rejects += [Reject(tb.origins[i], *bad[pairs[i]]) for i in gone]
            drop = set(gone)
            keep = [i for i in range(len(tb.rows)) if i not in drop]
            tb.rows = [tb.rows[i] for i in keep]
            tb.origins = [tb.origins[i] for i in keep]
        return track

    @staticmethod
    def _track_table(
        t: _Table, track: list[int] | None, gateways: dict[uuid.UUID, list[Any]],
        agents: dict[str, tuple[int, Any, str | None]],
    ) -> None:  # fmt: skip
        """Coalesce the tracked rows into ``gateways`` and ``agents`` (the newest per each)."""
        r, p = t.reader, t.reader.presence
        times, to_ms = t.cols[0], t.wire[0]
        order = sorted(range(len(times)) if track is None else track, key=times.__getitem__)
        if not order:
            return
        gws, ids = t.gateways, t.ids
        newest = dict(zip(map(gws.__getitem__, order), order, strict=True))  # gateway -> its newest row
        for key, i in newest.items():
            gw, ms = cast(uuid.UUID, ids[key]), to_ms(times[i])
            g = gateways.setdefault(gw, [ms, None, None, None])
            if ms > g[0]:
                g[0] = ms
            if p.report is not None and (g[1] is None or ms > g[1]):  # every row of a report table is a report
                value = {f: t.wire[r.pos[f]](t.cols[r.pos[f]][i]) for f in p.report.figures}
                value.update({f: t.wire[r.pos[f]](t.cols[r.pos[f]][i]) for f, _ in p.report.error_at})
                error = any(value[f] is not None and value[f] >= at for f, at in p.report.error_at)
                g[1:] = [ms, "ERROR" if error else "ONLINE", {f: value[f] for f in p.report.figures}]
        if p.agent is None:
            return
        col, to_wire, headers = t.cols[r.pos[p.agent]], t.wire[r.pos[p.agent]], cast(list[Any], t.headers)
        same = to_wire is _same
        for value, i in dict(zip(map(col.__getitem__, order), order, strict=True)).items():  # agent -> newest row
            if value is None:
                continue
            uid, ms = str(value if same else to_wire(value)), to_ms(times[i])
            a = agents.get(uid)
            if a is None or ms > a[0]:
                agents[uid] = (ms, ids[gws[i]], _hostname(headers[i]) or (a[2] if a else None))

    def _organizations(self, conn: psycopg.Connection[Any], first: dict[uuid.UUID, Any]) -> dict[uuid.UUID, int]:
        """Each gateway's organization; unknown ones registered first where the setting says so."""
        if not first:
            return {}
        found = dict(
            conn.execute(
                "SELECT id, organization_id FROM monitoring.gateway_instances WHERE id = ANY(%b)", (list(first),)
            ).fetchall()
        )
        new = sorted(g for g in first if g not in found)
        if new and self.unknown_gateway == "register":
            conn.execute(
                """INSERT INTO monitoring.gateway_instances (id, organization_id)
                   SELECT * FROM unnest(%b::uuid[], %b::int[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING""",
                (new, [first[g] for g in new]),
            )
            found.update(
                conn.execute(
                    "SELECT id, organization_id FROM monitoring.gateway_instances WHERE id = ANY(%b)", (new,)
                ).fetchall()
            )
        return found

    @staticmethod
    def _write(
        conn: psycopg.Connection[Any], gateways: dict[uuid.UUID, list[Any]],
        agents: dict[str, tuple[int, Any, str | None]], grain: timedelta,
    ) -> None:  # fmt: skip
        """One statement for the batch's gateways, one for its agents (ids sorted: lock order)."""
        if gateways:
            ids = sorted(gateways)
            gs = [gateways[g] for g in ids]
            figures = [None if g[3] is None else json.dumps(g[3]) for g in gs]
            conn.execute(
                "SELECT gatestream.track_gateways(%b, %b::bigint[], %b::bigint[], %b::text[], %b::jsonb[], %b)",
                (ids, [g[0] for g in gs], [g[1] for g in gs], [g[2] for g in gs], figures, grain),
            )
        if agents:
            uids = sorted(agents)
            rows = list(map(agents.__getitem__, uids))
            seen, gws, hosts = zip(*rows, strict=True)
            conn.execute(
                "SELECT gatestream.track_agents(%b::text[], %b::uuid[], %b::text[], %b::bigint[], %b)",
                (uids, list(gws), list(hosts), list(seen), grain),
            )
