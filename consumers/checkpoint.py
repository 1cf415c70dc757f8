"""The checkpoint: how every database-writing consumer ends a batch, inside its transaction.

Ingest and replay (after their rows), and the policy consumer (after its job changes),
finish a batch the same way, before the transaction commits:

1. the offsets move under the fence (``OffsetStore.advance``): a member that lost its
   partitions fails here, before anything is published;
2. the batch's rejects are recorded in ``gatestream.dead_letters`` and only those never
   dead-lettered before by this group are published (a rewound or replayed offset is not
   published twice), then the broker's acknowledgement is awaited.

If any step raises, the caller's transaction rolls back: no rows, no offsets, and the
dead letters published so far are published again with the batch's retry (at least
once, deduplicated by their source coordinates in the headers). A dry run records and
counts, and publishes nothing (its transaction is rolled back anyway).
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from gatestream.consumers.deadletter import DeadLetters, Reject, first_time
from gatestream.consumers.offsets import Moves, OffsetStore
from gatestream.logs import RateLimitedLog

log = structlog.get_logger("gatestream.checkpoint")


class Checkpoint:
    def __init__(self, store: OffsetStore, dead_letters: DeadLetters, *, publish: bool = True) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.publish = publish
        # every dead letter is logged, at most 20 lines per 10 s (then a count of those left out)
        self._log = RateLimitedLog(log, per_s=2.0, burst=20)

    def commit(self, conn: psycopg.Connection[Any], moves: Moves, rejects: list[Reject]) -> list[Reject]:
        """Steps 1 and 2 on ``conn``, in its open transaction; returns the rejects
        dead-lettered now (a dry run: those that would be)."""
        self.store.advance(conn, moves)
        new = first_time(conn, self.store.group, rejects)
        if not self.publish:
            return new
        for reject in new:
            self.dead_letters.send(reject)
            msg = reject.msg
            self._log.warning(
                "event dead-lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                reason=reject.reason, error=reject.detail[:300],
            )  # fmt: skip
        self.dead_letters.confirm()
        return new
