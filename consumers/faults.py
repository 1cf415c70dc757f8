"""Fault hooks for fault-injection runs (``python -m bench.faults``, tests): at a named
point of the ingest path, the process kills itself with SIGKILL, with a set probability.
Off unless the test setting ``GATESTREAM_FAULT_HOOKS`` names points, e.g.
``before-commit:0.05,after-commit:0.05,on-assign:0.2,on-revoke:0.2``:

- ``before-commit``: the batch's rows, dead letters and offsets are written, not committed;
- ``after-commit``: committed, not yet mirrored to Kafka or known to the consumer loop;
- ``on-assign``: inside the assignment callback, offsets read, partitions not yet assigned;
- ``on-revoke``: inside the revocation callback, before the held batch is flushed.
"""

from __future__ import annotations

import os
import random
import signal

import structlog

log = structlog.get_logger("gatestream.faults")

POINTS = ("before-commit", "after-commit", "on-assign", "on-revoke")


class FaultHooks:
    def __init__(self, spec: str | None) -> None:
        self.odds: dict[str, float] = {}
        for item in (spec or "").split(","):
            if not item.strip():
                continue
            point, _, p = item.strip().partition(":")
            if point not in POINTS:
                raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
            self.odds[point] = float(p or 1.0)

    def hit(self, point: str) -> None:
        odds = self.odds.get(point)
        if odds is not None and random.random() < odds:  # noqa: S311 - chance, not security
            log.warning("fault hook: killing this process", point=point)
            os.kill(os.getpid(), signal.SIGKILL)
