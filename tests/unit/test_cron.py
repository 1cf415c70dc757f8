"""pg_cron schedules: a job fires exactly every configured interval, or the interval is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gatestream.consumers.policy.engines import cron_line  # the line pg_cron jobs get
from gatestream.consumers.policy.model import DesiredJob, JobKind
from gatestream.cron import UnschedulableInterval
from gatestream.settings import PolicySettings

KEYS = ("retention:monitoring.active_windows", "row-retention:monitoring.screenshots", "x")


def _field(text: str, low: int, high: int) -> set[int]:
    """The values one cron field matches (numbers, '*', ranges, steps and lists)."""
    out: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(v) for v in span.split("-"))
        else:
            first = last = int(span)
        out |= set(range(first, last + 1, int(step or 1)))
    return out


def fire_times(line: str, start: datetime, days: int) -> list[datetime]:
    """When ``line`` fires in ``days`` days from ``start`` (an oracle independent of the code
    under test: minute, hour, day-of-month, month, day-of-week with Sunday = 0)."""
    minute, hour, dom, month, dow = line.split()
    assert dom == "*" and month == "*", "no day-of-month or month schedules: months differ in length"
    minutes, hours, weekdays = sorted(_field(minute, 0, 59)), sorted(_field(hour, 0, 23)), _field(dow, 0, 6)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        day + timedelta(hours=h, minutes=m)
        for day in (midnight + timedelta(days=d) for d in range(days))
        if day.isoweekday() % 7 in weekdays
        for h in hours
        for m in minutes
    ]


@pytest.mark.parametrize(
    "every_s", [60, 300, 900, 1800, 3600, 2 * 3600, 3 * 3600, 8 * 3600, 12 * 3600, 86400, 7 * 86400]
)
def test_a_cron_line_fires_exactly_every_interval(every_s: int) -> None:
    start = datetime(2026, 1, 26, tzinfo=UTC)  # a Monday; 5 weeks cover month ends and a 31st
    days = 35 if every_s == 7 * 86400 else 2 if every_s < 3600 else 9
    for key in KEYS:
        line = cron_line(key, every_s)
        fires = fire_times(line, start, days)
        gaps = {(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)}
        assert len(fires) >= 3 and gaps == {every_s}, (key, line, sorted(gaps)[:5])


def test_jobs_of_an_hour_or_more_are_spread_over_the_clock_and_stable_per_key() -> None:
    lines = {cron_line(f"retention:monitoring.t{i}", 86400) for i in range(20)}
    assert len(lines) > 10, "twenty daily jobs do not all start at the same minute"
    assert cron_line("x", 7 * 86400) == cron_line("x", 7 * 86400)


@pytest.mark.parametrize(
    ("every_s", "why"),
    [
        (30, "not a whole number of minutes"),  # pg_cron 1.4 (the stack's) has no seconds schedules
        (90, "not a whole number of minutes"),
        (45 * 60, "45 minutes do not divide an hour"),  # */45 fired at :00 and :45
        (90 * 60, "not a whole number of hours"),
        (5 * 3600, "5 hours do not divide a day"),
        (2 * 86400, "neither one day nor one week"),  # was daily
        (30 * 86400, "neither one day nor one week"),
    ],
)
def test_intervals_cron_cannot_repeat_are_refused_naming_the_setting(every_s: int, why: str) -> None:
    with pytest.raises(UnschedulableInterval, match=why):
        cron_line("k", every_s)
    from gatestream.consumers.policy.engines import cron_schedule

    job = DesiredJob("row-retention:monitoring.screenshots", JobKind.ROW_RETENTION, "t", None, every_s)
    with pytest.raises(UnschedulableInterval, match="change GATESTREAM_ROW_RETENTION_INTERVAL_S"):
        cron_schedule(job)
    # and the settings refuse it at start, not at the first reconcile
    for name in ("chunk_retention_interval_s", "row_retention_interval_s"):
        with pytest.raises(ValidationError, match=why if every_s >= 60 else "greater than or equal to 60") as caught:
            PolicySettings(**{name: every_s})  # type: ignore[arg-type]
        assert [e["loc"] for e in caught.value.errors()] == [(name,)]
    assert PolicySettings(row_retention_interval_s=900, chunk_retention_interval_s=7 * 86400)
