"""Waiting for a service that is not there yet (the database, the schema registry): the
one backoff loop every long-running process uses.

It is stop-aware (the waits are ``stop.wait``, so SIGTERM ends them at once) and quiet:
one log line when the service first fails, one when the error changes, a reminder a
minute, and one when it answers again; a line per attempt only at debug level.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("gatestream.waiting")

REMINDER_S = 60.0  # while the error stays the same, one "still waiting" line this often


def first_line(exc: BaseException) -> str:
    """An exception's message for a log line: its first line, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def after_stuck_stop(
    stop: threading.Event, finished: threading.Event, grace_s: float, cut: Callable[[], None]
) -> threading.Thread:
    """A watcher: once ``stop`` is set, the process has ``grace_s`` to finish (set
    ``finished``); past that ``cut()`` runs (e.g. sever the database connections a hung
    server holds the process on). Returns at once if ``finished`` is set first."""

    def watch() -> None:
        while not stop.wait(0.5):
            if finished.is_set():
                return
        if not finished.wait(grace_s):
            cut()

    t = threading.Thread(target=watch, name="stop-watch", daemon=True)
    t.start()
    return t


def wait_for_service(
    what: str,
    attempt: Callable[[], T],
    *,
    retry: Callable[[BaseException], bool],
    stop: threading.Event | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
    logger: Any = None,
) -> T:
    """``attempt()``'s result, calling it again while it raises an error ``retry`` accepts.

    Between attempts: ``on_failure(error)`` (e.g. close a broken connection, mark the
    process unready), then a stop-aware wait that doubles from ``first_delay`` up to
    ``max_delay``. Once ``stop`` is set the last error is raised (so callers see the
    error they already handle); an error ``retry`` refuses is raised at once.
    """
    logger = logger or log
    stop = stop or threading.Event()
    delay = first_delay
    attempts = 0
    since = time.monotonic()
    last_message = ""
    said_at = 0.0
    while True:
        try:
            result = attempt()
        except Exception as exc:
            if not retry(exc):
                raise
            attempts += 1
            message = first_line(exc)
            if on_failure is not None:
                on_failure(exc)
            if stop.is_set():
                raise
            now = time.monotonic()
            if message != last_message:
                logger.warning(f"{what} unreachable; retrying", error=message, retry_in_s=delay, attempt=attempts)
                last_message, said_at = message, now
            elif now - said_at >= REMINDER_S:
                logger.warning(
                    f"{what} still unreachable; retrying", error=message, waited_s=round(now - since), attempt=attempts
                )
                said_at = now
            else:  # every attempt, for whoever runs at debug level (tests count them)
                logger.debug(f"{what} unreachable; retrying", error=message, retry_in_s=delay, attempt=attempts)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, max_delay)
            continue
        if attempts:
            logger.info(f"{what} reachable again", attempts=attempts, waited_s=round(time.monotonic() - since, 1))
        return result
