"""``gatestream produce``: the load generator, through the real Publisher and its spool."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from typing import Any

from gatestream.cli.args import catalog_types, event_types, overrides, serve, types_help
from gatestream.settings import ProducerSettings


def cmd_produce(args: argparse.Namespace) -> int:
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.kafka_access import require as kafka_require
    from gatestream.producers.loadgen import Fleet, generate
    from gatestream.producers.publisher import Publisher
    from gatestream.ratelimit import RateLimiter

    settings = ProducerSettings(**overrides(args, ["spool_path", "metrics_port"]))
    types = catalog_types(settings, args.types)
    kafka_require(settings, KafkaNeeds(write=tuple(settings.topic_for(t) for t in types)))
    fleet = Fleet(orgs=args.orgs, devices_per_org=args.devices, gateways_per_org=args.gateways, seed=args.seed)
    pub = Publisher(settings)
    server = serve(settings.metrics_port)
    limiter = RateLimiter(args.rate)
    started = time.monotonic()
    chunk: list[Any] = []
    events = generate(
        args.count, fleet, types, seed=args.seed, spread=timedelta(hours=args.spread_hours), catalog=pub.catalog
    )
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


def add_parsers(sub: Any) -> None:
    pr = sub.add_parser("produce", help="generate realistic gateway events and publish them (load generator)")
    pr.add_argument("--count", type=int, default=10_000, help="events to publish (default 10000)")
    pr.add_argument("--rate", type=float, default=0, help="events per second, 0 = as fast as possible")
    pr.add_argument("--orgs", type=int, default=3, help="organizations (default 3)")
    pr.add_argument("--devices", type=int, default=20, help="desktop seats per organization (default 20)")
    pr.add_argument("--gateways", type=int, default=2, help="gateways per organization (default 2)")
    pr.add_argument("--types", type=event_types, help=types_help("produce"))
    pr.add_argument("--spread-hours", type=float, default=1.0, help="event times spread over the last N hours")
    pr.add_argument("--seed", type=int, default=1, help="random seed (same seed, same events)")
    pr.add_argument("--spool-path", dest="spool_path", help="SQLite spool file (default gatestream-spool.sqlite3)")
    pr.add_argument("--flush-timeout", type=float, default=60, help="seconds to wait for delivery at the end")
    pr.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve /metrics (spool depth, ...)")
    pr.set_defaults(fn=cmd_produce)
