"""The scratch database a dataset bench loads: created fresh and migrated beside the
configured one (``<db>_<suffix>``), dropped afterwards; never the user's data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from gatestream.bench import bench_database, drop_bench_database
from gatestream.database import connect_once
from gatestream.edition import Edition, timescaledb_edition


@contextmanager
def scratch_database(url: str, suffix: str, *, keep: bool = False) -> Iterator[tuple[str, Edition]]:
    """(url, edition) of a fresh, migrated database; dropped on exit unless ``keep``."""
    scratch = bench_database(url, suffix)
    with connect_once(scratch) as conn:
        edition = timescaledb_edition(conn)
    try:
        yield scratch, edition
    finally:
        if keep:
            print(f"scratch database kept: {psycopg.conninfo.conninfo_to_dict(scratch).get('dbname')}")
        else:
            drop_bench_database(scratch)
