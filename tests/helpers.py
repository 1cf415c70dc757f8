"""Small helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bench.postgres import PrivatePostgres, pg_bindir
from gatestream.schemas import EventType, event_topics

TIME_COLUMN = {et: ("timestamp" if et is EventType.GATEWAY_STATUS_SNAPSHOTS else "datetime") for et in EventType}


def count_rows(db_url: str, event_type: EventType) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM monitoring.{}").format(sql.Identifier(event_type.value))
        ).fetchone()
    return int(row[0]) if row else 0


def count_all(db_url: str) -> dict[EventType, int]:
    return {et: count_rows(db_url, et) for et in EventType}


def stored_offsets(db_url: str, group: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM gatestream.consumer_offsets WHERE consumer_group = %s",
            (group,),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (0 and the error when nothing answers)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_for(predicate: Any, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def start_ingest_thread(settings: Any, **kw: Any) -> tuple[Any, threading.Thread]:
    """An in-process ingest consumer in a thread; returns (ingestor, thread)."""
    from gatestream.consumers.ingest import Ingestor, build_routes

    with psycopg.connect(settings.database_url) as conn:
        routes = build_routes(conn, settings, event_topics(settings))
    ing = Ingestor(settings, routes, **kw)
    t = threading.Thread(target=ing.run, name="ingest", daemon=True)
    t.start()
    return ing, t


def publish(env: Any, spool: Path, events: list[Any]) -> Any:
    from gatestream.producers.publisher import Publisher

    pub = Publisher(env.producer(spool))
    pub.publish_many(events)
    left = pub.close(timeout=30)
    assert left == 0, f"{left} events not delivered"
    return pub


def unschedule_cron_jobs(db_url: str) -> None:
    """pg_cron keeps its jobs in its own database (cron.database_name): remove those made for
    this test's database. Nothing to do where pg_cron is not loaded or not created there."""
    with psycopg.connect(db_url, autocommit=True) as c:
        row = c.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
    if not row or not row[0] or row[0] == row[1]:
        return
    with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, dbname=row[0]), autocommit=True) as cron:
        if cron.execute("SELECT to_regclass('cron.job')").fetchone() != (None,):
            cron.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s", (row[1],))


@contextlib.contextmanager
def private_postgres(major: str | None = None) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own (initdb from the stack's binaries), started, and
    removed afterwards; the test skips where there are no server binaries."""
    bindir = pg_bindir(major)
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (ops/stack install installs them)")
    pg = PrivatePostgres(bindir)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()
