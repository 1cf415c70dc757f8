"""Outages of the services ingest depends on, made with a TCP proxy or a private broker
(the shared services are never touched): a schema registry that refuses or hangs while
events of a schema version the consumer has not met yet arrive, and a broker that dies."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families

from gatestream.producers.events import ActiveWindow
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType, SchemaCatalog
from tests.conftest import Env, PrivateBroker, free_port, gatestream_cmd
from tests.helpers import count_all, count_rows, http_get, publish, wait_for
from tests.proxy import proxied, target_of, via_proxy
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration


def _metric(port: int, name: str, **labels: str) -> float | None:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return None
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _ingest(env: Env, port: int, log: Path, **over: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        gatestream_cmd("ingest", "--metrics-port", str(port), "--batch-ms", "200"),
        env=env.environ(**over),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _log_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _messages_in(bootstrap: str, topic: str) -> int:
    c = Consumer({**kafka_conf(bootstrap), "group.id": "test-watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _windows(n: int, title: str, start: datetime) -> list[ActiveWindow]:
    return [
        ActiveWindow(organization_id=3, users_on_computers_id=9, datetime=start + timedelta(seconds=i), title=title)
        for i in range(n)
    ]


def _v2_serializer(url: str) -> Any:
    """A serializer of a new compatible version (an optional field more), registered directly."""
    v1 = SchemaCatalog().latest(EventType.ACTIVE_WINDOWS).schema
    v2 = {**v1, "fields": [*v1["fields"], {"name": "window_class", "type": ["null", "string"], "default": None}]}
    return AvroSerializer(SchemaRegistryClient({"url": url}), json.dumps(v2), conf={"auto.register.schemas": True})


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["refuse", "hang"])
def test_a_registry_outage_pauses_ingest_and_every_event_of_a_new_version_lands(
    env: Env, tmp_path: Path, outage: str
) -> None:
    """Events of a schema version registered while the registry is away from the
    consumer (refusing connections, or frozen) wait for it: none is dead-lettered; the
    consumer says so (/readyz, a metric, a log line) and a frozen registry times out."""
    url = env.services.schema_registry_url
    if url is None:
        pytest.skip("no schema registry configured")
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    now = datetime.now(UTC).replace(microsecond=0)
    publish(env, tmp_path / "s.sqlite3", _windows(40, "v1", now))  # v1 registered, directly
    port = free_port()
    log = tmp_path / "ingest.log"

    def readyz() -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{port}/readyz")

    with proxied(*target_of(url)) as proxy:
        proc = _ingest(env, port, log, schema_registry_url=via_proxy(url, proxy), schema_registry_timeout_s=2)
        try:
            assert wait_for(lambda: count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 40, 60)
            assert proxy.connections > 0, "the consumer reaches the registry through the proxy"
            proxy.refuse() if outage == "refuse" else proxy.hang()
            # a gateway starts writing a compatible v2, registered in the (shared) registry
            ser = _v2_serializer(url)
            ctx = SerializationContext(topic, MessageField.VALUE)
            raw = Producer(kafka_conf(env.services.bootstrap_servers))
            for e in _windows(60, "v2", now + timedelta(minutes=5)):
                raw.produce(topic, key=b"9", value=ser(e.to_record() | {"window_class": "X"}, ctx))
            assert raw.flush(10) == 0

            assert wait_for(lambda: readyz()[0] == 503, 45), f"not ready while the registry is away: {readyz()}"
            assert "schema registry" in readyz()[1], readyz()
            assert _metric(port, "gatestream_schema_registry_up") == 0
            assert (_metric(port, "gatestream_schema_registry_errors_total") or 0) >= 1
            assert count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 40, "v2 events wait"
            proxy.resume()
            assert wait_for(lambda: count_rows(env.database_url, EventType.ACTIVE_WINDOWS) == 100, 60), (
                "every v2 event lands once the registry answers"
            )
            assert wait_for(lambda: readyz()[0] == 200, 30), readyz()
            assert _metric(port, "gatestream_schema_registry_up") == 1
        finally:
            code = _stop(proc)
    assert code == 0
    assert _messages_in(env.services.bootstrap_servers, env.dlq_topic) == 0, "nothing was dead-lettered"
    lines = _log_lines(log)
    down = [x for x in lines if str(x.get("event", "")).startswith("schema registry unreachable")]
    assert len(down) == 1, down
    if outage == "hang":
        assert "timeout" in down[0]["error"].lower(), "a frozen registry is a time-out, not a hang"
    assert any(str(x.get("event", "")).startswith("schema registry reachable again") for x in lines)


def _client_errors(log: Path) -> list[dict[str, Any]]:
    """librdkafka's warning and error lines in a log."""
    return [x for x in _log_lines(log) if x.get("logger") == "librdkafka" and x.get("level") in ("warning", "error")]


@pytest.mark.slow
def test_a_dead_broker_costs_a_few_log_lines_with_a_count_and_its_reachability_is_a_metric(
    env: Env, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    penv = env.on_broker(private_broker.bootstrap)
    publish(penv, tmp_path / "s1.sqlite3", list(generate(200, Fleet(), list(EventType), seed=41)))
    port, log = free_port(), tmp_path / "ingest.log"
    proc = _ingest(env, port, log, bootstrap_servers=private_broker.bootstrap)

    def up() -> float | None:
        return _metric(port, "gatestream_kafka_broker_up", client="ingest")

    try:
        assert wait_for(lambda: sum(count_all(env.database_url).values()) == 200, 60)
        up_before = up()
        private_broker.kill()
        assert wait_for(lambda: len(_client_errors(log)) > 0, 30), "the consumer reports the broker's absence"
        down = wait_for(lambda: up() == 0, 20)
        private_broker.start()  # a few seconds of a JVM starting: librdkafka retries all along
        publish(penv, tmp_path / "s2.sqlite3", list(generate(200, Fleet(), list(EventType), seed=42)))
        assert wait_for(lambda: sum(count_all(env.database_url).values()) == 400, 90), "ingest resumed"
        up_again = wait_for(lambda: up() == 1, 30)
    finally:
        code = _stop(proc)
    assert code == 0
    errors = _client_errors(log)
    assert len(errors) <= 10, f"{len(errors)} client error lines for one outage: {errors[:3]} ..."
    back = [x for x in _log_lines(log) if str(x.get("event", "")).startswith("broker reachable again after")]
    assert back, "the recovery is logged"  # (a restarting broker may drop a connection or two more: a 2nd line)
    assert back[0]["suppressed"] > 0, "the recovery line counts what was left out"
    assert (up_before, down, up_again) == (1, True, True), "gatestream_kafka_broker_up went 1, 0, 1"
