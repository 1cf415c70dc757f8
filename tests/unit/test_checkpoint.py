"""Checkpoint: offsets move under the fence first, dead letters are recorded, then published once."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import Message

from gatestream.consumers.checkpoint import Checkpoint
from gatestream.consumers.deadletter import DeadLetters, Reason, Reject
from gatestream.consumers.offsets import FencedError, Moves, OffsetStore
from tests.unit.fakes import FakeConnection, FakeMessage

T = "t.active_windows"


class RecordingStore(OffsetStore):
    def __init__(self, events: list[str], fenced: bool = False) -> None:
        super().__init__("grp", "postgresql://unused")
        self.events, self.fenced = events, fenced

    def advance(self, conn: Any, moves: Moves) -> None:
        self.events.append("advance")
        if self.fenced:
            raise FencedError(sorted(moves))


class RecordingDeadLetters(DeadLetters):
    def __init__(self, events: list[str]) -> None:  # no producer
        self.events = events

    def send(self, reject: Reject) -> None:
        self.events.append(f"send {reject.msg.offset()}")

    def confirm(self, timeout: float = 30.0) -> None:
        self.events.append("confirm")


def _reject(offset: int) -> Reject:
    return Reject(cast(Message, FakeMessage(T, 0, offset, b"bad")), Reason.MALFORMED_AVRO, "bad")


def _checkpoint(events: list[str], *, fenced: bool = False, publish: bool = True) -> Checkpoint:
    return Checkpoint(RecordingStore(events, fenced), RecordingDeadLetters(events), publish=publish)


MOVES: Moves = {(T, 0): (0, 3)}


def test_offsets_move_under_the_fence_before_dead_letters_are_recorded_and_published_once() -> None:
    events: list[str] = []
    # the database answers: offsets 1 and 2 are recorded now; 0 was dead-lettered before (a re-read)
    conn = FakeConnection(calls=events, answers=[[(T, 0, 1), (T, 0, 2)]])
    sent = _checkpoint(events).commit(cast(Any, conn), MOVES, [_reject(0), _reject(1), _reject(2)])
    assert [r.msg.offset() for r in sent] == [1, 2]
    assert [e.split(" (")[0] for e in events] == [
        "advance",
        "INSERT INTO gatestream.dead_letters",
        "send 1",
        "send 2",
        "confirm",
    ]


def test_a_fenced_member_records_and_publishes_nothing() -> None:
    events: list[str] = []
    conn = FakeConnection(calls=events, answers=[[(T, 0, 1)]])
    with pytest.raises(FencedError):
        _checkpoint(events, fenced=True).commit(cast(Any, conn), MOVES, [_reject(1)])
    assert events == ["advance"]


def test_a_dry_run_records_and_counts_but_publishes_nothing() -> None:
    events: list[str] = []
    conn = FakeConnection(calls=events, answers=[[(T, 0, 1)]])
    sent = _checkpoint(events, publish=False).commit(cast(Any, conn), MOVES, [_reject(1)])
    assert [r.msg.offset() for r in sent] == [1]
    assert [e.split(" (")[0] for e in events] == ["advance", "INSERT INTO gatestream.dead_letters"]


def test_a_batch_without_rejects_only_moves_the_offsets() -> None:
    events: list[str] = []
    assert _checkpoint(events).commit(cast(Any, FakeConnection(calls=events)), MOVES, []) == []
    assert events[0] == "advance" and not any(e.startswith(("INSERT", "send")) for e in events)
