"""``gatestream bench ingest|replay|metrics|latency``: figures measured in one run (medians, ratios).

The fault bench lives in the checkout (``python -m bench.faults``); ``bench faults`` says so."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gatestream.settings import IngestSettings


def cmd_bench(args: argparse.Namespace) -> int:
    from gatestream.bench import bench_ingest, bench_metrics, bench_replay

    if args.bench_command == "latency":
        from gatestream.bench_latency import bench_latency

        return bench_latency(
            IngestSettings(), rates=args.rate, seconds=args.seconds, runs=args.runs, warmup_s=args.warmup,
            json_path=args.json,
        )  # fmt: skip
    if args.bench_command == "replay":
        return bench_replay(
            IngestSettings(), events=args.events, runs=args.runs, batch_rows=args.batch_rows,
            partitions=args.partitions, max_rate=args.max_rate,
        )  # fmt: skip
    if args.bench_command == "ingest":
        return bench_ingest(
            IngestSettings(), events=args.events, runs=args.runs, batch_rows=args.batch_rows,
            partitions=args.partitions, members=args.members, json_path=args.json, decode=args.decode,
            presence=args.presence,
        )  # fmt: skip
    return bench_metrics(
        IngestSettings(), events=args.events, runs=args.runs, batch_rows=args.batch_rows, partitions=args.partitions
    )


def add_parsers(sub: Any) -> None:
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
        if name == "ingest":
            bi.add_argument(
                "--members", type=_counts, default=None, metavar="N,N,...",
                help="instead: N consumer processes in one group on one topic of 12 partitions, for each N "
                "(e.g. 1,2,4), started together (each joins with its partitions paused; the clock starts when all "
                "12 are assigned); total events/s and consumer CPU per event per count",
            )  # fmt: skip
            bi.add_argument(
                "--decode", type=_paths, default=None, metavar="PATH,...",
                help="the Avro decoding paths to measure, each in every run: native, python or native,python "
                "(default: native where the extension is built, else python); with --members the first one",
            )  # fmt: skip
            bi.add_argument(
                "--presence", action="store_true",
                help="events carry their organization's gateway identity (as a gateway's Publisher stamps it); the "
                "first decoding path also runs without presence tracking, and both figures are reported",
            )  # fmt: skip
            bi.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE as JSON")
        if name == "replay":
            bi.add_argument(
                "--max-rate", type=float, default=0, metavar="EVENTS_PER_S",
                help="also replay the events limited to this rate and report the rate achieved (default 0: skip)",
            )  # fmt: skip
        bi.set_defaults(fn=cmd_bench)

    add_latency_parser(bench)
    add_presence_parser(bench)

    # The fault bench drives the checkout's ops/ scripts and the local stack: it lives beside
    # the product (bench/faults.py), not in the wheel. The old name tells where it went.
    # (no options of its own: whatever follows, --help and --short included, gets the message)
    add_dataset_parsers(bench)

    bf = bench.add_parser("faults", help=FAULTS_MOVED, description=FAULTS_MOVED, add_help=False, prefix_chars="+")
    bf.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    bf.set_defaults(fn=cmd_faults)


LATENCY_HELP = (
    "event -> row-committed latency at a steady rate: one ingest member with default settings, events published "
    "through the real Publisher; per event the publish call to the commit that made its row visible "
    "(pg_xact_commit_timestamp; needs track_commit_timestamp = on), split into the producer's share (publish call "
    "to delivery report) and the pipeline's (delivery report to commit); p50, p99, p99.9 and max, medians over "
    "the runs. Uses a database of its own (<db>_latency) and a fresh topic per run."
)


def add_presence_parser(bench: Any) -> None:
    text = "consumer CPU per event of presence tracking and the tenant check (PresenceTracker.apply), both paths"
    bp = bench.add_parser("presence", help=text, description=text + ": " + PRESENCE_HELP)
    bp.add_argument("--rows", type=_count, default=100_000, help="events per run (default 100k)")
    bp.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    bp.add_argument("--batch-rows", type=int, default=5000, help="rows per micro-batch (default 5000, ingest's)")
    bp.set_defaults(fn=cmd_presence)


PRESENCE_HELP = (
    "realistic active_windows events (10 organizations of 100 seats, one gateway each, the identity headers a "
    "gateway's Publisher stamps) decoded into micro-batches by each path, then PresenceTracker.apply on each batch in "
    "a rolled-back transaction of a scratch database <db>_presence (dropped afterwards); this process's CPU time "
    "(process_time, so a busy machine does not inflate it) per row. No Kafka. Target: <= 1 µs per event."
)


def cmd_presence(args: argparse.Namespace) -> int:
    from gatestream.benches.presence import bench_presence

    return bench_presence(IngestSettings(), rows=args.rows, runs=args.runs, batch_rows=args.batch_rows)


def add_latency_parser(bench: Any) -> None:
    bl = bench.add_parser("latency", help="event -> row-committed latency at a steady rate", description=LATENCY_HELP)
    bl.add_argument(
        "--rate", type=_rates, default=[1000, 10000], metavar="R[,R...]",
        help="events per second, comma-separated; each rate is measured in each run (default 1000,10000)",
    )  # fmt: skip
    bl.add_argument("--seconds", type=float, default=120, help="measured seconds per rate and run (default 120)")
    bl.add_argument("--warmup", type=float, default=5, help="seconds published before measuring (default 5)")
    bl.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    bl.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    bl.set_defaults(fn=cmd_bench)


def _rates(text: str) -> list[int]:
    return _positive_ints(text, "events per second")


def _counts(text: str) -> list[int]:
    return _positive_ints(text, "member counts")


def _positive_ints(text: str, what: str) -> list[int]:
    """``1,2,4``: comma-separated integers, each above 0."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what}: at least one, each above 0, got {text!r}")
    return values


def _paths(text: str) -> list[str]:
    paths = [p.strip() for p in text.split(",")]
    if not paths or any(p not in ("native", "python") for p in paths) or len(set(paths)) != len(paths):
        raise argparse.ArgumentTypeError(f"expected native, python or native,python, got {text!r}")
    return paths


STORAGE_HELP = (
    "bytes per row per hypertable (heap, indexes, TOAST) on a generated, realistic dataset (60 days, 1,000 "
    "organizations, 50,000 devices, 5,000 gateways, Zipf-skewed activity; loaded by binary COPY into a scratch "
    "database <db>_bench_storage, dropped afterwards), and on the Community edition the columnstore ratio with the "
    "settings the policy consumer applies (segmentby organization_id, orderby <device>, <time> DESC, sparse index "
    "bloom(event_id); goal >= 10:1). "
    "On the Apache edition the columnstore part says it is not available, and why."
)


def add_dataset_parsers(bench: Any) -> None:
    """bench storage: the generated dataset's bytes per row and columnstore ratio."""
    bs = bench.add_parser("storage", help="bytes per row per hypertable and the columnstore ratio",
                          description=STORAGE_HELP)  # fmt: skip
    bs.add_argument("--rows", type=_count, default=2_000_000, help="rows in all hypertables together (default 2M; "
                    "k/M suffixes allowed, e.g. 10M)")  # fmt: skip
    bs.add_argument("--days", type=int, default=1, help="days the rows are spread over (default 1: the ratio depends "
                    "on how many rows a device has per chunk (a day); production's 100M events/day over 50k devices "
                    "is 2,000 per device and day: --rows 1M --orgs 25 --devices 500 --gateways 50 has that "
                    "density)")  # fmt: skip
    _fleet_options(bs)
    bs.add_argument("--runs", type=int, default=3, help="compress/decompress runs; medians reported (default 3)")
    bs.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    bs.add_argument("--orderby", metavar="COLUMNS", help="measure this columnstore orderby instead of the policy's "
                    "(a comparison, e.g. 'datetime DESC'; <time> stands for each table's time column)")  # fmt: skip
    bs.add_argument("--sparse-index", metavar="INDEXES", help="measure these columnstore sparse indexes instead "
                    "of the policy's bloom(event_id) (a comparison, e.g. 'bloom(event_id), bloom(title)'; '' for "
                    "none)")  # fmt: skip
    bs.add_argument("--keep", action="store_true", help="keep the scratch database afterwards (to look at it)")
    bs.set_defaults(fn=cmd_storage)

    bq = bench.add_parser("queries", help="p50/p99 of the dashboard queries on a generated dataset",
                          description=QUERIES_HELP)  # fmt: skip
    bq.add_argument("--rows", type=_count, default=10_000_000, help="rows in all hypertables together (default 10M, "
                    "the issue's figure; 100M on demand; a sanity run: 200k)")  # fmt: skip
    bq.add_argument("--days", type=int, default=60, help="days the rows are spread over (default 60)")
    _fleet_options(bq)
    bq.add_argument("--runs", type=int, default=50, help="runs of each query per round, random parameters (default 50)")
    bq.add_argument("--rounds", type=int, default=3, help="rounds; the median of their p50/p99 is reported (default 3)")
    bq.add_argument("--explain", action="store_true", help="print each query's plan (EXPLAIN ANALYZE, BUFFERS) for "
                    "the largest organization first")  # fmt: skip
    bq.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    bq.add_argument("--keep", action="store_true", help="keep the scratch database afterwards (to look at it)")
    bq.add_argument("--reuse", action="store_true", help="measure again on the dataset a run with --keep left "
                    "(the same --rows/--days/fleet options): no new load; the aggregates are refreshed (on the "
                    "Community edition only what changed) and the database is kept")  # fmt: skip
    bq.add_argument("--as-reader", action="store_true", help="run the queries as gatestream_reader (SET ROLE, "
                    "gatestream.organization_id set to each query's organization) through its views in schema reader "
                    "(sql/051): what limiting readers to their organization costs")  # fmt: skip
    bq.set_defaults(fn=cmd_queries)


QUERIES_HELP = (
    "the dashboard queries (gatestream/benches/dashboard_queries.py: active time per user and day over 7 and 30 "
    "days, top 10 applications and sites over 7 days, one user's day, the latest status of an organization's "
    "gateways, the daily totals over 90 days) on a generated dataset (60 days, 1,000 organizations, 50,000 devices, "
    "5,000 gateways, Zipf-skewed; loaded by binary COPY into a scratch database <db>_bench_queries, dropped "
    "afterwards): the aggregates are refreshed, then each query runs --runs times per round with random parameters "
    "(organizations drawn by size); p50/p99 per query, medians over the rounds. Goal: p99 < 100 ms each at 10M rows. "
    "Exit status 1 when a query misses it."
)


def _fleet_options(parser: Any) -> None:
    parser.add_argument("--orgs", type=int, default=1000, help="organizations (default 1000; Zipf-sized)")
    parser.add_argument("--devices", type=_count, default=50_000, help="devices, users_on_computers_id (default 50k)")
    parser.add_argument("--gateways", type=_count, default=5_000, help="gateways (default 5k)")


def _spec(args: argparse.Namespace) -> Any:
    from gatestream.benches.dataset import DatasetSpec

    if args.devices < args.orgs or args.gateways < args.orgs:
        print("gatestream bench: --devices and --gateways must be at least --orgs (one of each per organization)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)  # a bad argument, as argparse's own
    return DatasetSpec(rows=args.rows, days=args.days, orgs=args.orgs, devices=args.devices, gateways=args.gateways)


def _count(text: str) -> int:
    """A row count: 200000, 200k, 10M, 1.5M."""
    units = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    t = text.strip().lower().replace("_", "").replace(",", "")
    try:
        n = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 200000, 200k, 10M)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return int(n)


def cmd_storage(args: argparse.Namespace) -> int:
    from gatestream.benches.storage import bench_storage
    from gatestream.settings import CommonSettings

    return bench_storage(
        CommonSettings(),
        spec=_spec(args),
        runs=args.runs,
        json_path=args.json,
        keep=args.keep,
        orderby=args.orderby,
        sparse_index=args.sparse_index,
    )


def cmd_queries(args: argparse.Namespace) -> int:
    from gatestream.benches.queries import bench_queries
    from gatestream.settings import CommonSettings

    return bench_queries(
        CommonSettings(), spec=_spec(args), runs=args.runs, rounds=args.rounds,
        show_plans=args.explain, json_path=args.json, keep=args.keep, reuse=args.reuse, as_reader=args.as_reader,
    )  # fmt: skip


FAULTS_MOVED = "the fault bench is not part of the package: from a checkout, run python -m bench.faults [--short]"


def cmd_faults(args: argparse.Namespace) -> int:
    print(f"gatestream bench faults: {FAULTS_MOVED}", file=sys.stderr)
    return 2
