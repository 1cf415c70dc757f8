"""``gatestream import`` and ``gatestream import verify``: a legacy plain-PostgreSQL table into
its hypertable, and the per-organization, per-day comparison of the two."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from gatestream.cli.args import UsageError, overrides
from gatestream.settings import ImportSettings

_EPILOG = """\
mapping file (TOML), every key optional where a flag gives it:
  [source]
  table = "public.active_windows"   # [schema.]table in the legacy database
  primary_key = "id"                # integer primary key the import pages on (default id)
  timezone = "UTC"                  # zone of timestamp-without-time-zone columns (default UTC)
  [target]
  table = "active_windows"          # monitoring.<name> or schema.table (a hypertable)
  [columns]                         # target column = source column (others: same name, else default)
  users_on_computers_id = "user_on_computer_id"

settings (flags override): GATESTREAM_IMPORT_SOURCE_URL, GATESTREAM_IMPORT_SOURCE_NAME,
GATESTREAM_IMPORT_BATCH_ROWS (50000), GATESTREAM_IMPORT_PAUSE_S (0); the target is GATESTREAM_DATABASE_URL.

exit status: 0 done (verify: every day matches), 1 verify found differing days or an error,
2 a mapping, a source or a flag that cannot work (one line says which), 130 interrupted
(run again: it resumes after the last committed batch)."""


def _settings(args: argparse.Namespace) -> ImportSettings:
    return ImportSettings(
        **overrides(args, ["import_source_url", "import_source_name", "import_batch_rows", "import_pause_s"])
    )


def _mapping(args: argparse.Namespace) -> Any:
    from gatestream.legacy.mapping import MappingError, build_mapping, load_mapping_file, parse_column_flag

    try:
        values: dict[str, Any] = load_mapping_file(Path(args.mapping)) if args.mapping else {}
        flags = {
            "source_table": args.source_table, "source_primary_key": args.primary_key,
            "source_timezone": args.source_timezone, "source_id_scope": args.id_scope, "target_table": args.target,
        }  # fmt: skip
        values.update({k: v for k, v in flags.items() if v is not None})
        if args.column:
            values["columns"] = {**values.get("columns", {}), **dict(map(parse_column_flag, args.column))}
        return build_mapping(values)
    except MappingError as exc:
        raise UsageError(str(exc)) from None


def _window(args: argparse.Namespace) -> Any:
    from gatestream.consumers.replay_selection import ReplayError, parse_time
    from gatestream.legacy.importer import Window

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until")
    return Window(since, until)


def _connect(settings: ImportSettings) -> tuple[Any, Any, str]:
    """(source, target, source identity); the source session read-only."""
    from gatestream.database import DatabaseSettingError, DatabaseUnavailable, connect_once, where
    from gatestream.legacy.plan import utc_session
    from gatestream.roles import IMPORT_NEEDS, require

    if settings.database_pooler == "transaction":
        raise UsageError(
            "gatestream import holds a session advisory lock and session settings on the target for its whole run, "
            "which a pooler in transaction mode does not keep: run it on a direct connection to the server "
            "(GATESTREAM_DATABASE_POOLER=none and the server's own URL in GATESTREAM_DATABASE_URL)"
        )
    if not settings.import_source_url:
        raise UsageError("no legacy database: give --source-url or set GATESTREAM_IMPORT_SOURCE_URL")
    try:
        source = connect_once(settings.import_source_url)
    except (DatabaseUnavailable, DatabaseSettingError) as exc:
        raise UsageError(f"legacy database: {exc}") from None
    source.execute("SET default_transaction_read_only = on")
    target = connect_once(settings.database_url)
    require(target, IMPORT_NEEDS)  # runs as gatestream_replay: one line and exit 2 without a grant
    for conn in (source, target):
        utc_session(conn)
    return source, target, settings.import_source_name or where(settings.import_source_url)


def _plan(mapping: Any, source: Any, target: Any) -> Any:
    from gatestream.legacy.mapping import MappingError
    from gatestream.legacy.plan import make_plan

    try:
        return make_plan(mapping, source, target)
    except MappingError as exc:
        raise UsageError(str(exc)) from None


def cmd_import(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return cmd_verify(args)
    from gatestream.legacy.importer import Importer
    from gatestream.legacy.mapping import MappingError
    from gatestream.progress import Progress

    settings = _settings(args)
    mapping, window = _mapping(args), _window(args)
    source, target, identity = _connect(settings)
    with source, target:
        plan = _plan(mapping, source, target)
        importer = Importer(plan, source, target, identity, settings.import_batch_rows, settings.import_pause_s, window)
        try:
            after, done = importer.start(restart=args.restart)
        except MappingError as exc:
            raise UsageError(str(exc)) from None
        if after is not None:
            print(f"resuming after {mapping.primary_key} {after} ({done} rows read before)", file=sys.stderr)
        label = f"import {plan.source_name}"
        with Progress(label, total=importer.remaining_estimate(done), enabled=not args.no_progress) as progress:
            importer.on_batch = progress.update
            summary = importer.run()
    print(
        f"{plan.source_name} -> {plan.target_name}: read {summary.read}, inserted {summary.inserted}, "
        f"already there {summary.duplicates}, rejected {summary.rejected}, in {summary.seconds:.1f} s "
        f"({summary.rows_per_s:.0f} rows/s)"
    )
    if summary.rejected:
        print(
            f"{summary.rejected} rows were refused by {plan.target_name}: reasons in gatestream.import_rejects",
            file=sys.stderr,
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gatestream.legacy.verify import differences, rejected_count, source_digests, target_digests

    settings = _settings(args)
    mapping, window = _mapping(args), _window(args)
    source, target, identity = _connect(settings)
    with source, target:
        plan = _plan(mapping, source, target)
        src = source_digests(source, plan, window)
        dst = target_digests(target, plan, window)
        rejected = rejected_count(target, identity, plan)
    diffs = differences(src, dst)
    for d in diffs:
        print(d.describe())
    days = len(src.keys() | dst.keys())
    rows = sum(d.rows for d in src.values())
    if diffs:
        print(f"{len(diffs)} of {days} organization-days differ ({plan.source_name} -> {plan.target_name})")
        if rejected:
            print(f"{rejected} source rows were refused at import: see gatestream.import_rejects")
        return 1
    print(f"all {days} organization-days match: {rows} rows ({plan.source_name} -> {plan.target_name})")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="copy a legacy PostgreSQL table into its hypertable; 'import verify' compares them per day",
        description=textwrap.fill(
            "Copy a legacy plain-PostgreSQL table into its hypertable, in batches in primary-key order "
            "(COPY both ways), each batch committed with a checkpoint: a killed run, run again, resumes after the last "
            "committed batch. Every row's event_id is derived from its legacy primary key (UUIDv5), so importing again "
            "adds nothing; a finished import run again copies only rows added since. 'gatestream import verify' "
            "compares the legacy table and the hypertable per organization and UTC day (row count and a hash of each "
            "row's text, computed by each server) and prints the days that differ.",
            88,
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=["verify"], help="verify: compare instead of copying")
    p.add_argument("--mapping", metavar="FILE", help="TOML mapping file (see below)")
    p.add_argument("--source-url", dest="import_source_url", metavar="URL", help="legacy database connection URL")
    p.add_argument("--source-table", metavar="[SCHEMA.]TABLE", help="legacy table (schema default public)")
    p.add_argument("--target", metavar="[SCHEMA.]TABLE", help="hypertable, e.g. active_windows (schema monitoring)")
    p.add_argument("--primary-key", metavar="COLUMN", help="legacy integer primary key (default id)")
    p.add_argument(
        "--column", action="append", metavar="TARGET=SOURCE",
        help="fill target column TARGET from source column SOURCE (repeatable; adds to the file's [columns])",
    )  # fmt: skip
    p.add_argument("--source-timezone", metavar="ZONE", help="zone of timestamp-without-time-zone columns (UTC)")
    p.add_argument(
        "--id-scope", metavar="TEXT",
        help="what names the rows in their event_id besides the primary key (default: the source table); give "
        "each shard of a sharded legacy table its own",
    )  # fmt: skip
    p.add_argument(
        "--source-name", dest="import_source_name", metavar="NAME",
        help="names the source in the checkpoint (default host:port/dbname of the source URL)",
    )  # fmt: skip
    p.add_argument("--batch-rows", dest="import_batch_rows", type=int, metavar="N", help="rows per batch (50000)")
    p.add_argument(
        "--pause", dest="import_pause_s", type=float, metavar="SECONDS",
        help="pause between batches, to spare the legacy database (0)",
    )  # fmt: skip
    p.add_argument(
        "--since", metavar="TIME",
        help="only rows whose time is at or after this (ISO 8601, naive = UTC; or -7d, @EPOCH)",
    )  # fmt: skip
    p.add_argument(
        "--until", metavar="TIME",
        help="only rows whose time is before this: e.g. the dual-write cut-over, after which the rows arrive "
        "through Kafka",
    )  # fmt: skip
    p.add_argument("--restart", action="store_true", help="ignore the checkpoint: read the legacy table from the start")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    p.set_defaults(fn=cmd_import)
