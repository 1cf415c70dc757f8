"""Partitions: where a consumer starts and restarts reading (no broker, no database)."""

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
