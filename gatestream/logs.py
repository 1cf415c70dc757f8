"""structlog set-up: JSON lines in production, key=value on a terminal."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
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


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured: a
    process that swaps it (pytest's capture, per test) must not leave loggers writing to a
    stream that was closed since."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


class RateLimitedLog:
    """Log lines that can come in floods (one per dead-lettered event): a token bucket of
    ``burst`` lines refilled at ``per_s``; what it leaves out is counted in the next line
    that gets through (``suppressed``)."""

    def __init__(self, logger: Any, *, per_s: float, burst: int) -> None:
        self._logger, self._per_s, self._burst = logger, per_s, burst
        self._clock = time.monotonic
        self._tokens, self._at, self._suppressed = float(burst), self._clock(), 0

    def warning(self, event: str, **fields: Any) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        if self._suppressed:
            fields["suppressed"], self._suppressed = self._suppressed, 0
        self._logger.warning(event, **fields)
