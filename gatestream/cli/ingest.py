"""``gatestream ingest``: one consumer-group member; start more processes to scale."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from typing import Any

import structlog

from gatestream.cli.args import catalog_types, event_types, overrides, serve, types_help
from gatestream.settings import IngestSettings

log = structlog.get_logger("gatestream.ingest")


def cmd_ingest(args: argparse.Namespace) -> int:
    import psycopg

    from gatestream.consumers.ingest import Ingestor, Route, build_routes
    from gatestream.database import connect
    from gatestream.group_protocol import group_protocol_for
    from gatestream.kafka import base_config
    from gatestream.kafka_access import KafkaNeeds
    from gatestream.kafka_access import require as kafka_require
    from gatestream.roles import INGEST_NEEDS, require
    from gatestream.schemas.registry import registry_unreachable
    from gatestream.signals import on_stop_signals
    from gatestream.waiting import wait_for_service

    settings = IngestSettings(
        **overrides(
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
                "group_instance_id",
            ],
        )
    )
    topics = {settings.topic_for(et): et for et in catalog_types(settings, args.types)}
    # The ops server first: while the database is still unreachable, /healthz answers and
    # /readyz says what the process is waiting for.
    ready: list[Callable[[], tuple[bool, str]]] = [lambda: (False, "starting: waiting for the database")]
    server = serve(settings.metrics_port, lambda: ready[0]())
    stop = threading.Event()
    on_stop_signals(stop.set)
    # authentication, TLS and ACLs: a refusal is one line and exit 2, now
    kafka_require(settings, KafkaNeeds(read=tuple(topics), write=(settings.dlq_topic,), groups=(settings.group_id,)))

    def load_routes() -> dict[str, Route]:
        with connect(settings.database_url, stop=stop) as conn:  # waits for the database
            require(conn, INGEST_NEEDS)  # a role without a grant: one line and exit 2, now
            return build_routes(conn, settings, topics)  # needs the schema registry

    def waiting_for_registry(_: BaseException) -> None:
        ready[0] = lambda: (False, "starting: waiting for the schema registry")

    try:
        ingestor: Ingestor | None = None
        try:
            routes = wait_for_service(
                "schema registry", load_routes, retry=registry_unreachable, stop=stop,
                on_failure=waiting_for_registry, logger=log,
            )  # fmt: skip
            if not stop.is_set():
                # auto: ask the broker now (it may take seconds when the broker is away), so a
                # stop asked for meanwhile is seen below rather than lost
                ready[0] = lambda: (False, "starting: asking the broker which group protocol it offers")
                group_protocol_for(settings, base_config(settings))
            if not stop.is_set():
                ingestor = Ingestor(settings, routes, stop=stop)
        except Exception as exc:
            if not (stop.is_set() and (isinstance(exc, psycopg.OperationalError) or registry_unreachable(exc))):
                raise
        if ingestor is None:  # asked to stop while waiting for the database or the registry
            log.info("ingest stopped before it started")
            return 0
        ready[0] = ingestor.ready
        summary = ingestor.run()
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(summary.report()))
    return 0


def add_parsers(sub: Any) -> None:
    ing = sub.add_parser("ingest", help="run an ingest consumer-group member (start more to scale)")
    ing.add_argument("--group", dest="group_id", help="consumer group (default gatestream-ingest)")
    ing.add_argument("--types", type=event_types, help=types_help("ingest"))
    ing.add_argument("--batch-rows", dest="batch_max_rows", type=int, help="max rows of a micro-batch (default 5000)")
    ing.add_argument(
        "--batch-ms", dest="batch_max_ms", type=int,
        help="max age of a micro-batch (default 100); a batch commits sooner, as soon as the consumer has nothing "
        "more buffered and the previous batch has committed (GATESTREAM_BATCH_ADAPTIVE=false: only when full or old)",
    )  # fmt: skip
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
        "--group-protocol", dest="group_protocol", choices=["auto", "classic", "consumer"],
        help="consumer group protocol (default auto: consumer = KIP-848 where the broker offers it, else classic)",
    )  # fmt: skip
    ing.add_argument(
        "--group-instance-id", dest="group_instance_id",
        help="static membership (classic): this process's own id, stable across restarts, e.g. the pod name",
    )  # fmt: skip
    ing.add_argument(
        "--session-timeout-ms", dest="session_timeout_ms", type=int,
        help="classic protocol: a silent member's partitions move after this (default 10000)",
    )  # fmt: skip
    ing.add_argument("--heartbeat-interval-ms", dest="heartbeat_interval_ms", type=int, help="classic protocol")
    ing.set_defaults(fn=cmd_ingest)
