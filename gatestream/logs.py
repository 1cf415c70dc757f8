"""structlog set-up: JSON lines in production, key=value on a terminal."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Who logs: every line carries host and pid, and a consumer's group and member id once it
# has them (set_identity), whichever thread logs it.
_IDENTITY: dict[str, Any] = {}


def set_identity(**fields: Any) -> None:
    """Add fields (e.g. group, member) to every log line of this process from now on."""
    _IDENTITY.update({k: v for k, v in fields.items() if v})


def _add_identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in _IDENTITY.items():
        event.setdefault(k, v)
    return event


def configure(fmt: str = "auto", level: str = "info") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    _IDENTITY.setdefault("host", socket.gethostname())
    _IDENTITY.setdefault("pid", os.getpid())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_identity,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
