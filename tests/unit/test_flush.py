"""The micro-batch's flush rule and its reads (gatestream.consumers.flush), with a fake consumer."""

from __future__ import annotations

from concurrent.futures import Future
from typing import cast

from confluent_kafka import Message

from gatestream.consumers.flush import IDLE_WAIT_S, WRITER_POLL_S, FlushRule
from tests.unit.fakes import event


class FakeConsumer:
    """``consume`` as librdkafka does it: up to ``num_messages`` of what is buffered; with
    fewer buffered it would wait the whole time-out (recorded in ``waits``), then return
    what arrived meanwhile (``arriving``)."""

    def __init__(self, buffered: int = 0, arriving: int = 0) -> None:
        self.buffered = [event("t", 0, i, id=i) for i in range(buffered)]
        self.arriving = [event("t", 0, buffered + i, id=buffered + i) for i in range(arriving)]
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.calls.append((num_messages, timeout))
        if len(self.buffered) < num_messages and timeout > 0:
            self.buffered += self.arriving
            self.arriving = []
        out, self.buffered = self.buffered[:num_messages], self.buffered[num_messages:]
        return cast(list[Message], out)

    @property
    def waits(self) -> list[float]:
        return [t for _, t in self.calls if t > 0]


RULE = FlushRule(max_rows=5000, max_age_s=0.1)


def test_a_read_takes_what_is_buffered_without_waiting_for_a_full_count() -> None:
    consumer = FakeConsumer(buffered=3)
    msgs, drained = RULE.read(consumer, 5000, age_s=None, writer=None)
    assert len(msgs) == 3 and drained
    assert consumer.waits == []  # before: consume(5000, 0.1) waited its time-out for 4,997 more


def test_with_nothing_buffered_a_read_waits_for_one_event_then_takes_the_rest() -> None:
    consumer = FakeConsumer(buffered=0, arriving=4)
    msgs, drained = RULE.read(consumer, 5000, age_s=None, writer=None)
    assert len(msgs) == 4 and drained
    assert consumer.calls == [(5000, 0), (1, IDLE_WAIT_S), (4999, 0)]


def test_a_backlog_fills_each_read_and_the_batch_grows_to_its_maximum() -> None:
    rule = FlushRule(max_rows=500, max_age_s=60)
    consumer = FakeConsumer(buffered=2000)
    rows, reads = 0, 0
    writer: Future[None] = Future()  # the previous batch still commits
    while True:
        msgs, drained = rule.read(consumer, rule.asked(rows, poll_max=200), age_s=0.01, writer=writer)
        rows += len(msgs)
        reads += 1
        assert not drained
        if rule.due(rows, 0.01, drained=drained, writer_free=False):
            break
    assert (rows, reads) == (500, 3)  # 200 + 200 + 100: never past the batch's room
    assert consumer.waits == []


def test_an_open_batch_commits_once_drained_and_the_writer_is_free() -> None:
    assert RULE.due(3, 0.001, drained=True, writer_free=True)
    assert not RULE.due(3, 0.001, drained=False, writer_free=True)  # more buffered: read it first
    assert not RULE.due(3, 0.001, drained=True, writer_free=False)  # the writer busy: keep filling
    assert RULE.due(5000, 0.001, drained=False, writer_free=False)  # full
    assert RULE.due(3, 0.1, drained=False, writer_free=False)  # old


def test_not_adaptive_a_batch_commits_only_when_full_or_old() -> None:
    fixed = FlushRule(max_rows=5000, max_age_s=0.5, adaptive=False)
    assert not fixed.due(3, 0.001, drained=True, writer_free=True)
    assert fixed.due(3, 0.5, drained=True, writer_free=True)
    assert fixed.due(5000, 0.0, drained=False, writer_free=True)


def test_while_the_writer_is_busy_a_drained_batch_keeps_reading_in_short_waits() -> None:
    busy: Future[None] = Future()
    busy.set_running_or_notify_cancel()
    consumer = FakeConsumer(buffered=0, arriving=10)
    msgs, drained = RULE.read(consumer, 5000, age_s=0.01, writer=busy)
    assert len(msgs) == 10 and drained  # what arrived while the writer works joins the open batch
    assert consumer.waits == [WRITER_POLL_S]  # and the batch never waits long past the writer
    assert not RULE.due(10, 0.01, drained=drained, writer_free=False)
    done: Future[None] = Future()
    done.set_result(None)
    consumer = FakeConsumer()
    RULE.read(consumer, 5000, age_s=None, writer=done)
    assert consumer.waits == [IDLE_WAIT_S]  # nothing open: a read waits for events, up to the stop check


def test_an_open_batch_never_waits_past_its_age() -> None:
    consumer = FakeConsumer()
    RULE.read(consumer, 5000, age_s=0.25, writer=None)
    assert consumer.calls == [(5000, 0), (1, 0.0)]
    consumer = FakeConsumer()
    RULE.read(consumer, 5000, age_s=0.03, writer=None)
    assert consumer.calls[1][0] == 1 and abs(consumer.calls[1][1] - 0.07) < 1e-9
