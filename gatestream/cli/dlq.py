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
    from gatestream.consumers.deadletter import redriven
    from gatestream.consumers.dlq import read, summary
    from gatestream.database import connect

    settings = IngestSettings()
    letters = list(read(settings))  # a user who may not read the topic: one line, exit 2 (never "0 records")
    with connect(settings.database_url) as conn:
        counts = summary(letters, redriven(conn, {d.source[0] for d in letters}))
    rows = sorted(counts.items(), key=lambda x: (-x[1].pending, -x[1].redriven, x[0]))
    if args.json:
        print(json.dumps([
            {"reason": r, "source_topic": t, "count": c.pending + c.redriven, "pending": c.pending,
             "redriven": c.redriven}
            for (r, t), c in rows
        ]))  # fmt: skip
        return 0
    pending = sum(c.pending for c in counts.values())
    print(
        f"dead-letter topic {settings.dlq_topic}: {len(letters)} records, "
        f"{pending} events pending, {sum(c.redriven for c in counts.values())} redriven"
    )
    print(f"  {'pending':>8}  {'redriven':>8}  {'reason':<26} source topic")
    for (reason, topic), c in rows:
        print(f"  {c.pending:>8}  {c.redriven:>8}  {reason:<26} {topic}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gatestream.consumers.deadletter import iso_ms, redriven
    from gatestream.consumers.dlq import decoded
    from gatestream.database import connect

    settings = IngestSettings()
    chosen = _chosen(args, settings)[: args.limit]
    with connect(settings.database_url) as conn:
        done = redriven(conn, {d.source[0] for d in chosen})
    for d in chosen:
        topic, partition, offset = d.source
        ts = d.headers.get("gatestream.source.timestamp_ms", "")
        line = {
            "dlq": f"{settings.dlq_topic}[{d.partition}]@{d.offset}", "source": f"{topic}[{partition}]@{offset}",
            "reason": d.reason, "error": d.headers.get("gatestream.error"),
            "source_timestamp": iso_ms(int(ts)) if ts.lstrip("-").isdigit() else None,
            "dead_lettered_at": d.headers.get("gatestream.dead_lettered_at"),
            "redriven_at": done[d.event].isoformat(timespec="milliseconds") if d.event in done else None,
            **decoded(settings, d),
        }  # fmt: skip
        print(json.dumps(line, default=str))
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from gatestream.consumers.deadletter import redriven
    from gatestream.consumers.dlq import plan, redrive
    from gatestream.database import connect
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.kafka_access import require as kafka_require
    from gatestream.roles import REDRIVE_NEEDS, require

    if not (args.reason or args.source_topic or args.all):
        print("gatestream dlq redrive: error: choose records: --reason, --source-topic, or --all", file=sys.stderr)
        return 2
    settings = IngestSettings()
    with connect(settings.database_url) as conn:
        require(conn, REDRIVE_NEEDS)  # runs as gatestream_replay: one line and exit 2 without a grant, first
        chosen = _chosen(args, settings)
        if not args.dry_run:  # and may publish back to each source topic chosen
            kafka_require(settings, KafkaNeeds(write=tuple(sorted({d.source[0] for d in chosen if d.source[0]}))))
        if args.dry_run:
            done = {} if args.again else redriven(conn, {d.source[0] for d in chosen})
            work = plan(settings, chosen, done, args.again)
            print(json.dumps({**work.report(), "published": 0, "would_publish": len(work.todo)}))
            return 0
        print(json.dumps(redrive(settings, conn, chosen, again=args.again).report()))
    return 0


def add_parsers(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="the dead-letter topic: counts, records, and redriving them once the cause is fixed",
        description="Dead letters carry the original key and value and headers saying why (gatestream.reason, "
        "gatestream.error, gatestream.exception.class, gatestream.sqlstate, the source topic/partition/offset, the "
        "group, the time).",
    ).add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    s = dlq.add_parser("summary", help="events per reason and source topic: pending, and redriven already")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_summary)
    for name, fn, text in (
        ("show", cmd_show, "records as JSON lines, each decoded where it decodes now"),
        (
            "redrive",
            cmd_redrive,
            "publish the chosen records' original bytes back to their source topics, each event once "
            "(events redriven before are skipped unless --again)",
        ),
    ):
        p = dlq.add_parser(name, help=text)
        p.add_argument("--reason", action="append", help="only this reason (repeatable)")
        p.add_argument("--source-topic", action="append", help="only records from this topic (repeatable)")
        if name == "show":
            p.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
        else:
            p.add_argument("--all", action="store_true", help="every record of the dead-letter topic")
            p.add_argument("--dry-run", action="store_true", help="count what would be published; publish nothing")
            p.add_argument(
                "--again",
                action="store_true",
                help="publish events already redriven once more (by default a redrive skips them: each event is "
                "marked in gatestream.dead_letters once the broker acknowledged it)",
            )
        p.set_defaults(fn=fn)
