"""Where partitions end, and how old the first unread event is: for plans, status and lag."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from gatestream.kafka import consumer_config
from gatestream.settings import IngestSettings


def reported_end(c: Consumer, topic: str, partition: int) -> int:
    _, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    return int(high)


def end_offsets(
    settings: IngestSettings, parts: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """The end offset of each partition now, as a fetch reports it.

    Some brokers (Tansu) answer the latest-offset request with the start of the last
    batch + 1, too low; a fetch from just before that answer carries the true high
    watermark, which the client then caches.
    """
    conf = consumer_config(settings, f"gatestream-replay-plan-{time.monotonic_ns()}")
    conf["enable.partition.eof"] = True
    c = Consumer(conf, logger=None)
    try:
        reported = {tp: reported_end(c, *tp) for tp in parts}
        c.assign([TopicPartition(t, p, max(reported[(t, p)] - 1, 0)) for t, p in parts])
        waiting = {tp for tp in parts if reported[tp] > 0}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                waiting.discard((m.topic() or "", m.partition() or 0))
        out = {}
        for tp in parts:
            _, high = c.get_watermark_offsets(TopicPartition(*tp), cached=True)
            out[tp] = max(int(high), reported[tp])
        return out
    finally:
        c.close()


def timestamps_at(
    settings: IngestSettings, positions: dict[tuple[str, int], int], timeout: float = 10.0
) -> dict[tuple[str, int], float]:
    """Broker timestamp (Unix seconds) of the message at each position, where one exists."""
    if not positions:
        return {}
    c = Consumer(consumer_config(settings, f"gatestream-status-{time.monotonic_ns()}"), logger=None)
    try:
        c.assign([TopicPartition(t, p, o) for (t, p), o in positions.items()])
        out: dict[tuple[str, int], float] = {}
        deadline = time.monotonic() + timeout
        while len(out) < len(positions) and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is not None:
                    continue
                tp = (m.topic() or "", m.partition() or 0)
                ts_type, ts = m.timestamp()
                if tp not in out and ts_type and m.offset() == positions.get(tp):
                    out[tp] = ts / 1000
        return out
    finally:
        c.close()
