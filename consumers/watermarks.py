"""Where partitions end, and how old the first unread event is: for plans, status and lag."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from gatestream.kafka import consumer_config
from gatestream.settings import IngestSettings


def watermarks(
    settings: IngestSettings, parts: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """Each partition's (start, end) offsets now, as the broker's leader reports them: the
    start (low watermark) moves up as retention deletes old segments (or records are deleted),
    the end (high watermark) as messages arrive."""
    if not parts:
        return {}
    c = Consumer(consumer_config(settings, f"gatestream-watermarks-{time.monotonic_ns()}", member=False))
    try:
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for t, p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout, cached=False)
            out[(t, p)] = (int(low), int(high))
        return out
    finally:
        c.close()


def end_offsets(
    settings: IngestSettings, parts: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """The end offset (high watermark) of each partition now, as the broker's leader reports it."""
    return {tp: high for tp, (_low, high) in watermarks(settings, parts, timeout).items()}


def timestamps_at(
    settings: IngestSettings, positions: dict[tuple[str, int], int], timeout: float = 10.0
) -> dict[tuple[str, int], float]:
    """Broker timestamp (Unix seconds) of the message at each position, where one exists."""
    if not positions:
        return {}
    c = Consumer(consumer_config(settings, f"gatestream-status-{time.monotonic_ns()}", member=False))
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
