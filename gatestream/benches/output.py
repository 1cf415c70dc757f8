"""How the dataset benches report: a table on the terminal and the same figures as JSON."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    cells = [list(headers)] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | None, bench: str, command: Sequence[str], figures: dict[str, Any]) -> None:
    """``figures`` with what produced them (bench, command line, machine, time) into ``path``."""
    if not path:
        return
    doc = {
        "bench": bench,
        "command": " ".join(command),
        "machine": {"host": platform.node(), "python": sys.version.split()[0], "platform": platform.platform()},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
    }
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"figures written to {path}")
