"""Where one consumer is reading: which partitions it owns, the next offset to accept
from each, and — for bounded runs such as replays — where each ends. (Where the database
says each partition stands is the offset store's: ``consumers.offsets``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatestream.consumers.offsets import UNKNOWN, start_of

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
    starts: dict[TP, int] = field(default_factory=dict)  # bounded runs only: the planned first offset
    started_at: dict[TP, int] = field(default_factory=dict)

    def take(self, tp: TP, stored: int | None, start: int | None = None, end: int | None = None) -> int:
        """Own ``tp``; return the offset to start reading at: the stored offset, never before
        the planned ``start`` of a bounded range (``offsets.FROM_BEGINNING`` when neither is known)."""
        self.owned.add(tp)
        if start is not None:
            self.starts[tp] = start
        if start is not None or end is not None:
            self.ends[tp] = end
        begin = self._begin(tp, stored)
        self.started_at[tp] = max(begin, 0)
        return begin

    def drop(self, parts: list[TP]) -> None:
        for tp in parts:
            self.owned.discard(tp)
            self.next.pop(tp, None)
            self.starts.pop(tp, None)

    def seek(self, tp: TP, stored: int | None) -> int:
        """Read ``tp`` again from ``stored`` (after a rolled-back batch); return the offset to
        seek to. A bounded range never goes back before its planned start: when its first
        batch rolled back, nothing is stored yet, and the beginning of the partition is
        outside the selection."""
        return self._begin(tp, stored)

    def _begin(self, tp: TP, stored: int | None) -> int:
        """Where reading ``tp`` (re)starts: max(stored, planned start); sets the next offset to accept."""
        known = [x for x in (stored, self.starts.get(tp)) if x is not None]
        begin = max(known) if known else None
        self.next[tp] = begin if begin is not None else UNKNOWN
        return start_of(begin)

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
