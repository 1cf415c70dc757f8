"""The churn scenarios of the fault bench: members killed -9 and replaced every few
seconds, under each consumer-group protocol, with the throughput during the churn."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import psycopg

from gatestream.database import connect_once
from gatestream.schemas import EventType

if TYPE_CHECKING:
    from bench.scenarios import Run


def churn(run: Run, rnd: random.Random, until: float) -> int:
    """Churn: once the members write, for ``until - now`` seconds, every ~3 s one member is
    killed -9 and a replacement started, under the group protocol the scenario sets
    (``churn-classic``, ``churn-consumer``; ``churn-static``: classic with a stable
    group.instance.id per member slot, reused by its replacement).
    Prints rows/s during the churn, the longest stretch without a new row, and rows/s in
    the 10 s after it with the members left alone; the table's row says whether the
    totals are exact."""
    static = run.env_extra.get("GATESTREAM_GROUP_PROTOCOL") == "classic" and "CHURN_STATIC" in run.env_extra
    label = "classic, static members" if static else run.env_extra.get("GATESTREAM_GROUP_PROTOCOL", "auto")
    slots: dict[int, subprocess.Popen[bytes]] = {}
    if static:  # the three started without an id leave; each slot's member gets its own id for good
        for p in run.alive():
            run.note_rss(p)
            p.send_signal(signal.SIGTERM)
        for i in range(3):
            slots[i] = run.start_consumer(GATESTREAM_GROUP_INSTANCE_ID=f"{run.prefix}member-{i}")

    count = psycopg.sql.SQL(" + ").join(
        psycopg.sql.SQL("(SELECT count(*) FROM monitoring.{})").format(psycopg.sql.Identifier(et.value))
        for et in EventType
    )

    def rows() -> int:
        with connect_once(run.url) as conn:
            row = conn.execute(psycopg.sql.SQL("SELECT {}").format(count)).fetchone()
        return int(row[0]) if row else 0

    def watch(seconds: float, kill_every: float | None) -> tuple[int, float, int]:
        """Rows gained and the longest stall over ``seconds``, killing and replacing a member
        every ``kill_every`` seconds (None: leave them alone); -> (rows, stall s, kills)."""
        start = time.monotonic()
        first = last = rows()
        last_growth, stall, kills = start, 0.0, 0
        next_kill = start + (kill_every or 0)
        while (now := time.monotonic()) < start + seconds:
            if kill_every is not None and now >= next_kill:
                if static:
                    slot = rnd.randrange(3)
                    run.kill(slots[slot])
                    slots[slot] = run.start_consumer(GATESTREAM_GROUP_INSTANCE_ID=f"{run.prefix}member-{slot}")
                else:
                    alive = run.alive()
                    if alive:
                        run.kill(rnd.choice(alive))
                    run.start_consumer()
                kills += 1
                next_kill = now + rnd.uniform(0.8, 1.2) * kill_every
            time.sleep(0.5)
            current = rows()
            if current > last:
                last, last_growth = current, time.monotonic()
            stall = max(stall, time.monotonic() - last_growth)
        return last - first, stall, kills

    during = max(1.0, until - time.monotonic())
    warm = time.monotonic() + 90
    while rows() == 0 and time.monotonic() < warm:  # the churn starts once the members write
        time.sleep(0.5)
    gained, stall, kills = watch(during, 3.0)
    after, _, _ = watch(10.0, None)
    print(
        f"  churn ({label}): {kills} kills in {during:.0f} s; {gained / during:.0f} rows/s during the churn "
        f"(longest stall {stall:.1f} s), {after / 10:.0f} rows/s in the 10 s after",
        flush=True,
    )
    return kills
