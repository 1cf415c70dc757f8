"""Replay run records (``gatestream.replay_runs``): what a run selected, as typed and as
resolved when it started, its state, and when it started and ended.

A run's per-partition progress lives in ``gatestream.consumer_offsets`` under the run's
own group (``run_group``: the one place that names it), committed with the rows. A name
has at most one unfinished run (running or failed): a rerun resumes it, and it is
running again. Once a run is complete, the same selection starts a new run, so a rerun
after a restore restores again. ``forget`` keeps unfinished runs unless forced: their
progress is what a rerun continues from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gatestream.consumers.replay_selection import ReplayError

UNFINISHED = ("running", "failed")
GROUP_PREFIX = "gatestream-replay-"  # every replay group starts with it; no other group does


@dataclass(frozen=True)
class ReplayRun:
    run_id: int
    name: str
    spec: dict[str, Any]
    resolved: dict[str, Any]
    state: str
    started_at: datetime
    finished_at: datetime | None = None
    summary: dict[str, Any] | None = None

    @property
    def group(self) -> str:
        return run_group(self.run_id)

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED


def run_group(run_id: int) -> str:
    """The consumer group under which a run stores its progress (the only place that names it)."""
    return f"{GROUP_PREFIX}run-{run_id}"


def dry_run_group() -> str:
    """The group of a dry run of a new run: one nothing was ever stored under."""
    return f"{GROUP_PREFIX}dry-{time.monotonic_ns()}"


def same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Selections compared as stored (JSON), so a spec read back equals the one typed."""
    return bool(json.loads(json.dumps(a, sort_keys=True)) == json.loads(json.dumps(b, sort_keys=True)))


_COLUMNS = "run_id, name, spec, resolved, state, started_at, finished_at, summary"


def latest(conn: psycopg.Connection[Any], name: str) -> ReplayRun | None:
    """The newest run of ``name``."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM gatestream.replay_runs WHERE name = %s ORDER BY run_id DESC LIMIT 1",  # noqa: S608
            (name,),
        ).fetchone()
    return ReplayRun(**row) if row else None


def start(conn: psycopg.Connection[Any], name: str, spec: dict[str, Any], resolved: dict[str, Any]) -> ReplayRun:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"INSERT INTO gatestream.replay_runs (name, spec, resolved) VALUES (%s, %s, %s) RETURNING {_COLUMNS}",  # noqa: S608
            (name, Jsonb(spec), Jsonb(resolved)),
        ).fetchone()
    assert row is not None
    return ReplayRun(**row)


def finish(conn: psycopg.Connection[Any], run: ReplayRun, state: str, summary: dict[str, Any]) -> None:
    """Record the run's end. ``complete`` is committed synchronously: once the summary is
    printed, a server crash cannot take the record (or the rows before it) back."""
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute(
            "UPDATE gatestream.replay_runs SET state = %s, finished_at = now(), summary = %s WHERE run_id = %s",
            (state, Jsonb(summary), run.run_id),
        )


def resume(conn: psycopg.Connection[Any], run: ReplayRun) -> ReplayRun:
    """A rerun continues the unfinished ``run``: it is running again (a failed one too)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE gatestream.replay_runs SET state = 'running', finished_at = NULL, summary = NULL "  # noqa: S608
            f"WHERE run_id = %s RETURNING {_COLUMNS}",
            (run.run_id,),
        ).fetchone()
    if row is None:
        raise ReplayError(f"replay run #{run.run_id} is gone (forgotten with --force meanwhile?); run again")
    return ReplayRun(**row)


def abandon(conn: psycopg.Connection[Any], run: ReplayRun) -> None:
    """``--restart``: the unfinished run ends, abandoned; its progress stays for the record."""
    conn.execute(
        "UPDATE gatestream.replay_runs SET state = 'abandoned', finished_at = now() WHERE run_id = %s", (run.run_id,)
    )


def list_runs(conn: psycopg.Connection[Any], limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, with progress: messages of the planned ranges read so far."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM gatestream.replay_runs ORDER BY run_id DESC LIMIT %s",  # noqa: S608
            (limit,),
        ).fetchall()
    out = []
    for r in rows:
        stored = {
            (t, p): o
            for t, p, o in conn.execute(
                "SELECT topic, partition, next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s",
                (run_group(r["run_id"]),),
            ).fetchall()
        }
        planned = done = 0
        for x in r["resolved"].get("ranges", []):
            size = max(0, x["end"] - x["start"])
            planned += size
            at = stored.get((x["topic"], x["partition"]), x["start"])
            done += size if r["state"] == "complete" else min(size, max(0, at - x["start"]))
        out.append({**r, "group": run_group(r["run_id"]), "planned": planned, "done": done})
    return out


@dataclass(frozen=True)
class Forgotten:
    forgotten: int  # runs deleted, with their progress
    kept: int  # unfinished runs old enough that were kept (without ``force``)


def forget(conn: psycopg.Connection[Any], older_than: timedelta, *, force: bool = False) -> Forgotten:
    """Delete runs that ended (unfinished ones: started) more than ``older_than`` ago, with
    their progress rows. Unfinished runs (running or failed) are kept unless ``force``:
    a rerun of their command continues from that progress."""
    old = "coalesce(finished_at, started_at) < now() - %(older)s"
    unfinished = "state = ANY(%(unfinished)s)"
    params = {"older": older_than, "unfinished": list(UNFINISHED)}
    count_kept = f"SELECT count(*) FROM gatestream.replay_runs WHERE {old} AND {unfinished}"  # noqa: S608
    which = old if force else f"{old} AND NOT {unfinished}"
    delete = f"DELETE FROM gatestream.replay_runs WHERE {which} RETURNING run_id"  # noqa: S608
    with conn.transaction():
        kept = 0
        if not force:
            count = conn.execute(count_kept, params).fetchone()
            kept = int(count[0]) if count else 0
        ids = [r[0] for r in conn.execute(delete, params).fetchall()]
        if ids:
            conn.execute(
                "DELETE FROM gatestream.consumer_offsets WHERE consumer_group = ANY(%s)", ([run_group(i) for i in ids],)
            )
    return Forgotten(len(ids), kept)
