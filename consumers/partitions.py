"""Where one consumer is reading: which partitions it owns, the next offset to accept
from each, and — for bounded runs such as replays — where each ends. (Where the database
says each partition stands is the offset store's: ``consumers.offsets``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatestream.consumers.offsets import FROM_BEGINNING, UNKNOWN, start_of

TP = tuple[str, int]


@dataclass(frozen=True)
class PartitionRange:
    """A bounded read of one partition: ``start`` (inclusive) to ``end`` (exclusive).

    ``end`` None means: up to the end of the partition as the broker reports it when the
    reader gets there (the fetch's high watermark, or end-of-partition).
    """

    topic: str
    partition: int
    start: int
    end: int | None = None


@dataclass
class Partitions:
    owned: set[TP] = field(default_factory=set)
    next: dict[TP, int] = field(default_factory=dict)  # next offset to accept from the stream
    ends: dict[TP, int | None] = field(default_factory=dict)  # bounded runs only
    started_at: dict[TP, int] = field(default_factory=dict)

    def take(self, tp: TP, stored: int | None, start: int | None = None, end: int | None = None) -> int:
        """Own ``tp``; return the offset to start reading at (FROM_BEGINNING when nothing
        is stored and no start was given)."""
        self.owned.add(tp)
        known = [x for x in (stored, start) if x is not None]
        begin = max(known) if known else FROM_BEGINNING
        self.next[tp] = begin if begin >= 0 else UNKNOWN
        self.started_at[tp] = max(begin, 0)
        if start is not None or end is not None:
            self.ends[tp] = end
        return begin

    def drop(self, parts: list[TP]) -> None:
        for tp in parts:
            self.owned.discard(tp)
            self.next.pop(tp, None)

    def seek(self, tp: TP, stored: int | None) -> int:
        """Read ``tp`` again from ``stored``; return the offset to seek to."""
        self.next[tp] = stored if stored is not None else UNKNOWN
        return start_of(stored)

    def reached_end(self, tp: TP, high_watermark: int) -> None:
        """The broker says the partition ends at ``high_watermark`` for now: a bounded range
        ends there at the latest (nothing past it exists yet)."""
        if tp in self.ends:
            end = self.ends[tp]
            self.ends[tp] = high_watermark if end is None else min(end, high_watermark)

    def finished(self, tp: TP) -> bool:
        end = self.ends.get(tp)
        return end is not None and self.next.get(tp, UNKNOWN) >= end

    def all_finished(self) -> bool:
        return bool(self.ends) and all(self.finished(tp) for tp in self.ends)
