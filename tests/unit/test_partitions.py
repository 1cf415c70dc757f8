"""Partitions: where one consumer reads and restarts reading (owned partitions, next offsets, a bounded
run's planned start and end; no broker, no database)."""

from __future__ import annotations

from gatestream.consumers.offsets import FROM_BEGINNING, UNKNOWN
from gatestream.consumers.partitions import Partitions

TP = ("t.active_windows", 0)


def test_a_bounded_range_restarts_at_its_planned_start_when_nothing_is_stored() -> None:
    """Its first batch rolled back: nothing stored yet, and offset 0 is outside the selection."""
    parts = Partitions()
    assert parts.take(TP, None, start=50, end=100) == 50
    assert parts.seek(TP, None) == 50
    assert parts.next[TP] == 50, "offsets before the planned start are not accepted from the stream"


def test_a_bounded_range_restarts_at_what_is_stored_past_its_start() -> None:
    parts = Partitions()
    parts.take(TP, None, start=50, end=100)
    assert parts.seek(TP, 70) == 70 and parts.next[TP] == 70
    resumed = Partitions()
    assert resumed.take(TP, 60, start=50, end=100) == 60
    assert resumed.seek(TP, 60) == 60
    assert resumed.started_at[TP] == 60


def test_ingest_without_a_planned_start_restarts_at_the_stored_offset_or_the_beginning() -> None:
    parts = Partitions()
    assert parts.take(TP, None) == FROM_BEGINNING
    assert parts.next[TP] == UNKNOWN and TP not in parts.ends
    assert parts.seek(TP, None) == FROM_BEGINNING and parts.next[TP] == UNKNOWN
    assert parts.seek(TP, 5) == 5 and parts.next[TP] == 5


def test_a_dropped_partition_forgets_its_planned_start() -> None:
    parts = Partitions()
    parts.take(TP, None, start=50, end=100)
    parts.drop([TP])
    parts.take(TP, None)
    assert parts.seek(TP, None) == FROM_BEGINNING


A, B = ("t.a", 0), ("t.a", 1)


def test_take_starts_at_the_stored_offset_or_the_beginning() -> None:
    parts = Partitions()
    assert parts.take(A, None) == FROM_BEGINNING
    assert parts.next[A] == UNKNOWN and parts.started_at[A] == 0
    assert parts.take(B, 17) == 17
    assert parts.next[B] == 17 and parts.started_at[B] == 17
    assert parts.owned == {A, B}
    assert parts.ends == {}, "a consumer of the live stream has no ends"


def test_take_of_a_bounded_range_starts_at_the_later_of_stored_and_start() -> None:
    parts = Partitions()
    assert parts.take(A, None, start=5, end=40) == 5
    assert parts.take(B, 25, start=5, end=40) == 25, "a resumed run continues where it stored"
    assert parts.ends == {A: 40, B: 40}
    parts.take(("t.b", 0), None, start=0)
    assert parts.ends[("t.b", 0)] is None, "bounded, up to the end the broker reports"


def test_drop_forgets_ownership_and_the_next_offset() -> None:
    parts = Partitions()
    parts.take(A, 3)
    parts.take(B, 4)
    parts.drop([A])
    assert parts.owned == {B} and A not in parts.next and parts.next[B] == 4
    parts.drop([A, B])  # dropping what is not owned is harmless
    assert parts.owned == set() and parts.next == {}


def test_reached_end_caps_a_bounded_range_at_the_high_watermark() -> None:
    parts = Partitions()
    parts.take(A, None, start=0)  # open-ended
    parts.take(B, None, start=0, end=40)
    parts.take(("t.live", 0), 0)  # not bounded
    parts.reached_end(A, 30)
    parts.reached_end(B, 50)  # the range ends before the partition does
    parts.reached_end(("t.live", 0), 99)
    assert parts.ends == {A: 30, B: 40}
    parts.reached_end(B, 35)  # nothing past the watermark exists yet
    assert parts.ends[B] == 35


def test_finished_when_the_next_offset_reaches_the_end() -> None:
    parts = Partitions()
    assert not parts.all_finished(), "nothing bounded: never finished"
    parts.take(A, None, start=0, end=2)
    parts.take(B, None, start=0)
    assert not parts.finished(A) and not parts.finished(B)
    parts.next[A] = 2
    assert parts.finished(A)
    assert not parts.all_finished(), "B's end is not known yet"
    parts.reached_end(B, 0)  # an empty partition
    assert parts.finished(B) and parts.all_finished()
    assert not parts.finished(("t.live", 0))
