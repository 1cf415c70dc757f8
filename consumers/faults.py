"""Fault hooks for fault-injection runs (``python -m bench.faults``, tests): at a named
point of the ingest path, the process kills itself with SIGKILL, with a set probability,
or a commit fails in-process. Off unless the test setting ``GATESTREAM_FAULT_HOOKS``
names them, e.g. ``before-commit:0.05,after-commit:0.05,on-assign:0.2,on-revoke:0.2``:

- ``before-commit``: the batch's rows, dead letters and offsets are written, not committed;
- ``after-commit``: committed, not yet mirrored to Kafka or known to the consumer loop;
- ``on-assign``: inside the assignment callback, offsets read, partitions not yet assigned;
- ``on-revoke``: inside the revocation callback, before the held batch is flushed;
- ``fail-commit:N`` (a count, not odds): the first N batches fail at ``before-commit``
  with ``psycopg.OperationalError``, as in a database blip: the process lives on, the
  batch's transaction rolls back and the pipeline retries it like any database error.
"""

from __future__ import annotations

import os
import random
import signal

import psycopg
import structlog

log = structlog.get_logger("gatestream.faults")

POINTS = ("before-commit", "after-commit", "on-assign", "on-revoke")
FAILURES = {"fail-commit": "before-commit"}  # in-process failure -> the point where it fires


class InjectedDatabaseError(psycopg.OperationalError):
    """A database error raised by a ``fail-*`` fault hook (never by a real server)."""


class FaultHooks:
    def __init__(self, spec: str | None) -> None:
        self.odds: dict[str, float] = {}
        self.failures: dict[str, int] = {}  # point -> failures left to inject there
        for item in (spec or "").split(","):
            if not item.strip():
                continue
            name, _, value = item.strip().partition(":")
            if name in FAILURES:
                try:
                    count = int(value or 1)
                except ValueError:
                    raise ValueError(f"fault {name} takes a count of failures, got {value!r}") from None
                self.failures[FAILURES[name]] = count
                continue
            if name not in POINTS:
                raise ValueError(f"unknown fault point {name!r} (known: {', '.join([*POINTS, *FAILURES])})")
            self.odds[name] = float(value or 1.0)

    def hit(self, point: str) -> None:
        if self.failures.get(point, 0) > 0:
            self.failures[point] -= 1
            log.warning("fault hook: failing this commit", point=point, left=self.failures[point])
            raise InjectedDatabaseError(f"fault hook at {point}: injected database error")
        odds = self.odds.get(point)
        if odds is not None and random.random() < odds:  # noqa: S311 - chance, not security
            log.warning("fault hook: killing this process", point=point)
            os.kill(os.getpid(), signal.SIGKILL)
