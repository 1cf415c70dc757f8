"""What every command shares: argument types, settings overrides from flags, the ops server."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from pydantic import ValidationError

from gatestream.schemas import SchemaCatalogError, catalog_of
from gatestream.settings import CommonSettings


class UsageError(Exception):
    """A command's arguments cannot work (e.g. an event type the catalog does not have): exit 2."""


def overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def event_types(value: str) -> list[str]:
    """``--types``: comma-separated names, checked against the catalog by ``catalog_types``."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no event type given")
    return names


def catalog_types(settings: CommonSettings, names: list[str] | None) -> list[str]:
    """``names`` (None: all) checked against the schema catalog the settings name."""
    known = catalog_of(settings).event_types()
    if names is None:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown event type {', '.join(unknown)}; the schema catalog has: {', '.join(known)}")
    return names


@functools.cache
def _known_types() -> str:
    """The catalog's event types for help texts, read once per process."""
    try:
        return ", ".join(catalog_of(CommonSettings()).event_types())
    except (ValidationError, SchemaCatalogError):
        return "those of the schema catalog"


def types_help(what: str) -> str:
    """``--types`` help naming the catalog's event types (GATESTREAM_SCHEMA_DIR's, else the shipped)."""
    return f"comma-separated event types to {what} (default: all): {_known_types()}"


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
