"""End to end against the real broker and TimescaleDB: publish -> ingest -> hypertables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from gatestream.producers.events import ActiveWindow, GatewayStatusSnapshot
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType, SchemaCatalog
from gatestream.schemas.catalog import DEFAULT_DIR
from gatestream.schemas.registry import CatalogRegistry
from tests.conftest import Env, read_topic
from tests.helpers import count_all, count_rows, publish, start_ingest_thread, stored_offsets, wait_for
from tests.services import kafka_conf

pytestmark = pytest.mark.integration


def test_every_event_type_lands_once_with_its_values(env: Env, tmp_path: Path) -> None:
    per_type = 600
    events = list(generate(per_type * len(EventType), Fleet(orgs=3, devices_per_org=10), list(EventType), seed=3))
    publish(env, tmp_path / "spool.sqlite3", events)

    settings = env.ingest(stop_after_idle_s=2.0, batch_max_rows=500)
    ing, t = start_ingest_thread(settings)
    t.join(90)
    assert not t.is_alive(), "ingest did not go idle"

    assert count_all(env.database_url) == {et: per_type for et in EventType}
    assert ing.summary.duplicates == 0 and ing.summary.dead_lettered == 0
    # the stored offsets cover exactly the events published, per topic
    offs = stored_offsets(env.database_url, settings.group_id)
    for et in EventType:
        assert sum(o for (topic, _), o in offs.items() if topic == env.topic(et)) == per_type
    # a row carries the event's values
    aw = next(e for e in events if isinstance(e, ActiveWindow))
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute(
            "SELECT organization_id, users_on_computers_id, datetime, title, process_name, active_time "
            "FROM monitoring.active_windows WHERE event_id = %s",
            (aw.event_id,),
        ).fetchone()
    assert row == (aw.organization_id, aw.users_on_computers_id, aw.datetime, aw.title, aw.process_name, aw.active_time)


def test_poison_events_go_to_dead_letter_and_the_rest_arrive(env: Env, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    gw = uuid.uuid4()
    good = [
        GatewayStatusSnapshot(
            organization_id=1,
            gateway_id=gw,
            timestamp=now - timedelta(seconds=i),
            cpu_usage=10.0,
            disk_usage=20.0,
            memory_usage=30.0,
            queue_depth=i,
            connected_agents=5,
        )
        for i in range(200)
    ]
    # valid Avro, but the database refuses it (cpu_usage must be 0..100)
    refused = GatewayStatusSnapshot(
        organization_id=1,
        gateway_id=gw,
        timestamp=now,
        cpu_usage=250.0,
        disk_usage=20.0,
        memory_usage=30.0,
        queue_depth=1,
        connected_agents=1,
    )
    publish(env, tmp_path / "spool.sqlite3", good[:100] + [refused] + good[100:])

    topic = env.topic(EventType.GATEWAY_STATUS_SNAPSHOTS)
    # the schema id the good events were written with (the catalog's, or the registry's)
    schema_id = read_topic(env.services.bootstrap_servers, topic, expected=1, timeout=10)[0].value()[1:5]
    raw = Producer(kafka_conf(env.services.bootstrap_servers))
    key = str(gw).encode()
    raw.produce(topic, key=key, value=b"plain text, not Avro")  # not wire format
    raw.produce(topic, key=key, value=b"\x00\x7f\xff\xff\xf0" + b"\x02\x04")  # unknown schema id
    raw.produce(topic, key=key, value=b"\x00" + schema_id + b"\x01")  # truncated Avro body
    raw.produce(topic, key=key, value=None)  # tombstone
    assert raw.flush(10) == 0

    settings = env.ingest(stop_after_idle_s=2.0, batch_max_rows=50)
    ing, t = start_ingest_thread(settings)
    t.join(90)
    assert not t.is_alive()

    assert count_rows(env.database_url, EventType.GATEWAY_STATUS_SNAPSHOTS) == 200
    dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=5, timeout=20)
    reasons = sorted(dict(m.headers())["gatestream.reason"].decode() for m in dead)
    assert reasons == sorted(
        ["rejected-by-database", "not-wire-format", "unknown-schema-id", "malformed-avro", "null-value"]
    )
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["gatestream.source.topic"] == topic
        assert h["gatestream.error"]
        assert int(h["gatestream.source.offset"]) >= 0
    refused_dl = next(m for m in dead if dict(m.headers())["gatestream.reason"] == b"rejected-by-database")
    assert b"cpu_usage" in dict(refused_dl.headers())["gatestream.error"]
    # headers in the manner of Kafka Connect's: exception class, SQLSTATE, group, time
    h = {k: v.decode() for k, v in refused_dl.headers()}
    assert (h["gatestream.sqlstate"], h["gatestream.exception.class"]) == ("23514", "psycopg.errors.CheckViolation")
    assert h["gatestream.consumer_group"] == settings.group_id and h["gatestream.dead_lettered_at"].endswith("+00:00")
    malformed = next(m for m in dead if dict(m.headers())["gatestream.reason"] == b"malformed-avro")
    assert dict(malformed.headers())["gatestream.exception.class"] not in (b"", b"DecodeError")
    # the partitions moved past the poison: stored offsets cover all 205 messages
    assert sum(stored_offsets(env.database_url, settings.group_id).values()) == 205
    assert ing.summary.dead_lettered == 5


def _catalog_with_v2(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    cat_dir = tmp_path / "schemas"
    shutil.copytree(DEFAULT_DIR, cat_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    v1 = json.loads((cat_dir / "active_windows.v1.avsc").read_text())
    v2 = dict(v1)
    v2["fields"] = [
        *v1["fields"],
        {"name": "window_class", "type": ["null", "string"], "default": None, "doc": "Added in v2."},
    ]
    return cat_dir, v2


def test_backward_compatible_schema_change_flows_without_restarting_consumers(env: Env, tmp_path: Path) -> None:
    cat_dir, v2 = _catalog_with_v2(tmp_path)
    env.extra["schema_dir"] = cat_dir
    env.extra["schema_registry_url"] = None  # the catalog's way; test_schema_registry does the registry's
    now = datetime.now(UTC).replace(microsecond=0)
    v1_events = [
        ActiveWindow(organization_id=2, users_on_computers_id=7, datetime=now - timedelta(seconds=i), title="v1")
        for i in range(100)
    ]
    publish(env, tmp_path / "spool.sqlite3", v1_events)

    settings = env.ingest(stop_after_idle_s=6.0)
    ing, t = start_ingest_thread(settings)
    assert wait_for(lambda: count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 100, 60)

    # A gateway upgrades: the new version is added to the catalog (append-only) and used
    # at once, while the consumer keeps running with its v1 reader schema.
    (cat_dir / "active_windows.v2.avsc").write_text(json.dumps(v2))
    index = json.loads((cat_dir / "catalog.json").read_text())
    index["schemas"].append(
        {"id": 1006, "event_type": "active_windows", "version": 2, "file": "active_windows.v2.avsc"}
    )
    (cat_dir / "catalog.json").write_text(json.dumps(index))
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    ser = AvroSerializer(
        CatalogRegistry(SchemaCatalog(cat_dir)),
        json.dumps(v2),
        conf={"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy},
    )
    raw = Producer(kafka_conf(env.services.bootstrap_servers))
    ctx = SerializationContext(topic, MessageField.VALUE)
    for i in range(50):
        rec = ActiveWindow(
            organization_id=2, users_on_computers_id=7, datetime=now + timedelta(seconds=i), title="v2"
        ).to_record() | {"window_class": "Chrome_WidgetWin_1"}
        value = ser(rec, ctx)
        assert value is not None and value[1:5] == (1006).to_bytes(4, "big")
        raw.produce(topic, key=b"7", value=value)
    assert raw.flush(10) == 0

    t.join(90)
    assert not t.is_alive()
    assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 150
    assert ing.summary.dead_lettered == 0
    with psycopg.connect(env.database_url) as conn:
        titles: dict[str, int] = dict(
            conn.execute("SELECT title, count(*) FROM monitoring.active_windows GROUP BY 1").fetchall()
        )
    assert titles == {"v1": 100, "v2": 50}


def test_a_row_no_encoder_can_write_is_isolated_as_internal_error(env: Env) -> None:
    """Whatever fails on a row's way into the COPY (here a timestamp the binary encoding
    cannot hold: struct.error in the dumper) is isolated by halving, like a refusal."""
    from gatestream.consumers.batch_writer import BatchWriter, TableBatch
    from gatestream.consumers.tables import describe_table

    fields = [f["name"] for f in SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema["fields"]]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        spec = describe_table(conn, "monitoring", "active_windows", fields)
        rows = [(str(uuid.uuid4()), 1, 5, now_ms, "t", "p.exe", None, 1) for _ in range(9)]
        rows[4] = (str(uuid.uuid4()), 1, 5, 2**63 - 1, "t", "p.exe", None, 1)
        result = BatchWriter(conn).write([TableBatch(spec, rows, list(range(9)))])
        assert result.inserted == 8
        assert [(r.origin, r.reason) for r in result.rejected] == [(4, "internal-error")]
        assert "struct.error: " in result.rejected[0].detail, "the exception's class is named"


def test_valid_avro_that_cannot_be_stored_is_dead_lettered_and_ingest_keeps_going(env: Env, tmp_path: Path) -> None:
    """Events fastavro writes and reads without complaint, but that cannot reach the table:
    a timestamp-millis at the ends of the long range (it overflows PostgreSQL's timestamp
    encoding on the way into the binary COPY), and an event too large to be dead-lettered
    with its headers. Each used to end the process and stall its partition for good."""
    import io

    from fastavro import parse_schema, schemaless_writer

    from gatestream.consumers.pgtypes import strip_logical_types
    from gatestream.producers.events import VisitedSite

    now = datetime.now(UTC).replace(microsecond=0)
    topic = env.topic(EventType.VISITED_SITES)
    good = [
        VisitedSite(organization_id=1, users_on_computers_id=4, datetime=now, url=f"https://e/{i}") for i in range(60)
    ]
    publish(env, tmp_path / "spool.sqlite3", good[:30])
    header: bytes = read_topic(env.services.bootstrap_servers, topic, expected=1, timeout=10)[0].value()[:5]
    # the same bytes as with the logical types; without them, any long can be written
    schema = parse_schema(strip_logical_types(SchemaCatalog().latest(EventType.VISITED_SITES).schema))

    def framed(**over: object) -> bytes:
        rec = {
            "event_id": str(uuid.uuid4()), "organization_id": 1, "users_on_computers_id": 4,
            "datetime": int(now.timestamp() * 1000), "url": "https://e/x", "title": None, "browser": None,
            "duration": None, **over,
        }  # fmt: skip
        buf = io.BytesIO()
        schemaless_writer(buf, schema, rec)
        return header + buf.getvalue()

    raw = Producer({**kafka_conf(env.services.bootstrap_servers), "partitioner": "murmur2_random"})
    poison = [
        framed(datetime=2**63 - 1),
        framed(datetime=-(2**63)),
        framed(url="\x00" + "x" * 999_800),  # refused by the database, and too large to dead-letter whole
    ]
    for value in poison:
        raw.produce(topic, key=b"4", value=value)
    assert raw.flush(10) == 0
    publish(env, tmp_path / "spool2.sqlite3", good[30:])

    settings = env.ingest(stop_after_idle_s=2.0, batch_max_rows=20)
    ing, t = start_ingest_thread(settings)
    t.join(90)
    assert not t.is_alive()
    assert count_rows(env.database_url, EventType.VISITED_SITES) == 60, "the good events around them all landed"
    dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=3, timeout=20)
    by_reason = sorted(dict(m.headers())["gatestream.reason"].decode() for m in dead)
    # the plausibility window refuses the extreme times first (the writer's own isolation of
    # an unencodable row is shown by test_a_row_no_encoder_can_write_is_isolated_as_internal_error)
    assert by_reason == ["event-time-out-of-range", "event-time-out-of-range", "rejected-by-database"]
    big = next(m for m in dead if dict(m.headers())["gatestream.reason"] == b"rejected-by-database")
    assert big.value() is None and int(dict(big.headers())["gatestream.value_omitted"]) > 999_800
    assert sum(stored_offsets(env.database_url, settings.group_id).values()) == 63
    assert ing.summary.dead_lettered == 3


def test_values_a_database_should_not_keep_are_dead_lettered_with_their_reason(env: Env, tmp_path: Path) -> None:
    """Event times before the earliest accepted time (default 2000-01-01) or more than a
    day ahead, and organization or device ids of 0 or below: valid Avro, refused before
    the COPY, with a reason; the database refuses such ids by itself too."""
    import io

    from fastavro import parse_schema, schemaless_writer

    from gatestream.consumers.pgtypes import strip_logical_types
    from gatestream.producers.events import VisitedSite

    now = datetime.now(UTC).replace(microsecond=0)
    topic = env.topic(EventType.VISITED_SITES)
    good = [
        VisitedSite(organization_id=1, users_on_computers_id=4, datetime=now, url=f"https://e/{i}") for i in range(20)
    ]
    publish(env, tmp_path / "spool.sqlite3", good)
    header: bytes = read_topic(env.services.bootstrap_servers, topic, expected=1, timeout=10)[0].value()[:5]
    schema = parse_schema(strip_logical_types(SchemaCatalog().latest(EventType.VISITED_SITES).schema))
    now_ms = int(now.timestamp() * 1000)

    def framed(**over: object) -> bytes:
        rec = {
            "event_id": str(uuid.uuid4()), "organization_id": 1, "users_on_computers_id": 4, "datetime": now_ms,
            "url": "https://e/x", "title": None, "browser": None, "duration": None, **over,
        }  # fmt: skip
        buf = io.BytesIO()
        schemaless_writer(buf, schema, rec)
        return header + buf.getvalue()

    bad = {
        "event-time-out-of-range": [
            framed(datetime=int(datetime(1901, 1, 1, tzinfo=UTC).timestamp() * 1000)),
            framed(datetime=253402300799000),  # 9999-12-31T23:59:59Z
            framed(datetime=now_ms + 2 * 86_400_000),  # two days ahead
        ],
        "invalid-identifier": [framed(organization_id=0), framed(users_on_computers_id=-1)],
    }
    raw = Producer({**kafka_conf(env.services.bootstrap_servers), "partitioner": "murmur2_random"})
    for values in bad.values():
        for value in values:
            raw.produce(topic, key=b"4", value=value)
    assert raw.flush(10) == 0

    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=2.0))
    t.join(60)
    assert count_rows(env.database_url, EventType.VISITED_SITES) == 20
    dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=5, timeout=20)
    reasons = sorted(dict(m.headers())["gatestream.reason"].decode() for m in dead)
    assert reasons == ["event-time-out-of-range"] * 3 + ["invalid-identifier"] * 2
    assert ing.summary.dead_lettered == 5
    # what is stored stays readable by our own tools
    shown = subprocess.run(
        [sys.executable, "-m", "gatestream", "show"], env=env.environ(), capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    # and the database refuses such identifiers from any writer
    with psycopg.connect(env.database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO monitoring.visited_sites (event_id, organization_id, users_on_computers_id, datetime, url) "
            "VALUES (gen_random_uuid(), 0, 1, now(), 'x')"
        )


@pytest.mark.slow
def test_dead_letters_can_be_counted_shown_and_redriven_once_the_cause_is_fixed(env: Env, tmp_path: Path) -> None:
    """Events two days ahead are refused (the default window allows one day) with a reason
    in times a person reads that names the setting; the operator widens the window and
    redrives them: each is published once however often redriven (again only when asked),
    and the summary tells pending from redriven."""
    now = datetime.now(UTC).replace(microsecond=0)
    ahead = [
        ActiveWindow(organization_id=5, users_on_computers_id=9, datetime=now + timedelta(days=2, seconds=i), title="a")
        for i in range(30)
    ]
    publish(env, tmp_path / "spool.sqlite3", ahead)
    first = subprocess.run(
        [sys.executable, "-m", "gatestream", "ingest", "--stop-after-idle", "2"], env=env.environ(),
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert first.returncode == 0 and count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 0
    logged = [json.loads(line) for line in first.stderr.splitlines() if '"event dead-lettered"' in line]
    assert logged and all(e["reason"] == "event-time-out-of-range" and "offset" in e for e in logged)

    def gs(*args: str, **over: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatestream", *args], env=env.environ(**over), capture_output=True, text=True,
            timeout=90,
        )  # fmt: skip

    topic = env.topic(EventType.ACTIVE_WINDOWS)

    def on_topic() -> int:
        """Messages on the source topic: the 30 published, plus every redriven copy."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**kafka_conf(env.services.bootstrap_servers), "group.id": f"count-{uuid.uuid4()}"})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts]
        finally:
            c.close()
        return sum(high - low for low, high in marks)

    def summary() -> list[dict[str, object]]:
        out = gs("dlq", "summary", "--json")
        assert out.returncode == 0, out.stderr[-1000:]
        return list(json.loads(out.stdout))

    pending = {"reason": "event-time-out-of-range", "source_topic": topic, "count": 30}
    assert summary() == [{**pending, "pending": 30, "redriven": 0}]
    shown = [json.loads(line) for line in gs("dlq", "show", "--limit", "5").stdout.splitlines()]
    assert len(shown) == 5 and all(s["event"]["organization_id"] == 5 for s in shown), "decoded where possible"
    for s in shown:  # times a person reads: the event's own, and in the reason
        assert datetime.fromisoformat(s["event"]["datetime"]) >= now + timedelta(days=2), s
        assert datetime.fromisoformat(s["source_timestamp"]) <= datetime.now(UTC), s
        assert s["event"]["datetime"] in s["error"] and "GATESTREAM_MAX_FUTURE_SKEW_S" in s["error"], s["error"]
        assert s["redriven_at"] is None
    assert gs("dlq", "redrive").returncode == 2, "redrive needs a choice"
    assert on_topic() == 30
    # the cause fixed: a window of three days
    wide = {"max_future_skew_s": 3 * 86400}
    for published, total in ((30, 60), (0, 60)):  # a second redrive publishes nothing more
        out = gs("dlq", "redrive", "--reason", "event-time-out-of-range")
        assert out.returncode == 0, out.stderr[-1000:]
        assert json.loads(out.stdout) == {
            "published": published, "skipped": 0, "already_redriven": 30 - published, "duplicates": 0
        }  # fmt: skip
        assert on_topic() == total
        done = gs("ingest", "--stop-after-idle", "2", **wide)
        assert done.returncode == 0, done.stderr[-2000:]
        assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 30
        assert summary() == [{**pending, "pending": 0, "redriven": 30}]
    shown = [json.loads(line) for line in gs("dlq", "show", "--limit", "1").stdout.splitlines()]
    assert datetime.fromisoformat(shown[0]["redriven_at"]) <= datetime.now(UTC)
    # asked to, it publishes them again; event_id keeps the rows exact
    out = gs("dlq", "redrive", "--reason", "event-time-out-of-range", "--again")
    assert out.returncode == 0 and json.loads(out.stdout)["published"] == 30, out.stderr[-1000:]
    assert on_topic() == 90
    assert gs("ingest", "--stop-after-idle", "2", **wide).returncode == 0
    assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 30
