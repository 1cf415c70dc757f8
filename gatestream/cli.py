"""The ``gatestream`` command line.

Settings come from ``GATESTREAM_*`` environment variables (``ops/stack env`` prints
them for the local stack); flags override them for one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import timedelta
from typing import Any

import structlog

from gatestream import logs
from gatestream.schemas import EventType
from gatestream.settings import CommonSettings, IngestSettings, ProducerSettings

log = structlog.get_logger("gatestream.cli")


def _overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _types(value: str) -> list[EventType]:
    try:
        return [EventType(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; known types: {', '.join(e.value for e in EventType)}") from exc


# ---------------------------------------------------------------------- commands
def _serve(port: int | None, ready: Any = None) -> Any:
    """Start /metrics, /healthz, /readyz on ``port`` (None: do not serve)."""
    if port is None:
        return None
    from gatestream.httpserver import OpsServer

    return OpsServer(port, ready).start()


def cmd_migrate(args: argparse.Namespace) -> int:
    from gatestream.migrate import migrate

    settings = CommonSettings()
    applied = migrate(settings.database_url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from gatestream.topics import ensure_topics

    settings = ProducerSettings(**_overrides(args, ["partitions"]))
    names = [*settings.event_topics(), settings.dlq_topic]
    created = ensure_topics(settings, names, settings.partitions)
    print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from gatestream.producers.loadgen import Fleet, generate
    from gatestream.producers.publisher import Publisher
    from gatestream.ratelimit import RateLimiter

    settings = ProducerSettings(**_overrides(args, ["spool_path", "metrics_port"]))
    fleet = Fleet(orgs=args.orgs, devices_per_org=args.devices, gateways_per_org=args.gateways, seed=args.seed)
    pub = Publisher(settings)
    server = _serve(settings.metrics_port)
    limiter = RateLimiter(args.rate)
    started = time.monotonic()
    chunk: list[Any] = []
    events = generate(args.count, fleet, args.types, seed=args.seed, spread=timedelta(hours=args.spread_hours))
    step = max(1, min(1000, int(args.rate / 20) if args.rate else 1000))
    for ev in events:
        chunk.append(ev)
        if len(chunk) >= step:
            pub.publish_many(chunk)
            limiter.wait(len(chunk))
            chunk = []
    if chunk:
        pub.publish_many(chunk)
    left = pub.close(timeout=args.flush_timeout)
    if server is not None:
        server.stop()
    secs = time.monotonic() - started
    summary = {
        "produced": args.count,
        "delivered": pub.delivered,
        "still_spooled": left,
        "seconds": round(secs, 2),
        "events_per_s": round(pub.delivered / secs) if secs else None,
    }
    print(json.dumps(summary))
    if left:
        print(
            f"{left} events are still in the spool {settings.spool_path}; they are sent on the next run",
            file=sys.stderr,
        )
        return 3
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import psycopg

    from gatestream.consumers.ingest import Ingestor, build_routes

    settings = IngestSettings(
        **_overrides(
            args,
            [
                "metrics_port",
                "group_id",
                "batch_max_rows",
                "batch_max_ms",
                "stop_after_idle_s",
                "session_timeout_ms",
                "heartbeat_interval_ms",
                "group_protocol",
            ],
        )
    )
    topics = settings.event_topics()
    if args.types:
        topics = {t: et for t, et in topics.items() if et in args.types}
    with psycopg.connect(settings.database_url) as conn:
        routes = build_routes(conn, settings, topics)
    ingestor = Ingestor(settings, routes)
    server = _serve(settings.metrics_port, ingestor.ready)
    try:
        summary = ingestor.run()
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(summary.report()))
    return 0


def _int_list(value: str) -> tuple[int, ...]:
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {value!r}")
    return tuple(int(p) for p in parts)


def _offset(value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or int(v) >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an offset (0 to 2^63-1), got {value!r}")
    return int(v)


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not value.isascii() or not 0 <= rate < float("inf"):
        raise argparse.ArgumentTypeError(f"expected events per second >= 0 (0 = no limit), got {value!r}")
    return rate


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
    from gatestream.progress import Progress

    settings = IngestSettings(**_overrides(args, ["metrics_port"]))
    server = _serve(settings.metrics_port)
    sel: dict[str, Any] = {"event_types": tuple(args.types or EventType)}
    if args.partitions is not None:
        sel["partitions"] = args.partitions
    if args.orgs is not None:
        sel["organizations"] = frozenset(args.orgs)
    # The selection as typed: a rerun of the same command line finds its unfinished run
    # even when its times are relative ("-30h" resolves once, when the run starts).
    spec = {
        "types": sorted(e.value for e in sel["event_types"]),
        "partitions": sorted(args.partitions) if args.partitions is not None else None,
        "from": args.start, "to": args.end, "from_offset": args.from_offset, "to_offset": args.to_offset,
        "orgs": sorted(args.orgs) if args.orgs is not None else None,
        "skew": args.skew,
    }  # fmt: skip
    try:
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
    import psycopg

    from gatestream.consumers.replay_runs import list_runs

    settings = CommonSettings()
    with psycopg.connect(settings.database_url) as conn:
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
    import psycopg

    from gatestream.consumers.replay import ReplayError, parse_duration
    from gatestream.consumers.replay_runs import forget

    try:
        older = parse_duration(args.older_than)
    except ReplayError as exc:
        print(f"gatestream replays forget: {exc}", file=sys.stderr)
        return 2
    with psycopg.connect(CommonSettings().database_url, autocommit=True) as conn:
        n = forget(conn, older)
    print(f"forgot {n} finished replay runs that ended more than {args.older_than} ago")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gatestream.status import group_status, print_status

    settings = IngestSettings(**_overrides(args, ["group_id"]))
    if args.json:
        print(json.dumps(group_status(settings, settings.group_id)))
        return 0
    return print_status(settings, settings.group_id)


def cmd_db_exporter(args: argparse.Namespace) -> int:
    import threading

    from prometheus_client import REGISTRY

    from gatestream.dbmetrics import DatabaseCollector
    from gatestream.signals import on_stop_signals

    settings = CommonSettings()
    collector = DatabaseCollector(settings.database_url, min_interval_s=args.min_interval)
    REGISTRY.register(collector)

    def ready() -> tuple[bool, str]:
        up = next(iter(collector.collect()))
        ok = bool(up.samples and up.samples[0].value == 1)
        return ok, "ok" if ok else "database unreachable"

    server = _serve(args.port, ready)
    stop = threading.Event()
    on_stop_signals(stop.set)
    stop.wait()
    server.stop()
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gatestream.report import print_report

    print_report(CommonSettings())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from gatestream.bench import bench_ingest, bench_metrics, bench_replay

    fn = {"ingest": bench_ingest, "replay": bench_replay, "metrics": bench_metrics}[args.bench_command]
    return fn(
        IngestSettings(), events=args.events, runs=args.runs, batch_rows=args.batch_rows, partitions=args.partitions
    )


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatestream",
        description="Monitoring-gateway events: Avro over Kafka into TimescaleDB hypertables, exactly once.",
        epilog="Connection settings come from GATESTREAM_* environment variables; "
        'for the local stack run: eval "$(ops/stack env)".',
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database tasks").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="apply the SQL migrations in sql/ (idempotent)").set_defaults(fn=cmd_migrate)
    dx = db.add_parser("exporter", help="serve database metrics (hypertables, chunks, compression, jobs, disk)")
    dx.add_argument("--port", type=int, default=9108, help="HTTP port for /metrics, /healthz, /readyz (9108)")
    dx.add_argument("--min-interval", type=float, default=10.0, help="seconds between database queries (10)")
    dx.set_defaults(fn=cmd_db_exporter)

    tp = sub.add_parser("topics", help="Kafka topic tasks").add_subparsers(dest="topics_command", required=True)
    te = tp.add_parser("ensure", help="create the event topics and the dead-letter topic if missing")
    te.add_argument("--partitions", type=int, help="partitions per new topic (default 6)")
    te.set_defaults(fn=cmd_topics)

    pr = sub.add_parser("produce", help="generate realistic gateway events and publish them (load generator)")
    pr.add_argument("--count", type=int, default=10_000, help="events to publish (default 10000)")
    pr.add_argument("--rate", type=float, default=0, help="events per second, 0 = as fast as possible")
    pr.add_argument("--orgs", type=int, default=3, help="organizations (default 3)")
    pr.add_argument("--devices", type=int, default=20, help="desktop seats per organization (default 20)")
    pr.add_argument("--gateways", type=int, default=2, help="gateways per organization (default 2)")
    pr.add_argument("--types", type=_types, default=list(EventType), help="comma-separated event types (default: all)")
    pr.add_argument("--spread-hours", type=float, default=1.0, help="event times spread over the last N hours")
    pr.add_argument("--seed", type=int, default=1, help="random seed (same seed, same events)")
    pr.add_argument("--spool-path", dest="spool_path", help="SQLite spool file (default gatestream-spool.sqlite3)")
    pr.add_argument("--flush-timeout", type=float, default=60, help="seconds to wait for delivery at the end")
    pr.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve /metrics (spool depth, ...)")
    pr.set_defaults(fn=cmd_produce)

    ing = sub.add_parser("ingest", help="run an ingest consumer-group member (start more to scale)")
    ing.add_argument("--group", dest="group_id", help="consumer group (default gatestream-ingest)")
    ing.add_argument("--types", type=_types, help="only these event types (default: all)")
    ing.add_argument("--batch-rows", dest="batch_max_rows", type=int, help="rows per micro-batch (default 5000)")
    ing.add_argument("--batch-ms", dest="batch_max_ms", type=int, help="max age of a micro-batch (default 500)")
    ing.add_argument(
        "--stop-after-idle",
        dest="stop_after_idle_s",
        type=float,
        help="exit 0 after this many seconds without new events (default: run until SIGTERM)",
    )
    ing.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="serve /metrics, /healthz, /readyz on this port"
    )
    ing.add_argument(
        "--group-protocol", dest="group_protocol", choices=["classic", "consumer"],
        help="consumer group protocol (default classic; consumer = KIP-848, Kafka >= 4.0)",
    )  # fmt: skip
    ing.add_argument(
        "--session-timeout-ms", dest="session_timeout_ms", type=int,
        help="classic protocol: a silent member's partitions move after this (default 10000)",
    )  # fmt: skip
    ing.add_argument("--heartbeat-interval-ms", dest="heartbeat_interval_ms", type=int, help="classic protocol")
    ing.set_defaults(fn=cmd_ingest)

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
    rp.add_argument("--types", type=_types, help="event types to replay (default: all)")
    rp.add_argument("--partitions", type=_int_list, help="only these partitions, e.g. 0,3 (default: all)")
    rp.add_argument(
        "--from", dest="start", metavar="TIME",
        help="event time to start at (inclusive): ISO 8601 (2026-11-23T10:00Z; naive = UTC), 'now', relative "
        "(-90s, -15m, -2h, -7d, -1w) or @EPOCH_SECONDS; a bare number is refused (offsets: --from-offset). "
        "Reading starts at the broker's offset for that time minus --skew",
    )  # fmt: skip
    rp.add_argument("--to", dest="end", metavar="TIME", help="event time to stop at (exclusive), same forms as --from")
    rp.add_argument("--from-offset", type=_offset, metavar="N", help="start at this offset in every selected partition")
    rp.add_argument(
        "--to-offset", type=_offset, metavar="N",
        help="stop before this offset (default: each partition's end when the run starts)",
    )  # fmt: skip
    rp.add_argument("--orgs", type=_int_list, help="only these organization ids, e.g. 12,40")
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
        "--max-rate", type=_rate, default=0,
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
    rf = rrs.add_parser("forget", help="delete finished runs (and their progress) that ended long enough ago")
    rf.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 0s (every finished run)")
    rf.set_defaults(fn=cmd_replays_forget)

    from gatestream import cli_policy

    cli_policy.add_parsers(sub)

    st = sub.add_parser("status", help="per partition: stored offset, end, lag in messages and seconds")
    st.add_argument("--group", dest="group_id", help="consumer group (default gatestream-ingest)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(fn=cmd_status)

    sub.add_parser("show", help="print what landed: rows per hypertable and organization, offsets").set_defaults(
        fn=cmd_show
    )

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    for name, text in (
        ("ingest", "raw binary COPY vs end-to-end ingest on the same events"),
        ("replay", "live ingest vs replay (rows missing, rows present) on the same events"),
        ("metrics", "end-to-end ingest with metrics on vs off, alternating, on the same events"),
    ):
        bi = bench.add_parser(name, help=text, description=text + ". Uses a database of its own (<db>_bench).")
        bi.add_argument("--events", type=int, default=300_000, help="events per run (default 300000)")
        bi.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
        bi.add_argument("--batch-rows", type=int, default=10_000, help="rows per batch in every path")
        bi.add_argument("--partitions", type=int, default=6, help="partitions of the bench topic")
        bi.set_defaults(fn=cmd_bench)
    return p


_RELATIVE_TIME = re.compile(r"^-\d+(\.\d+)?[smhdw]$")


def _join_relative_times(argv: list[str]) -> list[str]:
    """Let ``--from -2h`` mean ``--from=-2h`` (argparse takes '-2h' for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to") and _RELATIVE_TIME.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(_join_relative_times(sys.argv[1:] if argv is None else argv))
    common = CommonSettings()
    logs.configure(common.log_format, common.log_level)
    try:
        code = args.fn(args)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # output piped into head & co: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except Exception as exc:  # a clear one-line error for operators, the trace in the log
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            print(f"gatestream: bad setting: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        log.error("command failed", command=args.command, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        print(f"gatestream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


__all__ = ["main", "build_parser"]
