"""Backup and restore resume exactly once: the offsets live in the database, so a restored
database knows where its rows stop, and the consumers re-read the rest from Kafka.
``gatestream status`` says when the topics no longer hold what a stored offset points at."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.accounting import offsets_off, read_published, skipped_duplicates
from gatestream.backup import MANIFEST
from gatestream.schemas import EventType
from tests.conftest import Env, gatestream_cmd, run_gatestream
from tests.helpers import count_all, stored_offsets, wait_for
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration


def _ingest(env: Env, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        gatestream_cmd("ingest", "--batch-rows", "200", "--batch-ms", "100"),
        env=env.environ(log_level="debug"),
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _rows(env: Env) -> int:
    return sum(count_all(env.database_url).values())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def _produce(env: Env, spool: Path, count: int, seed: int) -> list[str]:
    return gatestream_cmd("produce", "--count", str(count), "--rate", "500", "--orgs", "2", "--devices", "10",
                          "--seed", str(seed), "--spool-path", str(spool))  # fmt: skip


@pytest.mark.slow
def test_a_backup_taken_mid_stream_restores_and_resumes_to_exactly_n_rows(edition_env: Env, tmp_path: Path) -> None:
    env, during, after = edition_env, 2000, 500
    total, group = during + after, f"{env.prefix}ingest"
    producer = subprocess.Popen(
        _produce(env, tmp_path / "spool.sqlite3", during, seed=1),
        env=env.environ(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    first = _ingest(env, tmp_path / "first.log")
    try:
        assert wait_for(lambda: _rows(env) > during // 4, 60), "ingest made no progress"
        # the backup is taken while events are produced and ingested ...
        t0 = time.monotonic()
        done = run_gatestream(env.environ(), "db", "backup", str(tmp_path / "bk"), "--jobs", "2")
        backup_s = time.monotonic() - t0
        assert done.returncode == 0, done.stderr[-2000:]
        manifest = json.loads((tmp_path / "bk" / MANIFEST).read_text())
        at_backup = sum(manifest["offsets"][group].values())
        out, err = producer.communicate(timeout=60)
        assert producer.returncode == 0, err.decode()[-2000:]
        # ... and producing goes on after it (so the backup lacks at least these, however fast ingest was)
        more = subprocess.run(_produce(env, tmp_path / "spool2.sqlite3", after, seed=2), env=env.environ(),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert more.returncode == 0, more.stderr[-2000:]
        assert wait_for(lambda: _rows(env) >= total, 60), count_all(env.database_url)
    finally:
        producer.kill()
        _stop(first)
    assert 0 < at_backup <= during, "the backup was not taken mid-stream"

    # the database is lost; the backup comes back
    admin = psycopg.conninfo.make_conninfo(env.database_url, dbname="postgres")
    name = str(psycopg.conninfo.conninfo_to_dict(env.database_url)["dbname"])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))
    t0 = time.monotonic()
    done = run_gatestream(env.environ(), "db", "restore", str(tmp_path / "bk"), "--jobs", "2")
    restore_s = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    # rows and offsets came back together, as of the backup's snapshot: the tail is missing from both
    restored = stored_offsets(env.database_url, group)
    assert {f"{t}/{p}": o for (t, p), o in restored.items()} == manifest["offsets"][group]
    assert _rows(env) == at_backup, "the restored rows are not those the restored offsets count"
    # a second restore would write over what is there now: refused, one line, exit 2
    again = run_gatestream(env.environ(), "db", "restore", str(tmp_path / "bk"))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr

    second = _ingest(env, tmp_path / "second.log")
    try:
        assert wait_for(lambda: _rows(env) >= total, 60), count_all(env.database_url)
        published = read_published(env.services.kafka_conf(), [env.topic(et) for et in EventType])
        assert wait_for(lambda: offsets_off(env.database_url, group, published.ends) == 0, 30)
    finally:
        _stop(second)
    assert (published.messages, len(published.ids)) == (total, total), "each event on the topics once"
    assert _rows(env) == total
    # the restarted consumer read exactly the tail after the backup: nothing it wrote was already there
    assert skipped_duplicates([tmp_path / "second.log"]) == 0, "events before the backup were read again"
    print(f"backup {backup_s:.1f} s, restore {restore_s:.1f} s ({at_backup} of {total} events in the backup)")


def test_status_warns_when_retention_deleted_events_not_yet_ingested(env: Env) -> None:
    topic, group = env.topic(EventType.ACTIVE_WINDOWS), f"{env.prefix}ingest"
    p = Producer(kafka_conf(env.services.bootstrap_servers))
    for part, n in ((0, 10), (1, 3)):
        for i in range(n):
            p.produce(topic, value=b"x%d" % i, partition=part)
    assert p.flush(30) == 0
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        for part in (0, 1):
            conn.execute(
                "INSERT INTO gatestream.consumer_offsets (consumer_group, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, 3)",
                (group, topic, part),
            )
    # what retention does to old segments: the partition's start moves past the stored offset
    admin = AdminClient(kafka_conf(env.services.bootstrap_servers))
    for fut in admin.delete_records([TopicPartition(topic, 0, 7)]).values():
        assert fut.result(timeout=30).low_watermark == 7
    done = run_gatestream(env.environ(), "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["topic"], r["partition"]): r for r in json.loads(done.stdout)}
    p0, p1 = rows[(topic, 0)], rows[(topic, 1)]
    assert (p0["stored_offset"], p0["low_watermark"], p0["lost_to_retention"], p0["lag_messages"]) == (3, 7, 4, 3)
    assert (p1["stored_offset"], p1["low_watermark"], p1["lost_to_retention"], p1["lag_messages"]) == (3, 0, 0, 0)
    assert "warning: 4 event(s)" in done.stderr and f"{topic}[0] stored 3 < earliest 7" in done.stderr
    assert f"{topic}[1]" not in done.stderr
    # the table form warns as well; a group whose offsets the topics still hold is not warned about
    table = run_gatestream(env.environ(), "status")
    assert table.returncode == 0 and "deleted by topic retention" in table.stderr
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("UPDATE gatestream.consumer_offsets SET next_offset = 7 WHERE partition = 0")
    fine = run_gatestream(env.environ(), "status")
    assert fine.returncode == 0 and "retention" not in fine.stderr, fine.stderr
