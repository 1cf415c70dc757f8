"""``gatestream bench ingest|replay|metrics``: figures measured in one run (medians, ratios)."""

from __future__ import annotations

import argparse
from typing import Any

from gatestream.settings import IngestSettings


def cmd_bench(args: argparse.Namespace) -> int:
    from gatestream.bench import bench_ingest, bench_metrics, bench_replay

    if args.bench_command == "replay":
        return bench_replay(
            IngestSettings(), events=args.events, runs=args.runs, batch_rows=args.batch_rows,
            partitions=args.partitions, max_rate=args.max_rate,
        )  # fmt: skip
    fn = {"ingest": bench_ingest, "metrics": bench_metrics}[args.bench_command]
    return fn(
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
        if name == "replay":
            bi.add_argument(
                "--max-rate", type=float, default=0, metavar="EVENTS_PER_S",
                help="also replay the events limited to this rate and report the rate achieved (default 0: skip)",
            )  # fmt: skip
        bi.set_defaults(fn=cmd_bench)

    from gatestream.faultbench import SCENARIOS

    short = ["consumer-kill-9", "fault-hooks", "connection-killed", "postgres-crash", "broker-kill-9",
             "producer-kill-9", "rebalance-storm"]  # fmt: skip
    bf = bench.add_parser(
        "faults",
        help="the real pipeline under faults, every event counted; exits 1 on any loss or duplicate",
        description="Runs the load generator, several ingest processes, the broker and TimescaleDB, injects "
        "faults while events flow and counts every event end to end. Stops and starts the local stack's "
        "PostgreSQL in its postgres-crash and database-away scenarios: run it alone.",
    )
    bf.add_argument("--short", action="store_true", help=f"the CI form (under 3 minutes): {', '.join(short)}")
    bf.add_argument("--scenarios", help=f"comma-separated (default: all): {', '.join(SCENARIOS)}")
    bf.add_argument("--events", type=int, default=20000, help="events per scenario round (default 20000)")
    bf.add_argument("--rate", type=int, default=2000, help="events per second from the load generator (2000)")
    bf.add_argument("--seconds", type=float, default=15, help="how long faults are injected per round (15)")
    bf.add_argument("--rounds", type=int, default=1, help="rounds of every scenario (default 1)")
    bf.add_argument("--seed", type=int, default=7, help="random seed of the fault timing")
    bf.set_defaults(fn=cmd_faults, short_list=short)


def cmd_faults(args: argparse.Namespace) -> int:
    from gatestream.faultbench import SCENARIOS, bench_faults

    if args.short:
        scenarios, events, rate, seconds = args.short_list, 4000, 1000, 6.0
    else:
        scenarios = [s.strip() for s in args.scenarios.split(",")] if args.scenarios else list(SCENARIOS)
        events, rate, seconds = args.events, args.rate, args.seconds
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        print(f"gatestream bench faults: error: unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
        return 2
    return bench_faults(
        IngestSettings(), scenarios=scenarios, events=events, rate=rate, seconds=seconds, rounds=args.rounds,
        seed=args.seed,
    )  # fmt: skip
