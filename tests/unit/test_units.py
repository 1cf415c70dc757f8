"""Unit tests: no broker, no database."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg.types.datetime import DatetimeBinaryDumper
from psycopg.types.uuid import UUIDBinaryDumper

from gatestream.consumers.decoder import DecodeError, Decoder
from gatestream.consumers.pgtypes import MillisTimestamptzBinaryDumper, UuidTextBinaryDumper, strip_logical_types
from gatestream.migrate import discover
from gatestream.producers.events import EVENT_CLASSES, ActiveWindow, GatewayStatusSnapshot
from gatestream.producers.spool import Spool
from gatestream.schemas import EventType, SchemaCatalog, SchemaCatalogError
from gatestream.schemas.catalog import DEFAULT_DIR
from gatestream.schemas.registry import CatalogRegistry
from tests.services import ROOT

NOW = datetime(2026, 11, 23, 12, 30, 15, 123000, tzinfo=UTC)


def _encode(event: ActiveWindow, catalog: SchemaCatalog, topic: str = "t.active_windows") -> bytes:
    ser = AvroSerializer(
        CatalogRegistry(catalog),
        catalog.latest(event.event_type).schema_str,
        conf={"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy},
    )
    out = ser(event.to_record(), SerializationContext(topic, MessageField.VALUE))
    assert isinstance(out, bytes)
    return out


def test_catalog_ids_are_unique_and_every_event_type_has_a_schema() -> None:
    cat = SchemaCatalog()
    ids = [e.schema_id for e in cat.entries()]
    assert len(ids) == len(set(ids))
    assert cat.event_types() == [et.value for et in EventType], "the shipped catalog declares the shipped types"
    assert {cat.latest(et).event_type for et in EventType} == set(EventType)
    for et in EventType:
        names = [f["name"] for f in cat.latest(et).schema["fields"]]
        assert names[:2] == ["event_id", "organization_id"]
        info = cat.info(et)
        assert (info.schema, info.table) == ("monitoring", et.value)
        assert info.key_field == EVENT_CLASSES[et].key_field, "typed events are keyed as the catalog says"


def _catalog_copy(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    d = tmp_path / "s"
    shutil.copytree(DEFAULT_DIR, d, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return d, json.loads((d / "catalog.json").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda idx: idx["event_types"].pop("screenshots"), "'screenshots' is not declared"),
        (lambda idx: idx["event_types"].update(door_events={"table": "monitoring.door_events"}), "without a schema"),
        (lambda idx: idx["event_types"].update({"Bad-Name": {"table": "monitoring.x"}}), "lower-case letters"),
        (lambda idx: idx["event_types"]["screenshots"].update(table="monitoring.x; DROP TABLE y"), "schema.table"),
        (lambda idx: idx["event_types"]["screenshots"].update(key="no_such_field"), "no field 'no_such_field'"),
        # presence declarations: a field the schema lacks, an unknown or missing key, wrong shapes
        (
            lambda idx: idx["event_types"]["screenshots"].update(presence={"agent": "seat"}),
            "no field 'seat', named by presence of screenshots",
        ),
        (
            lambda idx: idx["event_types"]["gateway_status_snapshots"]["presence"]["report"].update(figures=["fan"]),
            "no field 'fan', named by presence of gateway_status_snapshots",
        ),
        (
            lambda idx: idx["event_types"]["screenshots"].update(presence={"agnet": "users_on_computers_id"}),
            "'presence' takes an object with 'organization', 'gateway', 'agent' and 'report'",
        ),
        (
            lambda idx: idx["event_types"]["gateway_status_snapshots"]["presence"].pop("gateway"),
            "a status report names its gateway",
        ),
        (
            lambda idx: idx["event_types"]["screenshots"].update(presence={"agent": ""}),
            "presence.agent names a record field",
        ),
        (
            lambda idx: idx["event_types"]["gateway_status_snapshots"]["presence"]["report"].update(
                error_at={"x": "hi"}
            ),
            "presence.report.error_at maps field names to numbers",
        ),
        (
            lambda idx: idx["event_types"]["gateway_status_snapshots"]["presence"].update(report={"figure": []}),
            "presence.report takes 'figures' and 'error_at'",
        ),
    ],
)
def test_catalog_refuses_an_event_type_it_cannot_route(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    d, index = _catalog_copy(tmp_path)
    change(index)
    (d / "catalog.json").write_text(json.dumps(index))
    with pytest.raises(SchemaCatalogError, match=message):
        SchemaCatalog(d)


def test_unknown_event_type_names_what_the_catalog_has() -> None:
    from gatestream.cli.args import UsageError, catalog_types
    from gatestream.settings import CommonSettings

    with pytest.raises(UsageError, match="unknown event type nope; the schema catalog has: active_windows, "):
        catalog_types(CommonSettings(), ["active_windows", "nope"])
    assert catalog_types(CommonSettings(), None) == [et.value for et in EventType]


def test_catalog_refuses_an_id_whose_content_changed(tmp_path: Path) -> None:
    d, _ = _catalog_copy(tmp_path)
    cat = SchemaCatalog(d)
    path = d / "active_windows.v1.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "x", "type": "int"})
    path.write_text(json.dumps(schema))
    with pytest.raises(SchemaCatalogError, match="append-only"):
        cat.reload()


def test_wire_format_is_magic_byte_catalog_id_then_avro() -> None:
    cat = SchemaCatalog()
    value = _encode(ActiveWindow(organization_id=1, users_on_computers_id=2, datetime=NOW, title="x"), cat)
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == cat.latest(EventType.ACTIVE_WINDOWS).schema_id


def test_decoder_returns_wire_values_for_uuid_and_timestamps() -> None:
    cat = SchemaCatalog()
    ev = ActiveWindow(organization_id=1, users_on_computers_id=2, datetime=NOW, title="Inbox", active_time=5)
    rec = Decoder(CatalogRegistry(cat), cat.latest(EventType.ACTIVE_WINDOWS).schema).decode(_encode(ev, cat))
    assert rec["event_id"] == str(ev.event_id)
    assert rec["datetime"] == int(NOW.timestamp() * 1000)
    assert (rec["title"], rec["active_time"], rec["icon"]) == ("Inbox", 5, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null-value"),
        (b"\x00\x00", "not-wire-format"),
        (b'{"json": true}', "not-wire-format"),
        (b"\x00\x00\x00\x27\x0f\x02\x04", "unknown-schema-id"),
        (b"\x00\x00\x00\x03\xe9\x01", "malformed-avro"),
    ],
)
def test_decoder_names_the_reason_for_bad_input(value: bytes | None, reason: str) -> None:
    cat = SchemaCatalog()
    dec = Decoder(CatalogRegistry(cat), cat.latest(EventType.ACTIVE_WINDOWS).schema)
    with pytest.raises(DecodeError) as exc:
        dec.decode(value)
    assert exc.value.reason == reason


def test_decoder_rejects_trailing_bytes_and_a_schema_of_another_type() -> None:
    cat = SchemaCatalog()
    good = _encode(ActiveWindow(organization_id=1, users_on_computers_id=2, datetime=NOW), cat)
    dec = Decoder(CatalogRegistry(cat), cat.latest(EventType.ACTIVE_WINDOWS).schema)
    with pytest.raises(DecodeError, match="left after the record"):
        dec.decode(good + b"\x00\x00")
    snapshot_id = cat.latest(EventType.GATEWAY_STATUS_SNAPSHOTS).schema_id
    with pytest.raises(DecodeError) as exc:
        dec.decode(b"\x00" + snapshot_id.to_bytes(4, "big") + good[5:])
    assert exc.value.reason == "incompatible-schema"


def test_wire_dumpers_write_what_psycopg_writes_for_uuid_and_datetime() -> None:
    u = uuid.uuid4()
    assert UuidTextBinaryDumper(object).dump(str(u)) == UUIDBinaryDumper(uuid.UUID).dump(u)
    assert UuidTextBinaryDumper(object).dump(u) == UUIDBinaryDumper(uuid.UUID).dump(u)
    millis = int(NOW.timestamp() * 1000)
    expected = DatetimeBinaryDumper(datetime).dump(NOW)
    assert MillisTimestamptzBinaryDumper(object).dump(millis) == expected
    assert MillisTimestamptzBinaryDumper(object).dump(NOW) == expected
    import psycopg

    with pytest.raises(psycopg.DataError, match="invalid UUID"):
        UuidTextBinaryDumper(object).dump("not-a-uuid")


def test_strip_logical_types_keeps_everything_else() -> None:
    schema = SchemaCatalog().latest(EventType.GATEWAY_STATUS_SNAPSHOTS).schema
    stripped = strip_logical_types(schema)
    assert "logicalType" not in json.dumps(stripped)
    assert [f["name"] for f in stripped["fields"]] == [f["name"] for f in schema["fields"]]
    assert "logicalType" in json.dumps(schema), "the original is not modified"


def test_event_key_is_the_device() -> None:
    gw = uuid.uuid4()
    assert ActiveWindow(organization_id=1, users_on_computers_id=42, datetime=NOW).key() == b"42"
    snap = GatewayStatusSnapshot(
        organization_id=1,
        gateway_id=gw,
        timestamp=NOW,
        cpu_usage=1,
        disk_usage=1,
        memory_usage=1,
        queue_depth=0,
        connected_agents=0,
    )
    assert snap.key() == str(gw).encode()


def test_spool_keeps_order_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = Spool(path)
    s.append([("t", b"k", f"v{i}".encode()) for i in range(10)])
    first = s.read_after(0, 4)
    assert [e.value for e in first] == [b"v0", b"v1", b"v2", b"v3"]
    s.delete([first[0].seq, first[2].seq])
    s.close()
    s2 = Spool(path)
    assert s2.depth == 8
    assert [e.value for e in s2.read_after(0, 100)][:3] == [b"v1", b"v3", b"v4"]
    with pytest.raises(ValueError, match="synchronous"):
        Spool(tmp_path / "x.sqlite3", synchronous="sometimes")


def test_migrations_are_ordered_and_numbered() -> None:
    names = [m.name for m in discover()]
    assert names == sorted(names)
    assert all(n[:3].isdigit() and n.endswith(".sql") for n in names)
    assert len({n[:3] for n in names}) == len(names), "two migrations share a number"


def test_cli_help_lists_the_commands_and_bad_flags_get_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatestream import logs
    from gatestream.cli import main  # in-process: a subprocess would import everything again (seconds)

    # structlog stays as it is: configured here, it would write to this test's captured stderr for good
    monkeypatch.setattr(logs, "configure", lambda *a, **kw: None)

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("db", "topics", "produce", "ingest", "show", "bench"):
        assert cmd in out
    with pytest.raises(SystemExit) as done:
        main(["produce", "--types", "clicks"])
    assert done.value.code == 2
    assert "unknown event type clicks; the schema catalog has: active_windows" in capsys.readouterr().err


def test_policy_events_are_validated() -> None:
    from gatestream.consumers.policy.consumer import parse_event

    known = {"active_windows", "visited_sites"}
    assert parse_event(b'{"resource_type": "active_windows", "organization_id": 3}', known) == {
        "resource_type": "active_windows",
        "organization_id": 3,
        "op": "set",
    }
    for bad, why in [
        (b"nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"resource_type": "x; drop"}', "unknown resource_type"),
        (b'{"resource_type": "active_windows", "organization_id": "1 or 1=1"}', "positive integer"),
        (b'{"resource_type": "active_windows", "organization_id": -2}', "positive integer"),
        (b'{"resource_type": "active_windows", "op": "truncate"}', "op must be"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_event(bad, known)


def test_cron_lines_spread_jobs_and_keep_the_interval() -> None:
    from gatestream.consumers.policy.engines import _days, cron_line

    assert cron_line("a", 300) == "*/5 * * * *"
    hourly = cron_line("row-retention:monitoring.active_windows", 3600)
    assert hourly.endswith(" * * * *") and 0 <= int(hourly.split()[0]) < 60
    daily = cron_line("retention:monitoring.active_windows", 86400).split()
    assert daily[2:] == ["*", "*", "*"] and 0 <= int(daily[1]) < 24
    assert cron_line("x", 86400) == cron_line("x", 86400), "stable for a key"
    assert _days("365 days") == 365 and _days("1 day") == 1 and _days("1 year") is None and _days(None) is None


def test_replay_times_parse_iso_and_relative_and_refuse_the_rest() -> None:
    from gatestream.consumers.replay import ReplayError, ReplaySelection, parse_time

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_time("-2h", now) == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert parse_time("-7d", now) == datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
    assert parse_time("-90s", now) == datetime(2026, 11, 23, 11, 58, 30, tzinfo=UTC)
    assert parse_time("now", now) == now
    assert parse_time("2026-11-20T08:30Z") == datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    assert parse_time("2026-11-20 08:30") == datetime(2026, 11, 20, 8, 30, tzinfo=UTC), "naive means UTC"
    with pytest.raises(ReplayError, match="not a usable time"):
        parse_time("yesterday")
    assert parse_time("@1795000000") == datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)
    for ambiguous in ("1795000000", "0"):
        with pytest.raises(ReplayError, match="bare number"):
            parse_time(ambiguous)
    for hostile in ("²", "-99999999999d", "٣h", "-1e9d", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(ReplayError):
            parse_time(hostile)
    from gatestream.consumers.replay import default_name

    types = ("active_windows", "screenshots")
    a = ReplaySelection(types, organizations=frozenset({1, 2}), since=now)
    name = default_name(a.describe())
    assert name == default_name(ReplaySelection(types[::-1], organizations=frozenset({2, 1}), since=now).describe())
    assert name != default_name(ReplaySelection(types, organizations=frozenset({1}), since=now).describe())
    assert ReplaySelection.from_description(a.describe()).describe() == a.describe(), "stored = what it ran"


def test_relative_times_after_from_and_to_are_values_not_options() -> None:
    from gatestream.cli import _join_relative_times, build_parser

    args = build_parser().parse_args(_join_relative_times(["replay", "--from", "-2h", "--to", "-30m", "--dry-run"]))
    assert (args.start, args.end, args.dry_run) == ("-2h", "-30m", True)
    assert _join_relative_times(["replay", "--from", "120", "--orgs", "3"]) == [
        "replay",
        "--from",
        "120",
        "--orgs",
        "3",
    ]


def test_the_kafka_version_is_the_same_in_ops_stack_compose_and_testcontainers() -> None:
    import re

    from tests.services import KAFKA_IMAGE

    pinned = re.search(r"<kafka.version>(.+?)</kafka.version>", (ROOT / "ops/kafka/pom.xml").read_text())
    assert pinned is not None
    compose = re.search(r"image: apache/kafka:(\S+)", (ROOT / "docker-compose.yml").read_text())
    assert compose is not None
    assert compose.group(1) == pinned.group(1) == KAFKA_IMAGE.split(":")[1]


def test_the_timescaledb_version_is_the_same_in_ops_stack_compose_and_testcontainers() -> None:
    """The Community edition compose and testcontainers run is the version ops/stack builds."""
    import re

    from tests.services import TIMESCALEDB_IMAGE

    stack = (ROOT / "ops/stack").read_text()
    pinned = re.search(r"^TSDB_COMMUNITY_VERSION=(\S+)", stack, re.M)
    assert pinned is not None
    compose = re.search(r"image: timescale/timescaledb:(\S+)", (ROOT / "docker-compose.yml").read_text())
    assert compose is not None
    assert compose.group(1) == TIMESCALEDB_IMAGE.split(":")[1] == f"{pinned.group(1)}-pg15"
    assert "archive/refs/tags/$TSDB_COMMUNITY_VERSION.tar.gz" in stack  # the default source is that release


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_consumer_config_is_accepted_by_librdkafka_under_both_group_protocols(protocol: str) -> None:
    from confluent_kafka import Consumer

    from gatestream.kafka import consumer_config
    from gatestream.settings import IngestSettings

    conf = consumer_config(IngestSettings(group_protocol=protocol), "g")
    assert conf["group.protocol"] == protocol
    # librdkafka refuses the classic-only properties under KIP-848: none may be set there
    classic_only = {"session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"}
    assert (classic_only <= conf.keys()) == (protocol == "classic")
    Consumer(conf).close()  # raises KafkaException on a property librdkafka refuses


def test_edition_specific_migrations_go_through_the_same_runner() -> None:
    from gatestream.edition import Edition
    from gatestream.migrate import discover

    common = [m.name for m in discover()]
    community = [m.name for m in discover(edition=Edition.COMMUNITY)]
    apache = [m.name for m in discover(edition=Edition.APACHE)]
    assert discover(edition=Edition.UNKNOWN) == discover()
    for edition in (community, apache):
        assert edition[: len(common)] == common, "the edition's migrations come after the common ones"
    assert community[len(common) :] == [
        "tsl/005_reader_views_before_aggregates.sql",
        "tsl/010_active_windows_daily.sql",
        "tsl/011_dashboard_aggregates.sql",
        "tsl/021_dashboard_rollups.sql",
        "tsl/050_reader_aggregates.sql",
        "tsl/054_policy_jobs.sql",
        "tsl/062_exporter_aggregate_staleness.sql",
    ]
    assert apache[len(common) :] == [
        "apache/011_dashboard_aggregates.sql",
        "apache/020_dashboard_aggregate_indexes.sql",
        "apache/021_dashboard_rollups.sql",
        "apache/050_reader_aggregates.sql",
        "apache/054_policy_cron.sql",
        "apache/055_policy_cron_grants.sql",
    ]


def test_plausibility_refuses_absurd_times_and_ids_and_lets_the_rest_through() -> None:
    from gatestream.consumers.batch import Plausibility

    p = Plausibility(earliest_ms=946_684_800_000, max_future_ms=86_400_000)  # 2000-01-01, one day
    now = 1_795_000_000_000
    ok = {"datetime": now, "organization_id": 1, "users_on_computers_id": 7}
    assert p.problem("datetime", ok, now) is None
    assert p.problem("datetime", {**ok, "datetime": now + 86_400_000}, now) is None, "a day of skew is fine"
    for t in (-2_208_988_800_000, 946_684_799_999, now + 86_400_001, 2**63 - 1):
        problem = p.problem("datetime", {**ok, "datetime": t}, now)
        assert problem is not None and problem[0] == "event-time-out-of-range"
    for field in ("organization_id", "users_on_computers_id"):
        for v in (0, -1, -(2**31)):
            problem = p.problem("datetime", {**ok, field: v}, now)
            assert problem is not None and problem[0] == "invalid-identifier" and field in problem[1]


def test_commands_that_need_a_session_refuse_a_transaction_pooler_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pg_dump/pg_restore (db backup, db restore) and the legacy import keep session state: with
    GATESTREAM_DATABASE_POOLER=transaction each ends at once with exit 2 and one line naming the way out
    (a direct connection), before connecting to anything (the URL here leads nowhere)."""
    from gatestream import logs
    from gatestream.cli import main

    monkeypatch.setattr(logs, "configure", lambda *a, **kw: None)
    monkeypatch.setenv("GATESTREAM_DATABASE_POOLER", "transaction")
    monkeypatch.setenv("GATESTREAM_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    for argv in (
        ["db", "backup", str(tmp_path / "b")],
        ["db", "restore", str(tmp_path / "b")],
        ["import", "--source-url", "postgresql://nobody@127.0.0.1:1/legacy", "--source-table", "t",
         "--target", "active_windows"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert "direct connection" in err and "GATESTREAM_DATABASE_POOLER=none" in err and "\n" not in err, err
