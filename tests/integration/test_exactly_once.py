"""Exactly-once effect: offsets commit with the rows, members that lose partitions are fenced."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.accounting import read_published, skipped_duplicates
from gatestream.consumers.batch_writer import BatchWriter, TableBatch
from gatestream.consumers.offsets import FencedError, OffsetStore
from gatestream.consumers.tables import describe_table
from gatestream.schemas import EventType, SchemaCatalog
from tests.conftest import Env, gatestream_cmd
from tests.helpers import count_all, stored_offsets, wait_for
from tests.services import ROOT

pytestmark = pytest.mark.integration


def _aw_rows(n: int, org: int = 1) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    return [(uuid.uuid4(), org, 5, now, "t", "p.exe", None, 1) for _ in range(n)]


def test_a_member_that_lost_the_partition_cannot_commit(db_url: str) -> None:
    fields = [f["name"] for f in SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema["fields"]]
    tp = ("topic-x", 0)
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        spec = describe_table(a, "monitoring", "active_windows", fields)
        assert spec.columns == (
            "event_id",
            "organization_id",
            "users_on_computers_id",
            "datetime",
            "title",
            "process_name",
            "icon",
            "active_time",
        )
        # two members of one group, each with the offset store every consumer uses
        sa, sb = OffsetStore("grp", db_url), OffsetStore("grp", db_url)
        wa, wb = BatchWriter(a), BatchWriter(b)

        def batch(writer: BatchWriter, conn: psycopg.Connection[Any], store: OffsetStore, n: int) -> None:
            moves = store.moves({tp: (store.expected[tp] or 0) + n})
            writer.write([TableBatch(spec, _aw_rows(n), [None] * n)], lambda _r: store.advance(conn, moves))
            store.advanced(moves)

        # both members think the partition is theirs from the start (no stored offset yet)
        assert sa.claim([tp]) == sb.claim([tp]) == {tp: None}
        batch(wb, b, sb, 10)
        with pytest.raises(FencedError) as exc:
            batch(wa, a, sa, 7)
        assert exc.value.partitions == [tp]
        # the fenced member's rows rolled back with its offsets
        assert a.execute("SELECT count(*) FROM monitoring.active_windows").fetchone() == (10,)
        assert sa.read([tp]) == {tp: 10} and sa.expected == {tp: None}
        # a member continuing from a stale stored offset is fenced too
        assert sa.reload([tp]) == {tp: 10}
        batch(wb, b, sb, 5)
        with pytest.raises(FencedError):
            batch(wa, a, sa, 3)
        # and one continuing from the stored offset commits
        assert sa.reload([tp]) == {tp: 15}
        batch(wa, a, sa, 3)
        assert a.execute("SELECT count(*) FROM monitoring.active_windows").fetchone() == (18,)
        assert sb.read([tp]) == {tp: 18} and sa.expected == {tp: 18}
        sa.close()
        sb.close()


def _start_consumer(env: Env, logdir: Path, name: str, protocol: str) -> subprocess.Popen[bytes]:
    log = (logdir / f"{name}.log").open("ab")
    return subprocess.Popen(
        gatestream_cmd("ingest", "--batch-rows", "300", "--batch-ms", "200"),
        env=env.environ(log_level="debug", group_protocol=protocol),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _partitions_assigned(log: Path) -> int:
    """How many partitions a member's JSON log says it was assigned, over the run."""
    n = 0
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # not one of gatestream's log lines
        if isinstance(entry, dict) and entry.get("event") == "partitions assigned":
            n += sum(len(parts) for parts in entry.get("partitions", {}).values())
    return n


@pytest.mark.slow
def test_kill_9_and_scale_out_mid_stream_gives_exactly_n_rows(env: Env, tmp_path: Path, group_protocol: str) -> None:
    per_type = 3000
    total = per_type * len(EventType)
    # Several gateways publish continuously (~7 s) while consumers come and go.
    producer = subprocess.Popen(
        gatestream_cmd(
            "produce",
            "--count",
            str(total),
            "--rate",
            "2000",
            "--orgs",
            "4",
            "--devices",
            "25",
            "--gateways",
            "3",
            "--spool-path",
            str(tmp_path / "spool.sqlite3"),
        ),
        env=env.environ(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    consumers = {
        "a": _start_consumer(env, tmp_path, "a", group_protocol),
        "b": _start_consumer(env, tmp_path, "b", group_protocol),
    }
    try:
        assert wait_for(lambda: sum(count_all(env.database_url).values()) > total // 5, 60), "no progress"
        consumers["a"].send_signal(signal.SIGKILL)  # no goodbye: its partitions move after the session timeout
        consumers["a"].wait(10)
        consumers["a2"] = _start_consumer(env, tmp_path, "a2", group_protocol)
        assert wait_for(lambda: sum(count_all(env.database_url).values()) > total // 2, 60), "stalled after kill"
        consumers["c"] = _start_consumer(env, tmp_path, "c", group_protocol)  # scale out during the run
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err.decode()[-2000:]
        assert json.loads(out.decode().strip().splitlines()[-1])["delivered"] == total
        assert wait_for(lambda: sum(count_all(env.database_url).values()) >= total, 90), count_all(env.database_url)
        # rows commit with their offsets: once every offset is stored, no batch is left to land (doubled or not)
        assert wait_for(lambda: sum(stored_offsets(env.database_url, f"{env.prefix}ingest").values()) >= total, 30)
        assert wait_for(lambda: _partitions_assigned(tmp_path / "c.log") > 0, 60), (
            "the member added mid-run never took a partition"
        )
        assert count_all(env.database_url) == {et: per_type for et in EventType}
        published = read_published(env.services.kafka_conf(), [env.topic(et) for et in EventType])
        assert (published.messages, len(published.ids)) == (total, total), "each event on the topics once"
        ends = {tp: end for tp, end in published.ends.items() if end > 0}
        assert stored_offsets(env.database_url, f"{env.prefix}ingest") == ends, "stored offsets = end offsets"
    finally:
        for p in consumers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in consumers.items():
            if name != "a":
                assert p.wait(30) == 0, f"consumer {name} did not exit cleanly on SIGTERM"
        if producer.poll() is None:
            producer.kill()
    # No batch was ever written twice: ingest's duplicates counter stayed 0 in every member.
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in consumers)
    assert skipped_duplicates(tmp_path / f"{n}.log" for n in consumers) == 0, "a batch was read again"
    assert '"batch committed"' in logs


def test_migrations_apply_once_and_each_file_is_idempotent(db_url: str) -> None:
    from gatestream.migrate import discover, migrate

    assert migrate(db_url) == []  # the fixture applied them all already
    with psycopg.connect(db_url, autocommit=True) as conn:
        for m in discover():
            conn.execute(m.sql.encode())  # running a file again changes nothing and does not fail
        dims = conn.execute(
            "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = 'monitoring' ORDER BY 1"
        ).fetchall()
    assert {d[0] for d in dims} == {et.value for et in EventType}
    assert all(str(d[2]) == "1 day, 0:00:00" for d in dims)


def test_batches_commit_asynchronously_and_leave_the_server_default_alone(db_url: str) -> None:
    fields = [f["name"] for f in SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema["fields"]]
    with psycopg.connect(db_url, autocommit=True) as conn:
        spec = describe_table(conn, "monitoring", "active_windows", fields)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",), "the server default is durable"
        seen: list[object] = []
        for async_commit in (True, False):
            writer = BatchWriter(conn, async_commit=async_commit)
            writer.write(
                [TableBatch(spec, _aw_rows(2), [None] * 2)],
                lambda _r: seen.append(conn.execute("SHOW synchronous_commit").fetchone()),
            )
        assert seen == [("off",), ("on",)]
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",), "SET LOCAL ends with the batch"
