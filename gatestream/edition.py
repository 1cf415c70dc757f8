"""Which TimescaleDB edition a server runs: the one probe everything asks.

The Apache-2 edition (Debian's package, the local stack) has hypertables and chunks; the
Community edition (TSL) adds compression, continuous aggregates and the jobs API.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import psycopg


class Edition(StrEnum):
    APACHE = "apache"
    COMMUNITY = "timescale"  # the license setting's value for the Community (TSL) edition
    UNKNOWN = "unknown"  # no TimescaleDB loaded


def timescaledb_edition(conn: psycopg.Connection[Any]) -> Edition:
    """From the server's ``timescaledb.license`` setting."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    try:
        return Edition(str(row[0])) if row and row[0] else Edition.UNKNOWN
    except ValueError:
        return Edition.UNKNOWN
