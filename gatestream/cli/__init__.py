"""The ``gatestream`` command line: parses, calls the library, prints. One module per command
group (db, produce, ingest, replay, dlq, policy, cdc, fleet, kafka, bench, import); the library
never imports it.

Settings come from ``GATESTREAM_*`` environment variables (``ops/stack env`` prints
them for the local stack); flags override them for one run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

import psycopg
import structlog
from pydantic import ValidationError

from gatestream import logs
from gatestream.cli import bench, cdc, db, dlq, fleet, ingest, kafka, legacy_import, policy, produce, replay
from gatestream.cli.args import UsageError
from gatestream.database import DatabaseSettingError, DatabaseUnavailable, where
from gatestream.kafka_access import KafkaRefused
from gatestream.roles import PrivilegeMissing, refusal, url_user
from gatestream.settings import CommonSettings

log = structlog.get_logger("gatestream.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatestream",
        description="Monitoring-gateway events: Avro over Kafka into TimescaleDB hypertables, exactly once.",
        epilog="Connection settings come from GATESTREAM_* environment variables; "
        'for the local stack run: eval "$(ops/stack env)".',
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (db, produce, ingest, replay, dlq, policy, cdc, fleet, kafka, bench, legacy_import):
        group.add_parsers(sub)
    return p


_RELATIVE_TIME = re.compile(r"^-\d+(\.\d+)?[smhdw]$")


def _join_relative_times(argv: list[str]) -> list[str]:
    """Let ``--from -2h`` mean ``--from=-2h`` (and --since, --until) (argparse takes '-2h' for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to", "--since", "--until") and _RELATIVE_TIME.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _bad_settings(exc: ValidationError) -> NoReturn:
    """One line per wrong setting, named as the operator sets it."""
    for err in exc.errors():
        name = "GATESTREAM_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
        print(f"gatestream: bad setting {name}: {err['msg']}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(_join_relative_times(sys.argv[1:] if argv is None else argv))
    try:
        common = CommonSettings()
    except ValidationError as exc:
        _bad_settings(exc)
    logs.configure(common.log_format, common.log_level)
    try:
        code = args.fn(args)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # output piped into head & co: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except ValidationError as exc:  # a process's own settings model
        _bad_settings(exc)
    except UsageError as exc:
        print(f"gatestream {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except DatabaseSettingError as exc:  # waiting cannot fix it: say what is wrong, once
        print(f"gatestream {args.command}: {exc} (check GATESTREAM_DATABASE_URL)", file=sys.stderr)
        raise SystemExit(2) from None
    except KafkaRefused as exc:  # authentication, TLS or an ACL: waiting cannot fix it
        print(f"gatestream {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except PrivilegeMissing as exc:  # a role without a grant: waiting cannot fix it
        print(f"gatestream {args.command}: {exc} [database {where(common.database_url)}]", file=sys.stderr)
        raise SystemExit(2) from None
    except psycopg.errors.InsufficientPrivilege as exc:  # the same, met past the start's check
        line = refusal(exc, url_user(common.database_url))
        print(f"gatestream {args.command}: {line} [database {where(common.database_url)}]", file=sys.stderr)
        raise SystemExit(2) from None
    except DatabaseUnavailable as exc:  # a command does not wait: one line, not a traceback
        print(f"gatestream {args.command}: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # a clear one-line error for operators, the trace in the log
        log.error("command failed", command=args.command, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        print(f"gatestream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


__all__ = ["main", "build_parser"]
