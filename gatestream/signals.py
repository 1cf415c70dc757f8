"""SIGTERM/SIGINT end long-running processes cleanly: the handler only asks the loop to stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def on_stop_signals(stop: Callable[..., Any]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (signal handlers can only be set from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop())
        signal.signal(signal.SIGINT, lambda *_: stop())
