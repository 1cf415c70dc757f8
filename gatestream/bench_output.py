"""What a ``gatestream bench`` prints and saves: a table on the terminal, and the same
figures as JSON (``--json FILE``) with the machine and the command line that made them."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of values already sorted."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def write_json(path: Path | str | None, bench: str, figures: Mapping[str, Any]) -> None:
    """The figures as JSON (nothing without a path), with the bench's name, the command line
    and the machine; says where they went."""
    if not path:
        return
    doc = {"bench": bench, "command": ["gatestream", *sys.argv[1:]], "machine": machine(), **figures}
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"figures written to {path}")
