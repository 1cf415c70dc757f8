"""The scratch database a dataset bench loads: created fresh and migrated beside the
configured one (``<db>_<suffix>``), dropped afterwards; never the user's data. A run with
``keep`` leaves it, and records the dataset it holds, so that a later run with ``reuse``
can measure the same rows again without loading them (100M rows take an hour to load and
aggregate on a 2-core machine)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from gatestream.bench import bench_database, drop_bench_database
from gatestream.benches.dataset import DatasetSpec
from gatestream.database import connect_once
from gatestream.edition import Edition, timescaledb_edition
from gatestream.migrate import migrate


@contextmanager
def scratch_database(
    url: str, suffix: str, *, keep: bool = False, reuse: bool = False
) -> Iterator[tuple[str, Edition]]:
    """(url, edition) of a fresh, migrated database; dropped on exit unless ``keep``. With
    ``reuse``, a scratch database left by an earlier run is kept as it is (and migrated)."""
    scratch = _existing(url, suffix) if reuse else None
    if scratch is not None:
        migrate(scratch)
    else:
        scratch = bench_database(url, suffix)
    with connect_once(scratch) as conn:
        edition = timescaledb_edition(conn)
    try:
        yield scratch, edition
    finally:
        if keep or reuse:
            print(f"scratch database kept: {psycopg.conninfo.conninfo_to_dict(scratch).get('dbname')}")
        else:
            drop_bench_database(scratch)


def _existing(url: str, suffix: str) -> str | None:
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = f"{info.get('dbname') or 'gatestream'}_{suffix}"
    with connect_once(psycopg.conninfo.make_conninfo(url, dbname="postgres")) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return psycopg.conninfo.make_conninfo(url, dbname=name) if found else None


def record_dataset(url: str, spec: DatasetSpec) -> None:
    """Note in the scratch database which dataset it holds (once loaded in full)."""
    with connect_once(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.gatestream_bench_dataset (spec jsonb NOT NULL)")
        conn.execute("TRUNCATE public.gatestream_bench_dataset")
        conn.execute("INSERT INTO public.gatestream_bench_dataset VALUES (%s)", (json.dumps(_as_json(spec)),))


def recorded_dataset(url: str, spec: DatasetSpec) -> DatasetSpec | None:
    """The dataset the scratch database holds, if it is ``spec`` but for the day it ends (a
    dataset loaded yesterday is the same rows); None when it holds another or none."""
    with connect_once(url) as conn:
        if conn.execute("SELECT to_regclass('public.gatestream_bench_dataset')").fetchone() in (None, (None,)):
            return None
        row = conn.execute("SELECT spec FROM public.gatestream_bench_dataset").fetchone()
    if row is None:
        return None
    held: dict[str, Any] = dict(row[0])
    held["end"] = datetime.fromisoformat(held["end"])
    recorded = DatasetSpec(**held)
    return recorded if dataclasses.replace(recorded, end=spec.end) == spec else None


def _as_json(spec: DatasetSpec) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(spec).items()}
