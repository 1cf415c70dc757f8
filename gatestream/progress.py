"""Progress of long runs: a bar with rate and ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import structlog

log = structlog.get_logger("gatestream.progress")


class Progress:
    """Feed it ``update(summary)`` with a ``consumed`` count; ``total`` may be set later."""

    def __init__(self, label: str, *, total: int | None = None, enabled: bool = True, every_s: float = 5.0) -> None:
        self.label = label
        self.enabled = enabled
        self.every_s = every_s
        self._bar: Any = None
        self._last_log = time.monotonic()
        self._start = time.monotonic()
        self._shown = 0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="ev", unit_scale=True, dynamic_ncols=True)

    def update(self, summary: Any, remaining: dict[str, int] | None = None) -> None:
        """``remaining``: messages left per partition ("topic[p]" -> n), when the run knows."""
        if not self.enabled:
            return
        consumed = int(summary.consumed)
        now = time.monotonic()
        rate = consumed / max(now - self._start, 1e-9)
        if self._bar is not None:
            self._bar.update(consumed - self._shown)
            self._shown = consumed
            if remaining and now - self._last_log >= 1.0:
                self._last_log = now
                done = sum(1 for n in remaining.values() if n == 0)
                self._bar.set_postfix_str(f"partitions done {done}/{len(remaining)}", refresh=False)
            return
        if now - self._last_log >= self.every_s:
            self._last_log = now
            fields: dict[str, Any] = {"read": consumed, "inserted": summary.inserted, "events_per_s": round(rate)}
            if remaining:
                left = sum(remaining.values())
                fields["left"] = left
                fields["eta_s"] = round(left / rate) if rate > 0 else None
                fields["partitions_left"] = dict(
                    sorted(((k, n) for k, n in remaining.items() if n), key=lambda x: -x[1])[:10]
                )
            log.info(self.label, **fields)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
