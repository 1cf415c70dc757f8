"""Connecting to the database the way a long-running process should.

Transient failures (nothing answers, the server is starting or shutting down) are
retried with backoff and a clear log line, for as long as it takes or until ``stop``
is set. Permanent ones (a malformed URL, a wrong password, a database or role that does
not exist) cannot get better by waiting: they raise ``DatabaseSettingError`` with one
line that says what to fix.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import structlog

log = structlog.get_logger("gatestream.database")

# What a server says while it cannot take connections *yet* (libpq reports the server's
# FATAL message on connect; psycopg gives no SQLSTATE there)
_TRANSIENT_FATAL = (
    "starting up", "shutting down", "not yet accepting connections", "in recovery mode",
    "too many clients", "remaining connection slots", "terminating connection",
)  # fmt: skip


class DatabaseSettingError(Exception):
    """The database settings are wrong; retrying will not help."""


def permanent(exc: psycopg.Error) -> bool:
    """The server answered and refused (a password, a database or role name), or the URL is bad."""
    if isinstance(exc, psycopg.ProgrammingError):  # e.g. an invalid connection string
        return True
    text = str(exc)
    if "FATAL:" in text:
        return not any(phrase in text for phrase in _TRANSIENT_FATAL)
    return False


def connect(
    url: str, *, stop: threading.Event | None = None, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A connection, waiting out transient failures; DatabaseSettingError for permanent ones."""
    delay = 0.5
    while True:
        try:
            return psycopg.connect(url, autocommit=autocommit, connect_timeout=5, **kwargs)
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if permanent(exc):
                raise DatabaseSettingError(f"the database refused the connection: {message}") from exc
            if stop is not None and stop.is_set():
                raise
            log.warning("database unreachable; retrying", error=message[:300], retry_in_s=delay)
            (stop.wait(delay) if stop is not None else time.sleep(delay))
            delay = min(delay * 2, 10)
