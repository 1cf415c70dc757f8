"""``PresenceTracker.apply`` decides alike on every form a batch's rows take (no services).

Rows are tuples (Python decode path) or COPY tuples (native path), read through one
``struct`` unpack at fixed offsets, or by walking the fields where a NULL shifts them or a
batch mixes both kinds. The same events in each form must give the same dead letters and
the same statements' parameters (the coalesced gateways and agents); the rows here are
made COPY tuples by psycopg's own binary dumpers (``tests.unit.test_transcoder.copy_bytes``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message

from gatestream.consumers.batch_writer import TableBatch
from gatestream.consumers.deadletter import Reason
from gatestream.consumers.presence import PresenceTracker
from gatestream.consumers.tables import TableSpec
from gatestream.schemas.presence import AGENT_HOSTNAME_HEADER, GATEWAY_HEADER, Presence, Report
from tests.unit.test_transcoder import copy_bytes

UUID, INT4, INT8, TSTZ, FLOAT8, TEXT = 2950, 23, 20, 1184, 701, 25
GW_A, GW_B, GW_NEW = uuid.UUID(int=0xA), uuid.UUID(int=0xB), uuid.UUID(int=0xC)
T0 = 1_780_000_000_000  # event times: Unix ms (wire values)

WINDOWS = TableSpec("monitoring", "active_windows", ("event_id", "organization_id", "users_on_computers_id",
                    "datetime", "title"), (UUID, INT4, INT4, TSTZ, TEXT))  # fmt: skip
# a declared field after a nullable fixed-width column: a NULL there shifts what follows
SPARSE = TableSpec("monitoring", "sparse", ("event_id", "slot", "organization_id", "seat", "at"),
                   (UUID, INT8, INT4, INT4, TSTZ))  # fmt: skip
SNAPSHOTS = TableSpec("monitoring", "gateway_status_snapshots", ("event_id", "organization_id", "gateway_id",
                      "timestamp", "disk_usage", "queue_depth"), (UUID, INT4, UUID, TSTZ, FLOAT8, INT4))  # fmt: skip
ROUTES = {
    "w": SimpleNamespace(spec=WINDOWS, time_field="datetime", presence=Presence(agent="users_on_computers_id")),
    "s": SimpleNamespace(spec=SPARSE, time_field="at", presence=Presence(agent="seat")),
    "g": SimpleNamespace(spec=SNAPSHOTS, time_field="timestamp", presence=Presence(
        gateway="gateway_id", report=Report(("disk_usage", "queue_depth"), (("disk_usage", 95.0),)))),
}  # fmt: skip


def headers(gw: uuid.UUID | bytes | None, host: str | None = None, *, first: bool = True) -> list[Any] | None:
    if gw is None:
        return None
    out: list[Any] = [(GATEWAY_HEADER, gw if isinstance(gw, bytes) else str(gw).encode())]
    if host:
        out.append((AGENT_HOSTNAME_HEADER, host.encode()))
    return out if first else [("other", b"x"), *out[::-1]]


def events() -> dict[str, list[tuple[tuple[Any, ...], list[Any] | None]]]:
    """Per topic: (row as wire values, headers)."""

    def e() -> str:
        return str(uuid.uuid4())

    return {
        "w": [
            ((e(), 1, 10, T0 + 5, "x"), headers(GW_A, "desk-10")),
            ((e(), 1, 10, T0 + 9, None), headers(GW_A, "desk-10b", first=False)),  # newest of seat 10
            ((e(), 1, 10, T0 + 1, "old"), headers(GW_A, "stale")),  # out of order: older
            ((e(), 2, 11, T0 + 3, "leak"), headers(GW_A, "desk-11")),  # organization 2 from A's gateway
            ((e(), 3, 30, T0 + 2, "x"), headers(GW_NEW)),  # an unknown gateway: registered under 3
            ((e(), 5, 50, T0 + 2, "x"), None),  # no identity: not tracked, not checked
            ((e(), 1, 12, T0 + 4, "x"), headers(b"not-a-uuid")),  # dead letter unknown-gateway
        ],
        "s": [
            ((e(), None, 1, 10, T0 + 20), headers(GW_A, "desk-10s")),  # NULL slot: fields shifted; newest of 10
            ((e(), 7, 4, 40, T0 + 6), headers(GW_B)),
        ],
        "g": [
            ((e(), 4, str(GW_B), T0 + 7, 97.0, 3), headers(GW_B)),  # B's newest report: ERROR
            ((e(), 4, str(GW_B), T0 + 2, 10.0, 1), headers(GW_B)),
        ],
    }


@dataclass
class Recorder:
    """Answers the organizations query; records every statement's parameters."""

    known: dict[uuid.UUID, int]
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def execute(self, query: str, params: Any = None) -> Any:
        self.calls.append((" ".join(query.split())[:40], params))
        if query.startswith("INSERT"):
            self.known.update(zip(params[0], params[1], strict=True))
        rows = [(g, self.known[g]) for g in (params[0] if query.startswith("SELECT id") else []) if g in self.known]
        return SimpleNamespace(fetchall=lambda: rows)


def run(form: str) -> tuple[list[Any], list[tuple[str, Any]], dict[str, int]]:
    tracker = PresenceTracker(ROUTES, grain_s=30)
    if form == "walk":  # no fixed-offset reading: every COPY tuple walked
        for r in tracker.readers.values():
            r._fixed = None
    tables = {}
    for topic, evs in events().items():
        spec = ROUTES[topic].spec
        rows: list[Any] = []
        for i, (row, _) in enumerate(evs):
            copy = form in ("fixed", "walk") or (form == "mixed" and i % 2 == 0)
            rows.append(copy_bytes(row, spec.type_oids) if copy else row)
        assert all(isinstance(r, (bytes, tuple)) for r in rows), rows
        origins = [Message(topic=topic, partition=0, offset=i, headers=h) for i, (_, h) in enumerate(evs)]
        tables[topic] = TableBatch(spec, rows, origins)
    conn = Recorder({GW_A: 1, GW_B: 4})
    rejects = tracker.apply(conn, tables)  # type: ignore[arg-type]
    out = [(r.msg.topic(), r.msg.offset(), r.reason, r.detail) for r in rejects]
    return out, conn.calls, {t: len(tb.rows) for t, tb in tables.items()}


@pytest.mark.parametrize("form", ["fixed", "walk", "mixed"])
def test_every_row_form_gives_the_tuple_paths_decisions(form: str) -> None:
    assert run(form) == run("tuples")


def test_the_decisions() -> None:
    """What the shared answer is: the leak and the bad header refused, the rest coalesced."""
    rejects, calls, left = run("tuples")
    assert [(t, o, r) for t, o, r, _ in rejects] == [("w", 3, Reason.TENANT_MISMATCH), ("w", 6, Reason.UNKNOWN_GATEWAY)]
    assert "organization_id = 2, but gateway" in rejects[0][3] and "not a UUID" in rejects[1][3]
    assert left == {"w": 5, "s": 2, "g": 2}
    statements = dict(calls)
    assert statements["INSERT INTO monitoring.gateway_instances"] == ([GW_NEW], [3])
    gws = statements["SELECT gatestream.track_gateways(%b, %b:"]
    assert gws == (
        [GW_A, GW_B, GW_NEW], [T0 + 20, T0 + 7, T0 + 2], [None, T0 + 7, None], [None, "ERROR", None],
        [None, '{"disk_usage": 97.0, "queue_depth": 3}', None], timedelta(seconds=30),
    )  # fmt: skip
    agents = statements["SELECT gatestream.track_agents(%b::text["]
    assert agents == (["10", "30", "40"], [GW_A, GW_NEW, GW_B], ["desk-10s", None, None], [T0 + 20, T0 + 2, T0 + 6],
                      timedelta(seconds=30))  # fmt: skip
