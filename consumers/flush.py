"""When a micro-batch commits, and how the pipeline's loop reads while it fills.

Adaptive (the default): a batch commits as soon as the consumer has nothing more
buffered (a read returned fewer messages than asked) and the writer is free. Events that
arrive while the writer commits the previous batch join the next one, so at a trickle a
batch is an event or a few and commits within a commit's time, while a backlog fills
every read and batches grow to ``max_rows``. ``max_age_s`` bounds how long a batch stays
open when neither happens (e.g. a backlog of events a replay filters out: offsets still
move). Not adaptive: only at ``max_rows`` or ``max_age_s`` (the rule before).

Reads never sit waiting for a full count: librdkafka's ``consume(n, timeout)`` returns
only once it has ``n`` messages or the time-out passed, which at 1k events/s kept every
batch open for the whole time-out. A read takes what is buffered at once; only when that
is nothing does it wait for one message (while the writer is busy, in steps of 2 ms, so
that a batch that waits only for the writer leaves as soon as the writer is free).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Message

IDLE_WAIT_S = 0.1  # the longest one read waits: the loop looks at its stop event this often
WRITER_POLL_S = 0.002  # while the writer commits the previous batch: the most an open batch waits past it


class Reader(Protocol):
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...


@dataclass(frozen=True)
class FlushRule:
    max_rows: int
    max_age_s: float
    adaptive: bool = True

    def asked(self, rows: int, poll_max: int) -> int:
        """How many messages one read asks for: never past the batch's room."""
        return max(1, min(poll_max, self.max_rows - rows))

    def due(self, rows: int, age_s: float, *, drained: bool, writer_free: bool) -> bool:
        """Whether an open batch (something read: ``rows`` rows, ``age_s`` old) commits now."""
        if rows >= self.max_rows or age_s >= self.max_age_s:
            return True
        return self.adaptive and drained and writer_free

    def read(
        self, consumer: Reader, asked: int, *, age_s: float | None, writer: Future[Any] | None
    ) -> tuple[list[Message], bool]:
        """One read of at most ``asked`` messages, and whether it drained what the consumer
        had buffered. ``age_s``: the open batch's age (None: nothing open); ``writer``: the
        batch being committed, if any."""
        msgs = consumer.consume(num_messages=asked, timeout=0)
        if msgs:
            return msgs, len(msgs) < asked
        timeout = IDLE_WAIT_S if age_s is None else max(0.0, min(IDLE_WAIT_S, self.max_age_s - age_s))
        if age_s is not None and self.adaptive and writer is not None and not writer.done():
            # The open batch commits once the writer is free, and what arrives meanwhile
            # joins it (read and decoded while the writer works): wait for an event in
            # short steps, since a read cannot also wake when the writer finishes.
            timeout = min(timeout, WRITER_POLL_S)
        msgs = consumer.consume(num_messages=1, timeout=timeout)
        if msgs and asked > 1:
            msgs += consumer.consume(num_messages=asked - 1, timeout=0)
        return msgs, len(msgs) < asked
