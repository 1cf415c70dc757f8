"""What every command shares: argument types, settings overrides from flags, the ops server."""

from __future__ import annotations

import argparse
from typing import Any

from gatestream.schemas import EventType


def overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def event_types(value: str) -> list[EventType]:
    try:
        return [EventType(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; known types: {', '.join(e.value for e in EventType)}") from exc


def int_list(value: str) -> tuple[int, ...]:
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {value!r}")
    return tuple(int(p) for p in parts)


def offset(value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or int(v) >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an offset (0 to 2^63-1), got {value!r}")
    return int(v)


def rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not value.isascii() or not 0 <= rate < float("inf"):
        raise argparse.ArgumentTypeError(f"expected events per second >= 0 (0 = no limit), got {value!r}")
    return rate


def serve(port: int | None, ready: Any = None) -> Any:
    """Start /metrics, /healthz, /readyz on ``port`` (None: do not serve)."""
    if port is None:
        return None
    from gatestream.httpserver import OpsServer

    return OpsServer(port, ready).start()
