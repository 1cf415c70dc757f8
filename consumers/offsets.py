"""Consumer offsets in the database: read on assignment, advanced with a fence.

The fence: a batch may only move a partition's offset from the value this member last
saw (``expected``) to the batch's end. A member that lost the partition in a rebalance,
and whose new owner has already committed, finds a different stored value; its update
matches no row and the whole transaction, rows included, rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

TopicPartition = tuple[str, int]


class FencedError(Exception):
    """The stored offsets moved under this member: it no longer owns those partitions."""

    def __init__(self, partitions: list[TopicPartition]) -> None:
        super().__init__(f"offsets moved by another member for {partitions}")
        self.partitions = partitions


def read_offsets(
    conn: psycopg.Connection[Any], group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Stored next offsets for the partitions that have one."""
    parts = list(partitions)
    if not parts:
        return {}
    rows = conn.execute(
        """SELECT o.topic, o.partition, o.next_offset
             FROM gatestream.consumer_offsets o
             JOIN unnest(%s::text[], %s::int[]) AS p(topic, partition)
               ON o.topic = p.topic AND o.partition = p.partition
            WHERE o.consumer_group = %s""",
        ([t for t, _ in parts], [p for _, p in parts], group),
    ).fetchall()
    return {(t, p): int(o) for t, p, o in rows}


def advance_offsets(
    conn: psycopg.Connection[Any],
    group: str,
    moves: dict[TopicPartition, tuple[int | None, int]],
) -> None:
    """Within the caller's transaction, move each partition from expected to new, or raise FencedError."""
    updates = [(t, p, exp, new) for (t, p), (exp, new) in moves.items() if exp is not None]
    inserts = [(t, p, new) for (t, p), (exp, new) in moves.items() if exp is None]
    fenced: list[TopicPartition] = []
    if updates:
        cur = conn.execute(
            """UPDATE gatestream.consumer_offsets o
                  SET next_offset = v.new, updated_at = now()
                 FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[]) AS v(topic, partition, expected, new)
                WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition
                  AND o.next_offset = v.expected
            RETURNING o.topic, o.partition""",
            (
                [u[0] for u in updates],
                [u[1] for u in updates],
                [u[2] for u in updates],
                [u[3] for u in updates],
                group,
            ),
        )
        done = {(t, p) for t, p in cur.fetchall()}
        fenced += [(t, p) for t, p, _, _ in updates if (t, p) not in done]
    if inserts:
        cur = conn.execute(
            """INSERT INTO gatestream.consumer_offsets (consumer_group, topic, partition, next_offset)
               SELECT %s, v.topic, v.partition, v.new
                 FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(topic, partition, new)
               ON CONFLICT DO NOTHING
            RETURNING topic, partition""",
            (group, [i[0] for i in inserts], [i[1] for i in inserts], [i[2] for i in inserts]),
        )
        done = {(t, p) for t, p in cur.fetchall()}
        fenced += [(t, p) for t, p, _ in inserts if (t, p) not in done]
    if fenced:
        raise FencedError(sorted(fenced))
