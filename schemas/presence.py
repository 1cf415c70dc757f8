"""Presence: which gateway and agent an event names, as its catalog entry declares it.

A gateway's ``Publisher`` stamps every record with the gateway's identity in headers
(``GATEWAY_HEADER``, and ``AGENT_HOSTNAME_HEADER`` where the agent's host is known);
an event type's entry in ``catalog.json`` may declare, under ``presence``, which of its
record fields name the organization, the gateway (where the record itself names it,
overriding the header) and the agent, and whether the event is its gateway's status
report (its figures, and the figures at which the gateway is in ERROR):

    "presence": {"organization": "organization_id", "agent": "users_on_computers_id"}
    "presence": {"gateway": "gateway_id",
                 "report": {"figures": ["cpu_usage", "queue_depth"], "error_at": {"disk_usage": 95}}}

Ingest keeps ``monitoring.gateway_instances``/``agent_instances`` from these
(``consumers.presence``). Every field named must be a column of the type's table: the
native decode path reads them from the COPY tuples, so both paths see the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GATEWAY_HEADER = "gatestream.gateway_id"  # the publishing gateway's id (a UUID, as text)
AGENT_HOSTNAME_HEADER = "gatestream.agent_hostname"  # the agent's host name, where the gateway knows it
IDENTITY_HEADERS = (GATEWAY_HEADER, AGENT_HOSTNAME_HEADER)


class PresenceDeclarationError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Report:
    """The event is its gateway's status report."""

    figures: tuple[str, ...] = ()  # fields kept as the gateway's reported figures
    error_at: tuple[tuple[str, float], ...] = ()  # (field, threshold): ERROR where a value reaches it


@dataclass(frozen=True, slots=True)
class Presence:
    organization: str = "organization_id"
    gateway: str | None = None  # None: the gateway is the one the header names
    agent: str | None = None
    report: Report | None = None

    def fields(self) -> list[str]:
        """Every record field the declaration names."""
        out = [self.organization, *(f for f in (self.gateway, self.agent) if f)]
        if self.report is not None:
            out += [*self.report.figures, *(f for f, _ in self.report.error_at)]
        return list(dict.fromkeys(out))


def parse_presence(decl: Any, where: str) -> Presence | None:
    """The ``presence`` declaration of an event type (None: it carries none)."""
    if decl is None:
        return None
    if not isinstance(decl, dict) or set(decl) - {"organization", "gateway", "agent", "report"}:
        raise PresenceDeclarationError(
            f"{where}: 'presence' takes an object with 'organization', 'gateway', 'agent' and 'report' (got {decl!r})"
        )
    for key in ("organization", "gateway", "agent"):
        if key in decl and not (isinstance(decl[key], str) and decl[key]):
            raise PresenceDeclarationError(f"{where}: presence.{key} names a record field (got {decl[key]!r})")
    report = None
    if "report" in decl:
        r = decl["report"]
        if not isinstance(r, dict) or set(r) - {"figures", "error_at"}:
            raise PresenceDeclarationError(f"{where}: presence.report takes 'figures' and 'error_at' (got {r!r})")
        figures = r.get("figures", [])
        error_at = r.get("error_at", {})
        if not (isinstance(figures, list) and all(isinstance(f, str) for f in figures)):
            raise PresenceDeclarationError(f"{where}: presence.report.figures is a list of field names")
        if not (isinstance(error_at, dict) and all(isinstance(v, int | float) for v in error_at.values())):
            raise PresenceDeclarationError(f"{where}: presence.report.error_at maps field names to numbers")
        report = Report(tuple(figures), tuple((str(k), float(v)) for k, v in error_at.items()))
        if "gateway" not in decl:
            raise PresenceDeclarationError(f"{where}: a status report names its gateway (presence.gateway)")
    return Presence(decl.get("organization", "organization_id"), decl.get("gateway"), decl.get("agent"), report)
