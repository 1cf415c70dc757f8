"""``gatestream replay`` and ``gatestream replays list|forget``: backfill runs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gatestream.cli.args import catalog_types, event_types, int_list, offset, overrides, rate, serve, types_help
from gatestream.settings import CommonSettings, IngestSettings


def cmd_replay(args: argparse.Namespace) -> int:
    from gatestream.consumers.replay import (
        ReplayError,
        ReplaySelection,
        estimate_total,
        parse_duration,
        parse_time,
        prepare,
        print_plan,
        replay,
    )
    from gatestream.database import connect
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.kafka_access import require as kafka_require
    from gatestream.progress import Progress
    from gatestream.roles import REPLAY_NEEDS, require

    settings = IngestSettings(**overrides(args, ["metrics_port"]))
    server = serve(settings.metrics_port)
    sel: dict[str, Any] = {"event_types": tuple(catalog_types(settings, args.types))}
    # reads the event topics (its groups only name its progress in the database); dead-letters like ingest
    kafka_require(settings, KafkaNeeds(read=tuple(settings.topic_for(t) for t in sel["event_types"]),
                                       write=(settings.dlq_topic,)))  # fmt: skip
    if args.partitions is not None:
        sel["partitions"] = args.partitions
    if args.orgs is not None:
        sel["organizations"] = frozenset(args.orgs)
    # The selection as typed: a rerun of the same command line finds its unfinished run
    # even when its times are relative ("-30h" resolves once, when the run starts).
    spec = {
        "types": sorted(sel["event_types"]),
        "partitions": sorted(args.partitions) if args.partitions is not None else None,
        "from": args.start, "to": args.end, "from_offset": args.from_offset, "to_offset": args.to_offset,
        "orgs": sorted(args.orgs) if args.orgs is not None else None,
        "skew": args.skew,
    }  # fmt: skip
    try:
        with connect(settings.database_url) as conn:  # waits for the database, as the run's own connections do
            require(conn, REPLAY_NEEDS)  # a role without a grant: one line and exit 2, before anything
        if args.start is not None:
            sel["since"] = parse_time(args.start)
        if args.end is not None:
            sel["until"] = parse_time(args.end)
        if args.from_offset is not None:
            sel["from_offset"] = args.from_offset
        if args.to_offset is not None:
            sel["to_offset"] = args.to_offset
        if args.skew is not None:
            sel["skew_margin"] = parse_duration(args.skew)
        prepared = prepare(
            settings, ReplaySelection(**sel), spec=spec, name=args.name, restart=args.restart, dry_run=args.dry_run
        )
        print(("dry run: " if args.dry_run else "") + prepared.note, file=sys.stderr)
        totals = estimate_total(prepared.ranges)
        label = f"replay {prepared.name}"
        if args.dry_run:
            print_plan(label, prepared.ranges, totals)
        with Progress(label, total=sum(totals.values()), enabled=not args.no_progress) as bar:
            summary = replay(
                settings, prepared.selection, dry_run=args.dry_run, max_rate=args.max_rate,
                progress=bar.update, prepared=prepared,
            )  # fmt: skip
    except ReplayError as exc:
        print(f"gatestream replay: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(summary.report()))
    if not summary.complete and not args.dry_run:
        print("replay interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


def cmd_replays_list(args: argparse.Namespace) -> int:
    from gatestream.consumers.replay_runs import list_runs
    from gatestream.database import connect_once

    settings = CommonSettings()
    with connect_once(settings.database_url, autocommit=False) as conn:
        rows = list_runs(conn, args.limit)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(f"{'run':>6}  {'name':<28}{'state':<11}{'started':<21}{'finished':<21}{'progress':>22}")
    for r in rows:
        pct = f"{100 * r['done'] / r['planned']:.0f}%" if r["planned"] else "-"
        fin = f"{r['finished_at']:%Y-%m-%d %H:%M:%S}" if r["finished_at"] else "-"
        print(
            f"{r['run_id']:>6}  {r['name'][:27]:<28}{r['state']:<11}{r['started_at']:%Y-%m-%d %H:%M:%S}  "
            f"{fin:<21}{r['done']:>10}/{r['planned']:<8}{pct:>4}"
        )
    return 0


def cmd_replays_forget(args: argparse.Namespace) -> int:
    from gatestream.consumers.replay import ReplayError, parse_duration
    from gatestream.consumers.replay_runs import forget
    from gatestream.database import connect_once

    try:
        older = parse_duration(args.older_than)
    except ReplayError as exc:
        print(f"gatestream replays forget: {exc}", file=sys.stderr)
        return 2
    with connect_once(CommonSettings().database_url) as conn:
        done = forget(conn, older, force=args.force)
    which = "replay runs (unfinished ones too: --force)" if args.force else "finished replay runs"
    print(f"forgot {done.forgotten} {which} that ended more than {args.older_than} ago")
    if done.kept:
        print(
            f"kept {done.kept} unfinished replay runs (running or failed): rerunning their command continues them "
            "from their progress; --force forgets them too"
        )
    return 0


def add_parsers(sub: Any) -> None:
    rp = sub.add_parser(
        "replay",
        help="read topics again into the hypertables (backfill); never duplicates rows; resumable",
        description="Replay event topics into the hypertables through the ingest path. Events already stored "
        "are left alone and counted as already present. Each run is recorded (gatestream replays list); its "
        "progress is stored with the rows under a group of the run's own (never the live ingest group's), so the "
        "same command continues an unfinished run after Ctrl-C or a crash, and starts a new run once the last "
        "one completed (a rerun after a restore restores again). "
        "Exit status: 0 done, 2 bad selection, 130 interrupted (run again to continue), 1 error.",
    )
    rp.add_argument("--types", type=event_types, help=types_help("replay"))
    rp.add_argument("--partitions", type=int_list, help="only these partitions, e.g. 0,3 (default: all)")
    rp.add_argument(
        "--from", dest="start", metavar="TIME",
        help="event time to start at (inclusive): ISO 8601 (2026-11-23T10:00Z; naive = UTC), 'now', relative "
        "(-90s, -15m, -2h, -7d, -1w) or @EPOCH_SECONDS; a bare number is refused (offsets: --from-offset). "
        "Reading starts at the broker's offset for that time minus --skew",
    )  # fmt: skip
    rp.add_argument("--to", dest="end", metavar="TIME", help="event time to stop at (exclusive), same forms as --from")
    rp.add_argument("--from-offset", type=offset, metavar="N", help="start at this offset in every selected partition")
    rp.add_argument(
        "--to-offset", type=offset, metavar="N",
        help="stop before this offset (default: each partition's end when the run starts)",
    )  # fmt: skip
    rp.add_argument("--orgs", type=int_list, help="only these organization ids, e.g. 12,40")
    rp.add_argument(
        "--skew",
        metavar="DURATION",
        help="with a start time: begin reading at the broker's offset for (start - this), to catch events "
        "published by a gateway whose clock runs ahead of the event's; e.g. 0s, 90s, 5m (default 5m)",
    )
    rp.add_argument(
        "--dry-run", action="store_true", help="print the partition ranges and what would be inserted; write nothing"
    )
    rp.add_argument(
        "--max-rate", type=rate, default=0,
        help="events per second at most, smoothly (batches of at most a second, a commit at least every second); "
        "0 = no limit",
    )  # fmt: skip
    rp.add_argument(
        "--restart", action="store_true", help="abandon this selection's unfinished run and start a new one"
    )
    rp.add_argument(
        "--name",
        help="name the replay's runs (default: derived from the selection as typed); a name keeps its selection",
    )
    rp.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    rp.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve /metrics while replaying")
    rp.set_defaults(fn=cmd_replay)

    rr = sub.add_parser("replays", help="replay runs: list them with state and progress, forget old ones")
    rrs = rr.add_subparsers(dest="replays_command", required=True, metavar="{list,forget}")
    rl = rrs.add_parser("list", help="runs, newest first: name, state, started, finished, progress")
    rl.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    rl.add_argument("--json", action="store_true", help="print JSON")
    rl.set_defaults(fn=cmd_replays_list)
    rf = rrs.add_parser(
        "forget",
        help="delete finished runs (and their progress) that ended long enough ago",
        description="Delete replay runs that ended more than --older-than ago, with their stored progress. "
        "Unfinished runs (running, or failed) are kept and counted: rerunning their command continues them "
        "from that progress. --force deletes them too.",
    )
    rf.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 0s (every finished run)")
    rf.add_argument(
        "--force", action="store_true",
        help="also forget unfinished runs (running or failed) started more than --older-than ago, with their "
        "progress: a rerun of their command then starts over. Never while such a run is still going",
    )  # fmt: skip
    rf.set_defaults(fn=cmd_replays_forget)
