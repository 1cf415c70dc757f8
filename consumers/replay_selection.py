"""What a replay reads: the selection (event types, partitions, offsets, event-time range,
organizations), its validation, and the time and duration syntax of the replay command.

Times are event times. A selection is stored with its run as JSON (``describe``) and read
back when the run resumes (``from_description``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message

from gatestream.consumers.routes import Route


class ReplayError(Exception):
    """The selection cannot be replayed (unknown topic or partition, a start in the future, ...)."""


_NUMBER = r"[0-9]{1,9}(?:\.[0-9]{1,6})?"  # ASCII digits only, bounded: no overflow further down
_RELATIVE = re.compile(rf"^-({_NUMBER})([smhdw])$")
_DURATION = re.compile(rf"^({_NUMBER})([smhdw])$")
_EPOCH = re.compile(r"^@(-?[0-9]{1,12}(?:\.[0-9]{1,6})?)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
TIME_HELP = "ISO 8601 (2026-11-23T10:00Z; naive = UTC), 'now', relative (-90s, -15m, -2h, -7d, -1w) or @EPOCH_SECONDS"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An event time: ISO 8601 (naive = UTC), ``now``, relative to now (``-90s``, ``-15m``,
    ``-2h``, ``-7d``, ``-1w``) or ``@<epoch seconds>``. A bare number is refused: it reads
    as an offset to some and as epoch seconds to others."""
    now = now or datetime.now(UTC)
    text = text.strip()
    try:
        if text == "now":
            return now
        if m := _RELATIVE.match(text):
            return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        if m := _EPOCH.match(text):
            return datetime.fromtimestamp(float(m.group(1)), UTC)
        if text.isascii() and text.isdigit():
            raise ReplayError(
                f"{text!r} is a bare number: for an offset use --from-offset/--to-offset, for epoch seconds @{text}"
            )
        if not text.isascii():
            raise ValueError("non-ASCII characters")
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        dt.astimezone(UTC).timestamp()  # representable as an instant
        return dt
    except (ValueError, OverflowError, OSError) as exc:
        raise ReplayError(f"not a usable time: {text!r} ({exc}); use {TIME_HELP}") from exc


def parse_duration(text: str) -> timedelta:
    """``0s``, ``90s``, ``5m``, ``2h``, ``1d``, ``1w``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ReplayError(f"not a duration: {text!r} (use e.g. 0s, 90s, 5m, 2h)")
    try:
        return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    except OverflowError as exc:
        raise ReplayError(f"duration out of range: {text!r}") from exc


@dataclass(frozen=True)
class ReplaySelection:
    event_types: tuple[str, ...]  # from the schema catalog
    partitions: tuple[int, ...] | None = None  # None = all
    from_offset: int | None = None
    to_offset: int | None = None  # exclusive
    since: datetime | None = None  # event time, inclusive
    until: datetime | None = None  # event time, exclusive
    organizations: frozenset[int] | None = None
    skew_margin: timedelta = timedelta(minutes=5)

    def validate(self) -> None:
        """Refuse a selection that cannot select anything, before any work starts."""
        if not self.event_types:
            raise ReplayError("the selection names no event type")
        if self.partitions is not None and not self.partitions:
            raise ReplayError("--partitions selects no partition")
        if self.organizations is not None and not self.organizations:
            raise ReplayError("--orgs selects no organization")
        for name, v in (("--from-offset", self.from_offset), ("--to-offset", self.to_offset)):
            if v is not None and not 0 <= v < 2**63:
                raise ReplayError(f"{name} must be an offset from 0 to 2^63-1, got {v}")
        if self.from_offset is not None and self.to_offset is not None and self.from_offset >= self.to_offset:
            raise ReplayError(f"--from-offset {self.from_offset} is not before --to-offset {self.to_offset}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ReplayError(f"--from {self.since.isoformat()} is not before --to {self.until.isoformat()}")
        if self.skew_margin < timedelta(0):
            raise ReplayError("--skew must not be negative")

    def describe(self) -> dict[str, Any]:
        """The selection as JSON: stored with a run, and its default name's source."""
        return {
            "types": sorted(self.event_types),
            "partitions": sorted(self.partitions) if self.partitions is not None else None,
            "from_offset": self.from_offset, "to_offset": self.to_offset,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "orgs": sorted(self.organizations) if self.organizations is not None else None,
            "skew_s": self.skew_margin.total_seconds(),
        }  # fmt: skip

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> ReplaySelection:
        return cls(
            event_types=tuple(d["types"]),
            partitions=tuple(d["partitions"]) if d.get("partitions") is not None else None,
            from_offset=d.get("from_offset"), to_offset=d.get("to_offset"),
            since=datetime.fromisoformat(d["since"]) if d.get("since") else None,
            until=datetime.fromisoformat(d["until"]) if d.get("until") else None,
            organizations=frozenset(d["orgs"]) if d.get("orgs") is not None else None,
            skew_margin=timedelta(seconds=d.get("skew_s", 300)),
        )  # fmt: skip

    def accepts(self, route: Route) -> Callable[[Message, dict[str, Any]], bool] | None:
        """The event filter for a route's records, or None when every event is wanted."""
        orgs = self.organizations
        lo = int(self.since.timestamp() * 1000) if self.since else None
        hi = int(self.until.timestamp() * 1000) if self.until else None
        if orgs is None and lo is None and hi is None:
            return None
        tf = route.time_field

        def accept(_msg: Message, rec: dict[str, Any]) -> bool:
            if orgs is not None and rec["organization_id"] not in orgs:
                return False
            t = rec[tf]
            return (lo is None or t >= lo) and (hi is None or t < hi)

        return accept
