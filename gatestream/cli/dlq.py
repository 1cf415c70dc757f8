"""``gatestream dlq summary|show|redrive``: the dead-letter topic for operators."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gatestream.settings import IngestSettings


def _chosen(args: argparse.Namespace, settings: IngestSettings) -> list[Any]:
    from gatestream.consumers.dlq import read

    out = []
    for d in read(settings):
        if args.reason and d.reason not in args.reason:
            continue
        if args.source_topic and d.source[0] not in args.source_topic:
            continue
        out.append(d)
    return out


def cmd_summary(args: argparse.Namespace) -> int:
    from gatestream.consumers.dlq import read, summary

    settings = IngestSettings()
    counts = summary(list(read(settings)))
    if args.json:
        print(json.dumps([{"reason": r, "source_topic": t, "count": n} for (r, t), n in sorted(counts.items())]))
        return 0
    print(f"dead-letter topic {settings.dlq_topic}: {sum(counts.values())} records")
    for (reason, topic), n in sorted(counts.items(), key=lambda x: -x[1]):
        print(f"  {n:>8}  {reason:<26} {topic}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gatestream.consumers.dlq import decoded

    settings = IngestSettings()
    for d in _chosen(args, settings)[: args.limit]:
        topic, partition, offset = d.source
        line = {
            "dlq": f"{settings.dlq_topic}[{d.partition}]@{d.offset}", "source": f"{topic}[{partition}]@{offset}",
            "reason": d.reason, "error": d.headers.get("gatestream.error"),
            "dead_lettered_at": d.headers.get("gatestream.dead_lettered_at"), **decoded(settings, d),
        }  # fmt: skip
        print(json.dumps(line, default=str))
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from gatestream.consumers.dlq import redrive

    if not (args.reason or args.source_topic or args.all):
        print("gatestream dlq redrive: error: choose records: --reason, --source-topic, or --all", file=sys.stderr)
        return 2
    settings = IngestSettings()
    chosen = _chosen(args, settings)
    if args.dry_run:
        print(json.dumps({"would_publish": len(chosen)}))
        return 0
    published, skipped = redrive(settings, chosen)
    print(json.dumps({"published": published, "skipped": skipped}))
    return 0


def add_parsers(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="the dead-letter topic: counts, records, and redriving them once the cause is fixed",
        description="Dead letters carry the original key and value and headers saying why (gatestream.reason, "
        "gatestream.error, gatestream.exception.class, gatestream.sqlstate, the source topic/partition/offset, the "
        "group, the time).",
    ).add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    s = dlq.add_parser("summary", help="records per reason and source topic")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_summary)
    for name, fn, text in (
        ("show", cmd_show, "records as JSON lines, each decoded where it decodes now"),
        ("redrive", cmd_redrive, "publish the chosen records' original bytes back to their source topics"),
    ):
        p = dlq.add_parser(name, help=text)
        p.add_argument("--reason", action="append", help="only this reason (repeatable)")
        p.add_argument("--source-topic", action="append", help="only records from this topic (repeatable)")
        if name == "show":
            p.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
        else:
            p.add_argument("--all", action="store_true", help="every record of the dead-letter topic")
            p.add_argument("--dry-run", action="store_true", help="count what would be published; publish nothing")
        p.set_defaults(fn=fn)
