"""A steady-rate limiter, for the load generator and for replays (``--rate``, ``--max-rate``)."""

from __future__ import annotations

import time


class RateLimiter:
    """Spreads work evenly at ``rate`` items per second (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.done = 0

    def wait(self, n: int) -> None:
        """Count ``n`` more items, sleeping as long as the rate requires."""
        self.done += n
        if self.rate > 0:
            ahead = self.done / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)
