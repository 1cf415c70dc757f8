"""The fleet: gateways and agents as ingest keeps them (``consumers.presence``), for people and Prometheus.

``sweep`` marks those silent past a threshold OFFLINE (``gatestream.sweep_presence``,
sql/030_presence.sql); ``listing`` is one organization's gateways and agents with their
state and age; ``state_counts`` the fleet per state, for the exporter (aggregates only:
no per-gateway or per-organization label, so the series stay bounded).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

STATES = ("ONLINE", "ERROR", "OFFLINE", "UNKNOWN")  # UNKNOWN: registered, never heard from


@dataclass(frozen=True)
class Member:
    kind: str  # gateway | agent
    id: str  # the gateway's id, the agent's agent_uid
    name: str | None  # the gateway's name, the agent's hostname
    state: str
    last_seen_at: datetime | None
    age_s: float | None
    gateway_id: str | None = None  # an agent's gateway
    figures: dict[str, Any] | None = None  # a gateway's last reported figures


def sweep(conn: psycopg.Connection[Any], silence_s: float) -> tuple[int, int]:
    """Mark gateways and agents silent for ``silence_s`` OFFLINE; how many of each it marked."""
    row = conn.execute("SELECT * FROM gatestream.sweep_presence(%s * interval '1 second')", (silence_s,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def listing(conn: psycopg.Connection[Any], organization: int) -> list[Member]:
    """The organization's gateways, each followed by its agents (newest first)."""
    out: list[Member] = []
    gateways = conn.execute(
        """SELECT id::text, name, coalesce(status, 'UNKNOWN'), last_seen_at,
                  extract(epoch FROM now() - last_seen_at)::float8, reported_figures
             FROM monitoring.gateway_instances WHERE organization_id = %s
            ORDER BY last_seen_at DESC NULLS LAST, id""",
        (organization,),
    ).fetchall()
    agents: dict[str, list[Member]] = {}
    for uid, host, state, seen, age, gw in conn.execute(
        """SELECT a.agent_uid, a.hostname, coalesce(a.status, 'UNKNOWN'), a.last_seen_at,
                  extract(epoch FROM now() - a.last_seen_at)::float8, a.gateway_id::text
             FROM monitoring.agent_instances a JOIN monitoring.gateway_instances g ON g.id = a.gateway_id
            WHERE g.organization_id = %s ORDER BY a.last_seen_at DESC NULLS LAST, a.agent_uid""",
        (organization,),
    ).fetchall():
        agents.setdefault(gw, []).append(Member("agent", uid, host, state, seen, age, gw))
    for gid, name, state, seen, age, figures in gateways:
        out.append(Member("gateway", gid, name, state, seen, age, figures=figures))
        out += agents.get(gid, [])
    return out


def state_counts(conn: psycopg.Connection[Any], silence_s: float) -> dict[str, Any]:
    """Gateways and agents per state, and gateways silent past ``silence_s`` whatever
    their stored state (the sweep may not have run yet)."""
    out: dict[str, Any] = {"gateways": dict.fromkeys(STATES, 0), "agents": dict.fromkeys(STATES, 0)}
    for kind, table in (("gateways", "gateway_instances"), ("agents", "agent_instances")):
        for state, n in conn.execute(
            psycopg.sql.SQL("SELECT coalesce(status, 'UNKNOWN'), count(*) FROM monitoring.{} GROUP BY 1").format(
                psycopg.sql.Identifier(table)
            )
        ).fetchall():
            out[kind][str(state)] = int(n)
    row = conn.execute(
        "SELECT count(*) FROM monitoring.gateway_instances WHERE last_seen_at < now() - %s * interval '1 second'",
        (silence_s,),
    ).fetchone()
    out["silent_gateways"] = int(row[0]) if row else 0
    return out


def age_text(age_s: float | None) -> str:
    """An age for people: 42s, 7m, 3h, 2d; 'never' for no event yet."""
    if age_s is None:
        return "never"
    s = max(0, int(age_s))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"
