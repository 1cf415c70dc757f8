"""``gatestream status``: per partition, where a group stands against the topic's end.

The stored offset is the database's (the source of truth), the end is the broker's high
watermark, lag in seconds is the age of the first event not yet ingested.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from gatestream.consumers.watermarks import end_offsets, timestamps_at
from gatestream.schemas import event_topics
from gatestream.settings import IngestSettings


def group_status(settings: IngestSettings, group: str) -> list[dict[str, Any]]:
    topics = list(event_topics(settings))
    from confluent_kafka import Consumer

    from gatestream.kafka import consumer_config

    c = Consumer(consumer_config(settings, f"gatestream-status-{time.monotonic_ns()}"))
    try:
        md = c.list_topics(timeout=10)
        parts = [(t, p) for t in topics if t in md.topics for p in sorted(md.topics[t].partitions)]
    finally:
        c.close()
    with psycopg.connect(settings.database_url) as conn:
        stored = {
            (t, p): o
            for t, p, o in conn.execute(
                "SELECT topic, partition, next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s",
                (group,),
            ).fetchall()
        }
    ends = end_offsets(settings, parts)
    behind = {tp: stored.get(tp, 0) for tp in parts if ends[tp] > stored.get(tp, 0)}
    ages = timestamps_at(settings, behind)
    now = time.time()
    rows = []
    for tp in parts:
        lag = max(0, ends[tp] - stored.get(tp, 0))
        age = ages.get(tp)
        rows.append({
            "topic": tp[0], "partition": tp[1], "stored_offset": stored.get(tp), "high_watermark": ends[tp],
            "lag_messages": lag, "lag_seconds": round(max(0.0, now - age), 1) if lag and age else 0.0,
        })  # fmt: skip
    return rows


def print_status(settings: IngestSettings, group: str) -> int:
    rows = group_status(settings, group)
    print(f"group {group}")
    print(f"{'topic':<44}{'part':>5}{'stored':>12}{'end':>12}{'lag':>10}{'lag s':>10}")
    for r in rows:
        stored = "-" if r["stored_offset"] is None else r["stored_offset"]
        print(
            f"{r['topic']:<44}{r['partition']:>5}{stored:>12}{r['high_watermark']:>12}"
            f"{r['lag_messages']:>10}{r['lag_seconds']:>10}"
        )
    total = sum(r["lag_messages"] for r in rows)
    worst = max((r["lag_seconds"] for r in rows), default=0.0)
    print(f"total lag {total} messages, oldest unread event {worst} s old")
    return 0
