"""``gatestream db migrate|exporter``, ``topics ensure``, ``status`` and ``show``: the stores."""

from __future__ import annotations

import argparse
from typing import Any

from gatestream.cli.args import overrides, serve
from gatestream.settings import CommonSettings, IngestSettings, ProducerSettings


def cmd_migrate(args: argparse.Namespace) -> int:
    from gatestream.migrate import migrate

    settings = CommonSettings()
    applied = migrate(settings.database_url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from gatestream.schemas import event_topics
    from gatestream.topics import ensure_topics

    settings = ProducerSettings(**overrides(args, ["partitions"]))
    names = [*event_topics(settings), settings.dlq_topic]
    created = ensure_topics(settings, names, settings.partitions)
    print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gatestream.status import print_status

    settings = IngestSettings(**overrides(args, ["group_id"]))
    return print_status(settings, settings.group_id, as_json=args.json)


def cmd_db_exporter(args: argparse.Namespace) -> int:
    import threading

    from prometheus_client import REGISTRY

    from gatestream.dbmetrics import DatabaseCollector
    from gatestream.signals import on_stop_signals

    settings = CommonSettings()
    collector = DatabaseCollector(
        settings.database_url, min_interval_s=args.min_interval, offline_after_s=settings.presence_offline_after_s
    )
    REGISTRY.register(collector)

    def ready() -> tuple[bool, str]:
        up = next(iter(collector.collect()))
        ok = bool(up.samples and up.samples[0].value == 1)
        return ok, "ok" if ok else "database unreachable"

    server = serve(args.port, ready)
    stop = threading.Event()
    on_stop_signals(stop.set)
    stop.wait()
    server.stop()
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gatestream.report import print_report

    print_report(CommonSettings())
    return 0


def add_parsers(sub: Any) -> None:
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

    st = sub.add_parser(
        "status",
        help="per partition: stored offset, end, lag in messages and seconds",
        description="Where a consumer group stands: per partition its offset stored in the database, the "
        "topic's end and the lag. Exits 1 if the group never stored an offset (the groups that did are "
        "named), and with one line if the database does not answer within a few seconds.",
    )
    st.add_argument("--group", dest="group_id", help="consumer group (default gatestream-ingest)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(fn=cmd_status)

    sub.add_parser("show", help="print what landed: rows per hypertable and organization, offsets").set_defaults(
        fn=cmd_show
    )
