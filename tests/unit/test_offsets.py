"""OffsetStore: what one member knows of its group's stored offsets, and the fence's moves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import pytest

from gatestream.consumers.offsets import FROM_BEGINNING, FencedError, OffsetStore, TopicPartition, start_of
from tests.unit.fakes import FakeConnection

A, B, C = ("t.a", 0), ("t.a", 1), ("t.b", 0)


class StoredOffsets(OffsetStore):
    """The store with its database reads answered from ``stored`` (writes go to the caller's connection)."""

    def __init__(self, stored: dict[TopicPartition, int]) -> None:
        super().__init__("grp", "postgresql://unused")
        self.stored = stored

    def read(self, parts: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.stored[tp] for tp in parts if tp in self.stored}


def test_claim_makes_the_stored_offsets_the_expected_ones() -> None:
    store = StoredOffsets({A: 10})
    assert store.claim([A, B]) == {A: 10, B: None}
    assert store.expected == {A: 10, B: None}
    assert start_of(10) == 10 and start_of(None) == FROM_BEGINNING


def test_moves_go_from_the_expected_offset_to_the_batch_end_for_claimed_partitions_only() -> None:
    store = StoredOffsets({A: 10})
    store.claim([A, B])
    assert store.moves({A: 15, B: 3, C: 7}) == {A: (10, 15), B: (None, 3)}, "C is not ours"


def test_advanced_moves_become_expected_and_a_released_partition_stays_released() -> None:
    store = StoredOffsets({A: 10})
    store.claim([A, B])
    moves = store.moves({A: 15, B: 3})
    store.release([B])  # revoked while the batch committed
    store.advanced(moves)
    assert store.expected == {A: 15}
    assert store.moves({A: 20, B: 9}) == {A: (15, 20)}


def test_reload_reads_again_only_what_is_claimed() -> None:
    store = StoredOffsets({A: 10, B: 4})
    store.claim([A])
    store.stored[A] = 30  # another member committed meanwhile
    assert store.reload([A, B]) == {A: 30}
    assert store.expected == {A: 30}


def test_advance_updates_stored_rows_inserts_new_ones_and_fences_what_moved() -> None:
    store = StoredOffsets({})
    conn = FakeConnection()
    store.advance(cast(Any, conn), {})
    assert conn.calls == [], "no moves, no statement"
    # A and B have a stored row (UPDATE from expected), C none yet (INSERT); the database
    # answers which rows it changed: B's stored offset moved under us, C was inserted by another
    conn = FakeConnection(answers=[[A], []])
    with pytest.raises(FencedError) as exc:
        store.advance(cast(Any, conn), {A: (10, 15), B: (4, 9), C: (None, 3)})
    assert exc.value.partitions == [B, C]
    assert [c.split()[0] for c in conn.calls] == ["UPDATE", "INSERT"]
    conn = FakeConnection(answers=[[A, B], [C]])
    store.advance(cast(Any, conn), {A: (10, 15), B: (4, 9), C: (None, 3)})  # every move matched: no fence
