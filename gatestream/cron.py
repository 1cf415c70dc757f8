"""Cron lines for fixed intervals: the five-field schedule that fires exactly every N
seconds, or a clear refusal where cron cannot.

A cron line names positions on the clock, not periods, so an interval repeats exactly
only where it divides the next field's span: minutes dividing an hour (1, 2, 3, 4, 5, 6,
10, 12, 15, 20, 30), hours dividing a day (1, 2, 3, 4, 6, 8, 12), one day, one week.
Anything else would fire with a short gap where the field wraps (every 45 minutes as
``*/45`` fires at :00 and :45, 15 minutes apart; every 2 days as a day-of-month step runs
on the 31st and again on the 1st), so it is refused. pg_cron's seconds schedules
(``'[1-59] seconds'``, pg_cron 1.5+) are not used: Debian's PostgreSQL 15 ships pg_cron 1.4.

Jobs of an hour or more fire at a minute (and hour, weekday) spread by a key (a hash), so
the jobs of many hypertables do not all start at minute 0.
"""

from __future__ import annotations

import hashlib

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400

EXPRESSIBLE = (
    "a whole number of minutes dividing an hour (60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800 s), "
    "of hours dividing a day (3600, 7200, 10800, 14400, 21600, 28800, 43200 s), 86400 s (a day) or 604800 s (a week)"
)


class UnschedulableInterval(ValueError):
    """An interval no cron line repeats exactly."""


def unschedulable(every_s: int) -> str | None:
    """Why no cron line fires exactly every ``every_s`` seconds, or None if one does."""
    if every_s < MINUTE or every_s % MINUTE:
        return f"{every_s} s is not a whole number of minutes; cron schedules have minutes, not seconds"
    if every_s < HOUR:
        return None if HOUR % every_s == 0 else f"{every_s // MINUTE} minutes do not divide an hour"
    if every_s < DAY:
        if every_s % HOUR:
            return f"{every_s} s is more than an hour but not a whole number of hours"
        return None if DAY % every_s == 0 else f"{every_s // HOUR} hours do not divide a day"
    if every_s in (DAY, WEEK):
        return None
    return f"{every_s} s is neither one day nor one week (cron has no step across months)"


def cron_line(key: str, every_s: int) -> str:
    """The cron line that fires every ``every_s`` seconds exactly, its phase spread by
    ``key``; UnschedulableInterval (saying which intervals work) where there is none."""
    problem = unschedulable(every_s)
    if problem is not None:
        raise UnschedulableInterval(f"{problem}: cron can run a job exactly every {EXPRESSIBLE}")
    spread = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    minute, hour, weekday = spread % 60, spread // 60 % 24, spread // 1440 % 7
    if every_s < HOUR:
        step = every_s // MINUTE
        return f"*/{step} * * * *" if step > 1 else "* * * * *"
    if every_s < DAY:
        step = every_s // HOUR
        first = spread // 60 % step
        hours = "*" if step == 1 else f"*/{step}" if first == 0 else f"{first}-23/{step}"
        return f"{minute} {hours} * * *"
    if every_s == DAY:
        return f"{minute} {hour} * * *"
    return f"{minute} {hour} * * {weekday}"
