"""``gatestream cdc ...``: the Debezium connector that captures retention_policies on Kafka Connect."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gatestream import cdc
from gatestream.settings import CdcSettings


def cmd_register(args: argparse.Namespace) -> int:
    settings = CdcSettings()
    try:
        if cdc.set_password(settings):
            print(f"password of role {settings.cdc_user} set (GATESTREAM_CDC_PASSWORD)", file=sys.stderr)
        st = cdc.register(settings, wait_s=args.wait)
    except cdc.ConnectError as exc:
        print(f"gatestream cdc register: {exc}", file=sys.stderr)
        return 1
    print(
        f"connector {settings.cdc_connector}: {' / '.join(cdc.states(st))} "
        f"(slot {settings.cdc_slot}, topic {settings.cdc_topic})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = CdcSettings()
    try:
        st = cdc.status(settings)
    except cdc.ConnectError as exc:
        print(f"gatestream cdc status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st))
    elif st is None:
        print(f"connector {settings.cdc_connector}: not registered (gatestream cdc register)")
    else:
        print(f"connector {settings.cdc_connector}: {' / '.join(cdc.states(st))} (topic {settings.cdc_topic})")
    return 0 if st is not None and set(cdc.states(st)) == {"RUNNING"} else 3


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "cdc",
        help="change data capture of retention_policies: register the Debezium connector on Kafka Connect, status",
        description="Debezium's PostgreSQL connector on Kafka Connect (GATESTREAM_CONNECT_URL) reads every change of "
        "monitoring.retention_policies from a logical replication slot of its own (GATESTREAM_CDC_SLOT) and writes "
        "it to GATESTREAM_CDC_TOPIC_PREFIX.monitoring.retention_policies, which the policy consumer reads. "
        "`register` sets the connector's role password (GATESTREAM_CDC_PASSWORD, if set) and creates or updates "
        "the connector (idempotent), then waits until it runs. The server needs wal_level = logical.",
    )
    csub = p.add_subparsers(dest="cdc_command", required=True, metavar="ACTION")
    r = csub.add_parser("register", help="create or update the connector and wait until it runs")
    r.add_argument("--wait", type=float, default=60.0, metavar="S", help="how long to wait for RUNNING (default 60)")
    r.set_defaults(fn=cmd_register)
    s = csub.add_parser("status", help="the connector's state and its task's (exit 3 unless all RUNNING)")
    s.add_argument("--json", action="store_true", help="Connect's status answer as JSON")
    s.set_defaults(fn=cmd_status)
