"""Replay: read event topics again (all of them or a time range) into the hypertables.

This module plans and records runs; the reading is ``consumers.replay_reader`` (the
batch pipeline's bounded driver) and the selection is ``consumers.replay_selection``.
A replay goes through the same decode -> rows -> COPY -> checkpoint path as live
ingest, with three differences:

- it reads partition ranges by manual assignment, never joining the live ingest group,
  and stores its progress (with the rows, in one transaction, like ingest) under a group
  of its own (``consumers.replay_runs.run_group``, the one place that names it); a run is
  named after its selection, so re-running the same command after Ctrl-C, a crash or a
  failure continues where it stopped (and the run is running again);
- an event whose ``event_id`` is already stored is left alone and counted as already
  present (the primary key makes a second row impossible);
- it can keep only some organizations and an event-time range.

Time ranges are about event time. The broker's offsets-for-times lookup narrows where
reading starts: an event that happened at ``since`` reached the broker at ``since`` or
later, so reading from the offset for ``since`` minus a clock-skew margin finds all of
them. Late events can sit anywhere after that, so reading goes to the end of each
partition as of the run, keeping the events whose event time is in range.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import Consumer, Message, TopicPartition

from gatestream.consumers import replay_runs as runs
from gatestream.consumers.partitions import PartitionRange
from gatestream.consumers.pipeline import IngestSummary
from gatestream.consumers.replay_reader import RangeReader
from gatestream.consumers.replay_selection import (
    TIME_HELP,
    ReplayError,
    ReplaySelection,
    parse_duration,
    parse_time,
)
from gatestream.consumers.routes import build_routes
from gatestream.database import connect
from gatestream.kafka import consumer_config
from gatestream.ratelimit import RateLimiter
from gatestream.schemas import catalog_of
from gatestream.settings import IngestSettings

__all__ = [
    "TIME_HELP", "NameConflict", "PreparedRun", "ReplayError", "ReplaySelection", "ReplaySummary", "parse_duration",
    "parse_time", "plan", "prepare", "replay",
]  # fmt: skip

log = structlog.get_logger("gatestream.replay")


@dataclass
class ReplaySummary:
    name: str
    run: int | None  # the run's id; None for a dry run of a new run
    resumed: bool = False
    read: int = 0
    inserted: int = 0
    already_present: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    complete: bool = False
    max_rate: float = 0.0  # the --max-rate the run read at (0: no limit)
    partitions: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return asdict(self)


def default_name(spec: dict[str, Any]) -> str:
    """The name of a selection's runs when none is given: the same command, the same name."""
    return "sel-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def plan(settings: IngestSettings, selection: ReplaySelection) -> list[PartitionRange]:
    """Partition ranges to read: the selection's offsets, or the start-time lookup."""
    if selection.since and selection.since > datetime.now(UTC) + selection.skew_margin:
        raise ReplayError(f"the start {selection.since.isoformat()} is in the future")
    known = catalog_of(settings).event_types()
    unknown = [t for t in selection.event_types if t not in known]
    if unknown:
        raise ReplayError(f"unknown event type {', '.join(unknown)}; the schema catalog has: {', '.join(known)}")
    c = Consumer(consumer_config(settings, f"gatestream-replay-plan-{time.monotonic_ns()}", member=False))
    try:
        ranges: list[PartitionRange] = []
        for et in selection.event_types:
            topic = settings.topic_for(et)
            md = c.list_topics(topic, timeout=10).topics.get(topic)
            if md is None or md.error is not None:
                raise ReplayError(f"topic {topic} does not exist")
            available = sorted(md.partitions)
            wanted = list(selection.partitions) if selection.partitions is not None else available
            missing = sorted(set(wanted) - set(available))
            if missing:
                raise ReplayError(f"topic {topic} has no partition {missing} (it has {available})")
            marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in wanted}
            starts = {p: selection.from_offset or 0 for p in wanted}
            if selection.since is not None and selection.from_offset is None:
                try:
                    ts = max(0, int((selection.since - selection.skew_margin).timestamp() * 1000))
                except OverflowError:  # a start near year 1: everything is after it
                    ts = 0  # (negative values mean "latest"/"earliest" to the broker: never send one)
                found = c.offsets_for_times([TopicPartition(topic, p, ts) for p in wanted], timeout=10)
                for tp in found:
                    # -1: no message at or after that time yet: nothing to read there
                    starts[tp.partition] = tp.offset if tp.offset >= 0 else marks[tp.partition][1]
            for p in wanted:
                # Clamped to what the partition holds as the run starts: the range is finite
                # (every run ends), and a start below the log's beginning (retention) reads
                # from the first message there is.
                low, high = marks[p]
                end = high if selection.to_offset is None else min(selection.to_offset, high)
                ranges.append(PartitionRange(topic, p, min(max(starts[p], low), end), end))
        return ranges
    finally:
        c.close()


def estimate_total(ranges: list[PartitionRange]) -> dict[tuple[str, int], int]:
    """Messages per planned range."""
    return {(r.topic, r.partition): max(0, (r.end if r.end is not None else r.start) - r.start) for r in ranges}


class NameConflict(ReplayError):
    """A name given to another selection than its earlier runs had."""


@dataclass
class PreparedRun:
    """What a replay command will do: resume the unfinished run of its name, or start a new one."""

    name: str
    spec: dict[str, Any]
    selection: ReplaySelection  # as resolved (a resumed run's stored one)
    ranges: list[PartitionRange]
    run: runs.ReplayRun | None  # the unfinished run to resume; None: a new run
    previous: runs.ReplayRun | None  # the newest earlier run of this name

    @property
    def note(self) -> str:
        """One line for the operator: what this command does, and why."""
        if self.run is not None:
            started = f"{self.run.started_at:%Y-%m-%d %H:%M:%S%z}"
            return f"{self.name}: resuming unfinished run #{self.run.run_id} (started {started})"
        if self.previous is not None:
            ended = f" {self.previous.finished_at:%Y-%m-%d %H:%M:%S%z}" if self.previous.finished_at else ""
            return f"{self.name}: run #{self.previous.run_id} ended {self.previous.state}{ended}; starting a new run"
        return f"{self.name}: starting a new run"


def prepare(
    settings: IngestSettings,
    selection: ReplaySelection,
    *,
    spec: dict[str, Any] | None = None,
    name: str | None = None,
    restart: bool = False,
    dry_run: bool = False,
) -> PreparedRun:
    """Decide what to run. ``spec`` is the selection as the operator typed it (relative
    times unresolved; default: the resolved selection). An unfinished run with that name
    and spec resumes with the selection it resolved when it started; otherwise a new run
    starts with ``selection``. A name reused for another spec raises NameConflict."""
    selection.validate()
    spec = spec if spec is not None else selection.describe()
    name = name or default_name(spec)
    with connect(settings.database_url) as conn:
        prev = runs.latest(conn, name)
        if prev is not None and not runs.same_spec(prev.spec, spec):
            raise NameConflict(
                f"the name {name!r} belongs to another selection (run #{prev.run_id}, {prev.state}):\n"
                f"  its selection: {json.dumps(prev.spec, sort_keys=True)}\n"
                f"  this command:  {json.dumps(spec, sort_keys=True)}\n"
                "choose another --name"
            )
        if prev is not None and prev.unfinished:
            if not restart:
                resolved = prev.resolved
                ranges = [PartitionRange(r["topic"], r["partition"], r["start"], r["end"]) for r in resolved["ranges"]]
                return PreparedRun(name, spec, ReplaySelection.from_description(resolved), ranges, prev, prev)
            if not dry_run:
                runs.abandon(conn, prev)
                log.info("unfinished run abandoned (--restart)", run=prev.run_id, name=name)
    return PreparedRun(name, spec, selection, plan(settings, selection), None, prev)


def replay(
    settings: IngestSettings,
    selection: ReplaySelection,
    *,
    dry_run: bool = False,
    max_rate: float = 0,
    restart: bool = False,
    name: str | None = None,
    spec: dict[str, Any] | None = None,
    progress: Callable[[IngestSummary, dict[str, int]], None] | None = None,
    reader_hook: Callable[[RangeReader], None] | None = None,
    prepared: PreparedRun | None = None,
) -> ReplaySummary:
    """Replay ``selection`` into the hypertables; see the module's doc and ``prepare``
    (``prepared``: its result, when the caller made one already)."""
    if prepared is None:
        prepared = prepare(settings, selection, spec=spec, name=name, restart=restart, dry_run=dry_run)
    selection, ranges = prepared.selection, prepared.ranges
    with connect(settings.database_url) as conn:
        run = prepared.run
        if run is None and not dry_run:
            resolved = {**selection.describe(), "ranges": [asdict(r) for r in ranges]}
            run = runs.start(conn, prepared.name, prepared.spec, resolved)
        elif run is not None and not dry_run:
            run = runs.resume(conn, run)  # running again, a failed run too
        # a dry run of a new run has no progress yet: a group nothing was ever stored under
        group = run.group if run is not None else runs.dry_run_group()
        topics = {settings.topic_for(et): et for et in selection.event_types}
        routes = build_routes(conn, settings, topics)
    filters = {t: selection.accepts(r) for t, r in routes.items()}

    def accept(msg: Message, rec: dict[str, Any]) -> bool:
        f = filters[msg.topic() or ""]
        return f is None or f(msg, rec)

    limiter = RateLimiter(max_rate) if max_rate > 0 else None
    poll_max = 10000
    if max_rate > 0:
        # A smooth rate: poll about a fifth of a second of events at a time, and commit at
        # least every second (a batch holds at most a second of events).
        poll_max = max(1, int(max_rate / 5))
        settings = settings.model_copy(
            update={
                "batch_max_rows": min(settings.batch_max_rows, max(1, int(max_rate))),
                "batch_max_ms": min(settings.batch_max_ms, 1000),
            }
        )
    seen = 0

    def on_turn(s: IngestSummary) -> None:
        nonlocal seen
        if limiter is not None and s.consumed > seen:
            limiter.wait(s.consumed - seen)
        seen = s.consumed
        if progress is not None:
            progress(s, remaining(reader))

    needs_filter = any(f is not None for f in filters.values())
    reader = RangeReader(
        settings, routes, group, ranges, event_filter=accept if needs_filter else None, on_turn=on_turn,
        dry_run=dry_run, poll_max=poll_max,
    )  # fmt: skip
    if reader_hook is not None:
        reader_hook(reader)
    log.info(
        "replay started", name=prepared.name, run=run and run.run_id, group=group, topics=list(routes),
        dry_run=dry_run,
    )  # fmt: skip
    try:
        s = reader.run()
    except BaseException:
        if run is not None and not dry_run:
            with connect(settings.database_url) as conn:
                runs.finish(conn, run, "failed", {"error": "see the log"})
        raise
    summary = ReplaySummary(
        name=prepared.name, run=run.run_id if run is not None else None, resumed=prepared.run is not None,
        read=s.consumed, inserted=s.inserted, already_present=s.duplicates,
        dead_lettered=s.dead_lettered, seconds=round(s.seconds, 2), dry_run=dry_run, complete=reader.complete,
        max_rate=max_rate,
        partitions=[
            {"topic": r.topic, "partition": r.partition, "from": reader.parts.started_at.get((r.topic, r.partition)),
             "to": reader.parts.ends.get((r.topic, r.partition))}
            for r in ranges
        ],
    )  # fmt: skip
    if run is not None and summary.complete and not dry_run:  # a dry run leaves the record as it found it
        with connect(settings.database_url) as conn:
            runs.finish(conn, run, "complete", summary.report())
    log.info("replay finished", **{k: v for k, v in summary.report().items() if k != "partitions"})
    return summary


def remaining(reader: RangeReader) -> dict[str, int]:
    """Messages left to read per partition range ("topic[p]" -> count), for progress."""
    out = {}
    parts = reader.parts
    for tp, end in parts.ends.items():
        if end is not None:
            out[f"{tp[0]}[{tp[1]}]"] = max(0, end - max(parts.next.get(tp, 0), parts.started_at.get(tp, 0)))
    return out


def print_plan(
    label: str, ranges: list[PartitionRange], totals: dict[tuple[str, int], int], out: Any = sys.stdout
) -> None:
    print(f"{label}: {len(ranges)} partitions", file=out)
    for r in ranges:
        n = totals[(r.topic, r.partition)]
        end = r.end if r.end is not None else "end"
        print(f"  {r.topic}[{r.partition}]  from {r.start}  to {end}  {n} messages now", file=out)
