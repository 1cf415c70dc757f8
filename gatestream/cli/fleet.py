"""``gatestream fleet [--org N] [sweep]``: an organization's gateways and agents; the OFFLINE sweep."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gatestream.cli.args import UsageError
from gatestream.settings import CommonSettings


def cmd_fleet(args: argparse.Namespace) -> int:
    from gatestream.database import connect
    from gatestream.fleet import age_text, listing, sweep

    settings = CommonSettings()
    silence = args.offline_after or settings.presence_offline_after_s
    if args.action == "sweep":
        with connect(settings.database_url) as conn:
            marked = sweep(conn, silence)
        print(f"marked OFFLINE after {silence:g}s of silence: {marked[0]} gateways, {marked[1]} agents")
        return 0
    if args.org is None:
        raise UsageError("--org N is required to list a fleet")
    with connect(settings.database_url) as conn:
        members = listing(conn, args.org)
    if args.json:
        print(json.dumps([_json(m) for m in members]))
        return 0
    gateways = [m for m in members if m.kind == "gateway"]
    if not gateways:
        print(f"organization {args.org}: no gateways")
        return 0
    agents = len(members) - len(gateways)
    print(f"organization {args.org}: {len(gateways)} gateways, {agents} agents (OFFLINE after {silence:g}s silent)")
    print(f"  {'kind':<8} {'id':<36}  {'name':<24} {'state':<8} {'last seen (UTC)':<20} age")
    for m in members:
        seen = m.last_seen_at.strftime("%Y-%m-%d %H:%M:%S") if m.last_seen_at else "-"
        state = m.state + ("*" if m.state in ("ONLINE", "ERROR") and (m.age_s or 0) > silence else "")
        indent = "  " if m.kind == "agent" else ""
        print(f"  {indent + m.kind:<8} {m.id:<36}  {(m.name or '-')[:24]:<24} {state:<8} {seen:<20} "
              f"{age_text(m.age_s)}")  # fmt: skip
    if any(m.state in ("ONLINE", "ERROR") and (m.age_s or 0) > silence for m in members):
        print("  * silent past the threshold, not swept yet (`gatestream fleet sweep`, or the presence-sweep job)")
    return 0


def _json(m: Any) -> dict[str, Any]:
    return {
        "kind": m.kind, "id": m.id, "name": m.name, "state": m.state, "gateway_id": m.gateway_id,
        "last_seen_at": m.last_seen_at.isoformat() if m.last_seen_at else None, "age_s": m.age_s,
        "figures": m.figures,
    }  # fmt: skip


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "fleet",
        help="an organization's gateways and agents with state and age; `fleet sweep`: mark the silent OFFLINE",
        description="Gateways and agents as ingest keeps them from the event streams (monitoring.gateway_instances, "
        "agent_instances): state (ONLINE, ERROR from the gateway's status report, OFFLINE after the sweep, UNKNOWN "
        "before any event), last event time and age. `gatestream fleet sweep` marks those silent past "
        "GATESTREAM_PRESENCE_OFFLINE_AFTER_S (default 300) OFFLINE once; the presence-sweep job the policy consumer "
        "reconciles (a TimescaleDB job, or pg_cron on the Apache edition) does it every minute.",
    )
    p.add_argument("action", nargs="?", choices=["list", "sweep"], default="list", help="list (default) or sweep")
    p.add_argument("--org", type=int, help="the organization whose fleet to list")
    p.add_argument("--offline-after", type=float, metavar="S", help="silence threshold in seconds (default: setting)")
    p.add_argument("--json", action="store_true", help="one JSON array instead of the table")
    p.set_defaults(fn=cmd_fleet)
