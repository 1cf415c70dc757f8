"""A Kafka client's repeated errors are summarized (the first at full detail, a count per
interval, the recovery with what was left out) and its broker's reachability is a
metric. A fake clock and a fake logger; no broker."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from gatestream.kafka_log import ClientLog, ErrorSummary

REFUSED = "FAIL [rdkafka#consumer-1] [thrd:b/bootstrap]: b: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines:
    """What a structlog logger was asked to write: (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str, dict[str, Any]]] = []

    def log(self, level: int, event: str, **kw: Any) -> None:
        self.lines.append((level, event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.log(logging.WARNING, event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self.log(logging.INFO, event, **kw)


def test_twenty_errors_a_second_for_a_minute_make_a_handful_of_lines() -> None:
    clock, out = Clock(), Lines()
    s = ErrorSummary(out, interval_s=30, clock=clock)
    for _ in range(20 * 65):  # 65 s of a refused broker, 20 a second
        s.error(logging.ERROR, REFUSED)
        clock.now += 0.05
    s.recovered()
    events = [e for _, e, _ in out.lines]
    assert out.lines[0] == (logging.ERROR, REFUSED, {}), "the first at full detail"
    assert len(out.lines) == 4, events  # the first, two counts (at 30 s and 60 s), the recovery
    counts = [kw["repeated"] for _, _, kw in out.lines[1:3]]
    assert all(580 <= n <= 620 for n in counts), counts
    assert out.lines[1][2]["last"] == REFUSED, "a count line carries the last error"
    level, event, kw = out.lines[3]
    assert level == logging.INFO
    assert event == f"broker reachable again after 65 s, {20 * 65 - 1} errors suppressed"
    assert kw["suppressed"] == 20 * 65 - 1
    s.error(logging.ERROR, REFUSED)
    assert out.lines[-1] == (logging.ERROR, REFUSED, {}), "after a recovery, the next error is a first again"


def test_errors_that_stop_without_a_recovery_end_their_episode_after_a_quiet_interval() -> None:
    clock, out = Clock(), Lines()
    s = ErrorSummary(out, interval_s=30, clock=clock)
    for _ in range(10):
        s.error(logging.ERROR, REFUSED)
        clock.now += 1
    assert len(out.lines) == 1
    clock.now += 31  # quiet
    s.error(logging.WARNING, "something else")
    assert [e for _, e, _ in out.lines[1:]] == ["Kafka client errors stopped after 9 s, 9 suppressed", "something else"]


def _up(client: str) -> float | None:
    return REGISTRY.get_sample_value("gatestream_kafka_broker_up", {"client": client})


def test_client_log_passes_info_through_and_follows_the_broker_in_a_metric() -> None:
    clock = Clock()
    cl = ClientLog("unit-test", interval_s=30, clock=clock)
    out = Lines()
    cl._out = cl.summary._log = out
    assert _up("unit-test") == 1
    cl.log(logging.INFO, "%s [%s] %s", "INIT", "rdkafka#consumer-1", "hello")
    cl.log(logging.INFO, "%s [%s] %s", "INIT", "rdkafka#consumer-1", "hello")
    assert len(out.lines) == 2, "info lines are not summarized"
    cl.error(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    assert _up("unit-test") == 0
    for _ in range(100):
        cl.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connection refused")
        clock.now += 0.05
    assert len(out.lines) == 3
    cl.reachable()
    assert _up("unit-test") == 1
    assert out.lines[-1][1] == "broker reachable again after 5 s, 99 errors suppressed"
    cl.reachable()
    assert len(out.lines) == 4, "reachable again only once"
    cl.error(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"))
    assert _up("unit-test") == 1, "an error that says nothing about reachability leaves it"
