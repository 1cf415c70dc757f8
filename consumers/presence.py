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
   Rows are locked in id order (no deadlock between members), and only where they change.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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


class _Reader:
    """Reads the declared fields of one table's rows, tuples and COPY tuples alike."""

    def __init__(self, presence: Presence, columns: tuple[str, ...], oids: tuple[int, ...], time_field: str) -> None:
        missing = [f for f in [*presence.fields(), time_field] if f not in columns]
        if missing:
            raise ValueError(f"presence names {missing[0]!r}, not a column of the table")
        self.presence = presence
        names = [time_field, *presence.fields()]
        self.index = {n: columns.index(n) for n in names}
        self.oid = {n: oids[columns.index(n)] for n in names}
        self.time_field = time_field
        self._last = max(self.index.values())
        self._wanted = {i: n for n, i in self.index.items()}

    def values(self, row: Any) -> dict[str, Any]:
        if type(row) is not bytes:
            return {n: row[i] for n, i in self.index.items()}
        out: dict[str, Any] = {}
        at, wanted = 2, self._wanted  # (a COPY tuple: int16 field count, then length-prefixed fields)
        for i in range(self._last + 1):
            size = int.from_bytes(row[at : at + 4], "big", signed=True)
            at += 4
            name = wanted.get(i)
            if name is not None:
                out[name] = None if size < 0 else _from_copy(row[at : at + size], self.oid[name])
            at += max(size, 0)
        return out


@dataclass
class _Gateway:
    organization: int
    seen_ms: int
    report_ms: int | None = None
    status: str | None = None
    figures: dict[str, Any] | None = None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, UnicodeDecodeError):
        return None


def _headers(msg: Any) -> tuple[bytes | None, str | None]:
    gw = host = None
    for k, v in cast(list[tuple[str, bytes]], msg.headers() or []):
        if k == GATEWAY_HEADER:
            gw = v
        elif k == AGENT_HOSTNAME_HEADER and v:
            host = v.decode(errors="replace")[:255]
    return gw, host


class PresenceTracker:
    """Per pipeline: the readers of the routes that declare presence, and the per-batch step."""

    def __init__(self, routes: Mapping[str, Any], *, unknown_gateway: UnknownGateway = "register") -> None:
        """``routes``: topic -> ``consumers.routes.Route`` (those with ``presence`` are tracked)."""
        self.unknown_gateway = unknown_gateway
        self.readers = {
            t: _Reader(r.presence, r.spec.columns, r.spec.type_oids, r.time_field)
            for t, r in routes.items()
            if getattr(r, "presence", None) is not None
        }

    def apply(self, conn: psycopg.Connection[Any], tables: Mapping[str, TableBatch]) -> list[Reject]:
        """Check and track the rows of ``tables`` (refused rows are taken out); the rejects."""
        seen: list[tuple[str, int, uuid.UUID, dict[str, Any], str | None]] = []  # topic, index, gateway, values, host
        ids: dict[bytes, uuid.UUID | None] = {}
        rejects: list[Reject] = []
        drop: dict[str, set[int]] = {}
        for topic, reader in self.readers.items():
            tb = tables.get(topic)
            if tb is None or not tb.rows:
                continue
            field = reader.presence.gateway
            for i, (row, msg) in enumerate(zip(tb.rows, tb.origins, strict=True)):
                raw, host = _headers(msg)
                values = reader.values(row)
                if field is not None:
                    gw = _uuid(values[field])
                elif raw is None:
                    continue  # not stamped: valid, no presence, no check
                else:
                    gw = ids[raw] if raw in ids else ids.setdefault(raw, _uuid(raw))
                    if gw is None:
                        rejects.append(Reject(msg, Reason.UNKNOWN_GATEWAY, f"{GATEWAY_HEADER} header {raw[:80]!r} "
                                              "is not a UUID"))  # fmt: skip
                        drop.setdefault(topic, set()).add(i)
                        continue
                if gw is not None:
                    seen.append((topic, i, gw, values, host))
        orgs = self._organizations(conn, seen)
        accepted = []
        for topic, i, gw, values, host in seen:
            reader = self.readers[topic]
            org, own = values[reader.presence.organization], orgs.get(gw)
            msg = tables[topic].origins[i]
            if own is None:
                rejects.append(Reject(msg, Reason.UNKNOWN_GATEWAY, f"gateway {gw} is not registered in "
                                      "monitoring.gateway_instances (GATESTREAM_UNKNOWN_GATEWAY=refuse)"))  # fmt: skip
            elif org != own:
                rejects.append(Reject(msg, Reason.TENANT_MISMATCH, f"{reader.presence.organization} = {org}, but "
                                      f"gateway {gw} belongs to organization {own}"))  # fmt: skip
            else:
                accepted.append((reader, gw, values, host))
                continue
            drop.setdefault(topic, set()).add(i)
        for topic, gone in drop.items():
            tb = tables[topic]
            keep = [j for j in range(len(tb.rows)) if j not in gone]
            tb.rows = [tb.rows[j] for j in keep]
            tb.origins = [tb.origins[j] for j in keep]
        self._track(conn, accepted)
        return rejects

    def _organizations(self, conn: psycopg.Connection[Any], seen: list[Any]) -> dict[uuid.UUID, int]:
        """Each gateway's organization; unknown ones registered first where the setting says so."""
        first: dict[uuid.UUID, Any] = {}
        for topic, _, gw, values, _ in seen:
            if gw not in first:
                first[gw] = values[self.readers[topic].presence.organization]
        if not first:
            return {}
        found = dict(
            conn.execute(
                "SELECT id, organization_id FROM monitoring.gateway_instances WHERE id = ANY(%s)", (list(first),)
            ).fetchall()
        )
        new = sorted(g for g in first if g not in found)
        if new and self.unknown_gateway == "register":
            conn.execute(
                """INSERT INTO monitoring.gateway_instances (id, organization_id)
                   SELECT * FROM unnest(%s::uuid[], %s::int[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING""",
                (new, [first[g] for g in new]),
            )
            found.update(
                conn.execute(
                    "SELECT id, organization_id FROM monitoring.gateway_instances WHERE id = ANY(%s)", (new,)
                ).fetchall()
            )
        return found

    def _track(self, conn: psycopg.Connection[Any], accepted: list[Any]) -> None:
        """One update per gateway and per agent for the batch's accepted rows."""
        gateways: dict[uuid.UUID, _Gateway] = {}
        agents: dict[str, tuple[uuid.UUID, str | None, int]] = {}
        for reader, gw, values, host in accepted:
            p, t = reader.presence, values[reader.time_field]
            g = gateways.get(gw)
            if g is None:
                g = gateways[gw] = _Gateway(values[p.organization], t)
            elif t > g.seen_ms:
                g.seen_ms = t
            if p.report is not None and (g.report_ms is None or t > g.report_ms):
                g.report_ms = t
                g.figures = {f: values[f] for f in p.report.figures}
                error = any(values[f] is not None and values[f] >= at for f, at in p.report.error_at)
                g.status = "ERROR" if error else "ONLINE"
            if p.agent is not None and values[p.agent] is not None:
                uid = str(values[p.agent])
                a = agents.get(uid)
                if a is None or t > a[2]:
                    agents[uid] = (gw, host or (a[1] if a else None), t)
        if gateways:
            ids = sorted(gateways)
            gs = [gateways[g] for g in ids]
            figures = [None if g.figures is None else json.dumps(g.figures) for g in gs]
            conn.execute(
                "SELECT gatestream.track_gateways(%s, %s, %s, %s, %s::jsonb[])",
                (ids, [g.seen_ms for g in gs], [g.report_ms for g in gs], [g.status for g in gs], figures),
            )
        if agents:
            uids = sorted(agents)
            rows = [agents[u] for u in uids]
            conn.execute(
                "SELECT gatestream.track_agents(%s, %s, %s, %s)",
                (uids, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
            )
