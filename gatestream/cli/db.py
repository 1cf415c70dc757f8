"""``gatestream db migrate|exporter|backup|restore``, ``topics ensure``, ``status`` and ``show``: the stores."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gatestream.cli.args import overrides, serve
from gatestream.settings import CommonSettings, IngestSettings, PolicySettings, ProducerSettings


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
    # the policy topic too (one partition, as `gatestream policy set` makes it): under ACLs the
    # policy consumer may read it but not create it
    created += ensure_topics(settings, [PolicySettings().policy_topic], partitions=1)
    print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gatestream.status import print_status

    settings = IngestSettings(**overrides(args, ["group_id"]))
    return print_status(settings, settings.group_id, as_json=args.json)


def cmd_db_exporter(args: argparse.Namespace) -> int:
    import threading

    from prometheus_client import REGISTRY

    from gatestream.database import connect
    from gatestream.dbmetrics import DatabaseCollector
    from gatestream.roles import EXPORTER_NEEDS, require
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
    try:
        # its privileges, once the database answers (readiness says it is unreachable meanwhile)
        with connect(settings.database_url, stop=stop) as conn:
            require(conn, EXPORTER_NEEDS)  # a role without a grant: one line and exit 2
        stop.wait()
    finally:
        server.stop()
    return 0


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 0 < int(value) <= 64):
        raise argparse.ArgumentTypeError(f"expected a number of processes from 1 to 64, got {value!r}")
    return int(value)


def _direct_only(command: str, settings: CommonSettings) -> bool:
    """pg_dump and pg_restore set session state (search_path, a snapshot shared by their processes): not
    through a pooler in transaction mode. True (after one line saying so) when the settings say there is one."""
    if settings.database_pooler != "transaction":
        return False
    print(
        f"gatestream db {command}: pg_dump and pg_restore need a session of their own, which a pooler in transaction "
        "mode does not keep: run it on a direct connection to the server (GATESTREAM_DATABASE_POOLER=none and the "
        "server's own URL in GATESTREAM_DATABASE_URL)",
        file=sys.stderr,
    )
    return True


def cmd_backup(args: argparse.Namespace) -> int:
    from gatestream.backup import BackupError, backup, describe
    from gatestream.pg_tools import ToolError

    settings = CommonSettings()
    if _direct_only("backup", settings):
        return 2
    try:
        r = backup(settings.database_url, args.folder, jobs=args.jobs, bindir=args.pg_bindir)
    except (BackupError, ToolError) as exc:
        print(f"gatestream db backup: {exc}", file=sys.stderr)
        return 1
    for note in r.notes:
        print(note, file=sys.stderr)
    print(f"backup of {describe(r.manifest)}")
    print(f"written to {r.folder}: {r.bytes / 1e6:.1f} MB in {r.seconds:.1f} s ({args.jobs} pg_dump processes)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from gatestream.backup import BackupError, describe
    from gatestream.pg_tools import ToolError
    from gatestream.restore import RestoreRefused, restore

    settings = CommonSettings()
    if _direct_only("restore", settings):
        return 2
    url = settings.database_url
    try:
        r = restore(url, args.folder, jobs=args.jobs, drop_existing=args.drop_existing,
                    maintenance_db=args.maintenance_db, bindir=args.pg_bindir)  # fmt: skip
    except RestoreRefused as exc:
        print(f"gatestream db restore: {exc}", file=sys.stderr)
        return 2
    except (BackupError, ToolError) as exc:
        print(f"gatestream db restore: {exc}", file=sys.stderr)
        return 1
    for note in r.notes:
        print(note, file=sys.stderr)
    print(f"restored {describe(r.manifest)}")
    print(f"in {r.seconds:.1f} s: " + ", ".join(f"{step} {s:.1f} s" for step, s in r.steps.items()))
    print("start the consumers: they resume at the restored offsets and re-read the rest from Kafka")
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
    bk = db.add_parser(
        "backup",
        help="pg_dump the database (directory format, in parallel) with the consumer offsets it holds",
        description="Dump GATESTREAM_DATABASE_URL's database into FOLDER with pg_dump's directory format, "
        "one table (chunk) per process. All processes read one snapshot, and the stored Kafka offsets "
        "as of that snapshot go into FOLDER/gatestream-backup.json: a restore rewinds rows and offsets "
        "together and the consumers re-read the rest from Kafka. Needs pg_dump of the server's PostgreSQL "
        "version or newer. Topic retention must outlast the time between backups.",
    )
    bk.add_argument("folder", type=Path, help="where to write the backup (must not exist, or be empty)")
    bk.add_argument("--jobs", "-j", type=_positive, default=2, help="pg_dump processes (2)")
    bk.add_argument("--pg-bindir", type=Path, help="folder of pg_dump (default: pg_config --bindir, then PATH)")
    bk.set_defaults(fn=cmd_backup)
    rs = db.add_parser(
        "restore",
        help="restore a backup into a fresh database (TimescaleDB's pre/post restore steps, in parallel)",
        description="Restore FOLDER (made by gatestream db backup) into GATESTREAM_DATABASE_URL's database: "
        "creates it (on the same server, through --maintenance-db), creates the timescaledb extension at "
        "the backup's version, runs timescaledb_pre_restore(), pg_restore (schema; TimescaleDB's catalog; "
        "the data and then the indexes with --jobs processes) and timescaledb_post_restore(), then checks "
        "the restored consumer offsets against the backup's. Refuses (exit 2) a database that exists and "
        "holds tables, unless --drop-existing.",
    )
    rs.add_argument("folder", type=Path, help="the backup's folder")
    rs.add_argument("--jobs", "-j", type=_positive, default=2, help="pg_restore processes for data and indexes (2)")
    rs.add_argument("--drop-existing", action="store_true",
                    help="drop the target database first if it holds tables (everything in it is lost)")  # fmt: skip
    rs.add_argument("--maintenance-db", default="postgres", help="database to connect to for CREATE/DROP (postgres)")
    rs.add_argument("--pg-bindir", type=Path, help="folder of pg_restore (default: pg_config --bindir, then PATH)")
    rs.set_defaults(fn=cmd_restore)

    tp = sub.add_parser("topics", help="Kafka topic tasks").add_subparsers(dest="topics_command", required=True)
    te = tp.add_parser(
        "ensure",
        help="create the event topics, the dead-letter topic and the policy topic if missing (as many replicas as "
        "the cluster's default.replication.factor)",
    )
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
