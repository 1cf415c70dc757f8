"""Which TimescaleDB edition a server runs (the one probe everything asks), and which API its version has.

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


def server_description(conn: psycopg.Connection[Any]) -> str:
    """What the server runs, for a person: e.g. "PostgreSQL 15.10, TimescaleDB 2.28.3 (Community edition)"."""
    row = conn.execute(
        "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    pg, ts = (str(row[0]).split()[0], row[1]) if row else ("?", None)
    if ts is None:
        return f"PostgreSQL {pg}, no TimescaleDB in this database"
    edition = timescaledb_edition(conn)
    named = {Edition.COMMUNITY: "Community edition", Edition.APACHE: "Apache edition"}.get(edition, "edition unknown")
    return f"PostgreSQL {pg}, TimescaleDB {ts} ({named})"


def timescaledb_edition(conn: psycopg.Connection[Any]) -> Edition:
    """From the server's ``timescaledb.license`` setting."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    try:
        return Edition(str(row[0])) if row and row[0] else Edition.UNKNOWN
    except ValueError:
        return Edition.UNKNOWN


def timescaledb_has(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether the TimescaleDB extension installed in this database defines a function or
    procedure ``name`` (the API differs between versions: 2.18 added the columnstore names,
    e.g. add_columnstore_policy, beside the compression ones)."""
    row = conn.execute(
        """SELECT EXISTS (
               SELECT 1 FROM pg_proc p
                 JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
                 JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'timescaledb'
                WHERE p.proname = %s)""",
        (name,),
    ).fetchone()
    return bool(row and row[0])
