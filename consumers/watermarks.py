"""Where partitions end, and how old the first unread event is: for plans, status and lag."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from gatestream.kafka import consumer_config
from gatestream.settings import IngestSettings


def end_offsets(
    settings: IngestSettings, parts: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """The end offset (high watermark) of each partition now, as the broker's leader reports it."""
    if not parts:
        return {}
    c = Consumer(consumer_config(settings, f"gatestream-watermarks-{time.monotonic_ns()}", member=False))
    try:
        return {
            (t, p): int(c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout, cached=False)[1])
            for t, p in parts
        }
    finally:
        c.close()


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
