"""MicroBatch: which messages become rows, which become rejects, and where each partition ends."""

from __future__ import annotations

import time
from typing import Any, cast

from confluent_kafka import Message

from gatestream.consumers.batch import MicroBatch, Plausibility
from gatestream.consumers.deadletter import Reason
from gatestream.consumers.partitions import Partitions
from tests.unit.fakes import FakeMessage, event, route

T = "t.active_windows"
P0, P1 = (T, 0), (T, 1)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _batch(**kw: Any) -> tuple[MicroBatch, Partitions]:
    parts = Partitions()
    parts.take(P0, None)
    parts.take(P1, 5)
    return MicroBatch({T: route(T)}, parts, **kw), parts


def _add(batch: MicroBatch, msgs: list[FakeMessage]) -> int:
    return batch.add_many(cast(list[Message], msgs))


def _ok(partition: int, offset: int, **over: Any) -> FakeMessage:
    return event(T, partition, offset, **{"id": f"{partition}/{offset}", "t": _now_ms(), "organization_id": 1, **over})


def test_rows_and_ends_per_partition() -> None:
    batch, parts = _batch()
    assert _add(batch, [_ok(0, 0), _ok(0, 1), _ok(1, 5)]) == 3
    assert batch.count == 3
    assert [row[0] for row in batch.tables[T].rows] == ["0/0", "0/1", "1/5"]
    assert batch.ends == {P0: 2, P1: 6}
    assert parts.next == {P0: 2, P1: 6}
    assert _add(batch, [_ok(0, 2)]) == 1 and batch.ends[P0] == 3


def test_messages_not_ours_are_not_read() -> None:
    batch, _ = _batch()
    stale = _ok(1, 4)  # before the partition's next offset: from before a seek
    foreign = _ok(2, 0)  # a partition this member does not own (revoked meanwhile)
    assert _add(batch, [stale, foreign]) == 0
    assert batch.count == 0 and batch.ends == {} and batch.rejects == []


def test_undecodable_and_unmappable_events_become_rejects_and_still_move_the_end() -> None:
    errors: list[tuple[str, str]] = []
    batch, _ = _batch(on_decode_error=lambda topic, reason: errors.append((topic, reason)))
    bad = FakeMessage(T, 0, 0, b"bad")
    unmappable = event(T, 0, 1, id="x", t=_now_ms())  # no organization_id: its row cannot be built
    assert _add(batch, [bad, unmappable, _ok(0, 2)]) == 3
    assert [(r.msg.offset(), r.reason) for r in batch.rejects] == [(0, "malformed-avro"), (1, Reason.UNMAPPABLE)]
    assert batch.rejects[1].exception == "KeyError"
    assert errors == [(T, "malformed-avro")]
    assert batch.count == 1 and batch.ends == {P0: 3}


def test_implausible_events_are_rejected_with_the_reason() -> None:
    batch, _ = _batch(plausible=Plausibility(earliest_ms=_now_ms() - 60_000, max_future_ms=60_000))
    msgs = [
        _ok(0, 0, t=0),  # 1970
        _ok(0, 1, t=_now_ms() + 3_600_000),  # an hour ahead
        _ok(0, 2, organization_id=0),
        _ok(0, 3),
    ]
    assert _add(batch, msgs) == 4
    reasons = [(r.msg.offset(), r.reason) for r in batch.rejects]
    assert reasons == [
        (0, Reason.EVENT_TIME_OUT_OF_RANGE),
        (1, Reason.EVENT_TIME_OUT_OF_RANGE),
        (2, Reason.INVALID_IDENTIFIER),
    ]
    assert "t = 1970-01-01T00:00:00.000+00:00" in batch.rejects[0].detail
    assert "GATESTREAM_EARLIEST_EVENT_TIME" in batch.rejects[0].detail
    assert batch.count == 1 and batch.ends == {P0: 4}


def test_filtered_events_are_read_but_neither_rows_nor_rejects() -> None:
    batch, _ = _batch(accept=lambda msg, record: record["organization_id"] == 7)
    assert _add(batch, [_ok(0, 0), _ok(0, 1, organization_id=7)]) == 2
    assert batch.count == 1 and batch.rejects == [] and batch.ends == {P0: 2}


def test_partition_end_events_are_reported_not_counted() -> None:
    ends: list[tuple[str, int, int]] = []
    batch, _ = _batch(on_end=lambda t, p, o: ends.append((t, p, o)))
    assert _add(batch, [FakeMessage(T, 0, 12, eof=True)]) == 0
    assert ends == [(T, 0, 12)] and batch.ends == {}


def test_a_bounded_range_reads_nothing_past_its_end() -> None:
    parts = Partitions()
    parts.take(P0, None, start=0, end=2)
    batch = MicroBatch({T: route(T)}, parts)
    assert _add(batch, [_ok(0, 0), _ok(0, 1), _ok(0, 2), _ok(0, 3)]) == 2
    assert batch.count == 2 and batch.ends == {P0: 2} and parts.finished(P0)


def test_drop_forgets_rows_rejects_and_ends_of_those_partitions_only() -> None:
    batch, _ = _batch()
    _add(batch, [_ok(0, 0), FakeMessage(T, 0, 1, b"bad"), _ok(1, 5), _ok(1, 6)])
    batch.drop({P0})
    assert batch.count == 2
    assert [row[0] for row in batch.tables[T].rows] == ["1/5", "1/6"]
    assert [m.partition() for m in batch.tables[T].origins] == [1, 1]
    assert batch.rejects == [] and batch.ends == {P1: 7}
    batch.drop(set())
    assert batch.count == 2
