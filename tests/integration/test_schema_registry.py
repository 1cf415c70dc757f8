"""The schema registry of the stack (Apicurio Registry's Confluent-compatible API): the
publisher registers through it, consumers resolve ids through it, a compatible change
flows while consumers run, and a breaking change is refused before any event carries it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from gatestream.producers.events import ActiveWindow
from gatestream.schemas import EventType, SchemaCatalog
from tests.conftest import Env, read_topic
from tests.helpers import count_rows, publish, start_ingest_thread, wait_for
from tests.services import kafka_conf

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(env: Env) -> SchemaRegistryClient:
    if env.services.schema_registry_url is None:
        pytest.skip("no schema registry configured (ops/stack starts one; without it the catalog gives the ids)")
    return SchemaRegistryClient({"url": env.services.schema_registry_url})


def _events(n: int, title: str, start: datetime) -> list[ActiveWindow]:
    return [
        ActiveWindow(organization_id=3, users_on_computers_id=9, datetime=start + timedelta(seconds=i), title=title)
        for i in range(n)
    ]


def test_publisher_registers_and_consumers_resolve_through_the_registry(
    env: Env, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    subject = f"{topic}-value"
    now = datetime.now(UTC).replace(microsecond=0)
    publish(env, tmp_path / "s.sqlite3", _events(40, "v1", now))
    latest = registry.get_latest_version(subject)
    assert latest.schema.schema_str is not None and latest.schema_id is not None
    assert json.loads(latest.schema.schema_str) == SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema
    ids = {m.value()[1:5] for m in read_topic(env.services.bootstrap_servers, topic, 40)}
    assert ids == {latest.schema_id.to_bytes(4, "big")}, "events carry the registry's id"
    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=2.0))
    t.join(60)
    assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 40
    assert ing.summary.dead_lettered == 0


def test_a_compatible_change_flows_and_a_breaking_one_is_refused(
    env: Env, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    subject = f"{topic}-value"
    now = datetime.now(UTC).replace(microsecond=0)
    publish(env, tmp_path / "s.sqlite3", _events(100, "v1", now))
    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=6.0))
    assert wait_for(lambda: count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 100, 60)

    v1 = SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema
    # breaking: a new field without a default (old events cannot be read with it)
    breaking = {**v1, "fields": [*v1["fields"], {"name": "window_class", "type": "string"}]}
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert refused.value.http_status_code == 409
    # compatible: the same field, optional with a default; a gateway starts writing it
    v2 = {**v1, "fields": [*v1["fields"], {"name": "window_class", "type": ["null", "string"], "default": None}]}
    ser = AvroSerializer(registry, json.dumps(v2), conf={"auto.register.schemas": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    raw = Producer(kafka_conf(env.services.bootstrap_servers))
    for e in _events(50, "v2", now + timedelta(minutes=5)):
        raw.produce(topic, key=b"9", value=ser(e.to_record() | {"window_class": "Chrome_WidgetWin_1"}, ctx))
    assert raw.flush(10) == 0
    assert registry.get_versions(subject) == [1, 2], "only the compatible version was registered"

    t.join(90)
    assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 150
    assert ing.summary.dead_lettered == 0
    with psycopg.connect(env.database_url) as conn:
        titles: dict[str, int] = dict(
            conn.execute("SELECT title, count(*) FROM monitoring.active_windows GROUP BY 1").fetchall()
        )
    assert titles == {"v1": 100, "v2": 50}
