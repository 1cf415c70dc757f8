"""``gatestream status``: per partition, where a group stands against the topic's end.

The stored offset is the database's (the source of truth), the end is the broker's high
watermark, lag in seconds is the age of the first event not yet ingested. A stored offset
below the partition's start (its low watermark) means topic retention deleted events before
they were ingested (or the database was restored from a backup older than the topics keep):
those are counted as lost to retention and warned about. A group that
never stored an offset is said to be unknown (its "lag" would be whole topics), with the
groups that did; a database that does not answer is reported within seconds.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gatestream.consumers.watermarks import timestamps_at, watermarks
from gatestream.database import connect_once, limited
from gatestream.edition import server_description
from gatestream.schemas import event_topics
from gatestream.settings import IngestSettings

QUERY_TIMEOUT_S = 10  # the server cancels a statement after this; the client gives up a bit later


@dataclass
class GroupStatus:
    group: str
    rows: list[dict[str, Any]]
    groups: list[str] = field(default_factory=list)  # every group with stored offsets
    database: str = ""  # what the server runs (gatestream.edition.server_description)

    @property
    def known(self) -> bool:
        return self.group in self.groups

    @property
    def lost(self) -> list[dict[str, Any]]:
        """The partitions whose stored offset is older than the topic's earliest offset."""
        return [r for r in self.rows if r["lost_to_retention"]]


def _stored(settings: IngestSettings, group: str) -> tuple[dict[tuple[str, int], int], list[str], str]:
    """The group's stored next offsets, which groups have any, and what the server runs."""
    with connect_once(settings.database_url) as conn:
        with limited(conn, QUERY_TIMEOUT_S):
            database = server_description(conn)
            stored = {
                (t, p): int(o)
                for t, p, o in conn.execute(
                    "SELECT topic, partition, next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s",
                    (group,),
                ).fetchall()
            }
            groups = [str(r[0]) for r in conn.execute(
                "SELECT DISTINCT consumer_group FROM gatestream.consumer_offsets ORDER BY 1").fetchall()]  # fmt: skip
    return stored, groups, database


def status_of(settings: IngestSettings, group: str) -> GroupStatus:
    topics = list(event_topics(settings))
    from confluent_kafka import Consumer

    from gatestream.kafka import consumer_config

    c = Consumer(consumer_config(settings, f"gatestream-status-{time.monotonic_ns()}", member=False))
    try:
        md = c.list_topics(timeout=10)
        parts = [(t, p) for t in topics if t in md.topics for p in sorted(md.topics[t].partitions)]
    finally:
        c.close()
    stored, groups, database = _stored(settings, group)
    marks = watermarks(settings, parts)
    ends = {tp: high for tp, (_low, high) in marks.items()}
    behind = {tp: max(stored.get(tp, 0), marks[tp][0]) for tp in parts if ends[tp] > stored.get(tp, 0)}
    ages = timestamps_at(settings, behind)
    now = time.time()
    rows = []
    for tp in parts:
        start = marks[tp][0]
        lag = max(0, ends[tp] - max(stored.get(tp, 0), start))  # what is left to read
        age = ages.get(tp)
        lost = max(0, start - stored[tp]) if tp in stored else 0
        rows.append({
            "topic": tp[0], "partition": tp[1], "stored_offset": stored.get(tp), "high_watermark": ends[tp],
            "lag_messages": lag, "lag_seconds": round(max(0.0, now - age), 1) if lag and age else 0.0,
            "low_watermark": start, "lost_to_retention": lost,
        })  # fmt: skip
    return GroupStatus(group, rows, groups, database)


def group_status(settings: IngestSettings, group: str) -> list[dict[str, Any]]:
    return status_of(settings, group).rows


def unknown_group(st: GroupStatus) -> str:
    """The line that says a group never stored an offset, naming those that did."""
    listed = ", ".join(st.groups[:20]) + (f" (+{len(st.groups) - 20} more)" if len(st.groups) > 20 else "")
    return (
        f"group {st.group!r} has no stored offsets: no consumer of that group has committed a batch "
        f"(its lag counts whole topics); groups with stored offsets: {listed or 'none'}"
    )


def lost_warning(st: GroupStatus) -> str | None:
    """The line that says events were deleted by topic retention before they were ingested."""
    if not st.lost:
        return None
    where = ", ".join(
        f"{r['topic']}[{r['partition']}] stored {r['stored_offset']} < earliest {r['low_watermark']}"
        for r in st.lost[:5]
    ) + (f" (+{len(st.lost) - 5} more)" if len(st.lost) > 5 else "")
    total = sum(r["lost_to_retention"] for r in st.lost)
    return (
        f"warning: {total} event(s) of group {st.group!r} were deleted by topic retention before they were "
        f"ingested ({where}): the consumers will go on from the earliest offset; lengthen the topics' "
        "retention.ms beyond the longest consumer outage and the interval between backups"
    )


def print_status(settings: IngestSettings, group: str, *, as_json: bool = False) -> int:
    """The table (or JSON); exit code 1 if the group never stored an offset. Events lost to
    topic retention are warned about on stderr (the exit code stays)."""
    st = status_of(settings, group)
    if as_json:
        print(json.dumps(st.rows))
    else:
        print(f"group {group}   database {st.database}")
        print(f"{'topic':<44}{'part':>5}{'stored':>12}{'end':>12}{'lag':>10}{'lag s':>10}")
        for r in st.rows:
            stored = "-" if r["stored_offset"] is None else r["stored_offset"]
            print(
                f"{r['topic']:<44}{r['partition']:>5}{stored:>12}{r['high_watermark']:>12}"
                f"{r['lag_messages']:>10}{r['lag_seconds']:>10}"
            )
        total = sum(r["lag_messages"] for r in st.rows)
        worst = max((r["lag_seconds"] for r in st.rows), default=0.0)
        print(f"total lag {total} messages, oldest unread event {worst} s old")
    warning = lost_warning(st)
    if warning:
        print(f"gatestream status: {warning}", file=sys.stderr)
    if not st.known:
        print(f"gatestream status: {unknown_group(st)}", file=sys.stderr)
        return 1
    return 0
