"""Unit tests of the group protocol's resolution (``auto``) and of static membership's setting."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigEntry, ConfigResource, ResourceType  # type: ignore[attr-defined]

from gatestream import group_protocol
from gatestream.group_protocol import REBALANCE_PROTOCOLS, Verdict, broker_offers_consumer_protocol, resolve
from gatestream.settings import IngestSettings


@dataclass
class _Metadata:
    brokers: dict[int, Any]


@dataclass
class FakeAdmin:
    """A broker whose configuration holds ``protocols`` (None: the entry is missing), or
    whose DescribeConfigs fails with ``error``."""

    protocols: str | None = None
    error: KafkaException | None = None
    asked: list[ConfigResource] = field(default_factory=list)

    def list_topics(self, *args: Any, **kwargs: Any) -> _Metadata:
        return _Metadata({3: object(), 1: object()})

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, Future[dict[str, ConfigEntry]]]:
        self.asked += resources
        fut: Future[dict[str, ConfigEntry]] = Future()
        if self.error is not None:
            fut.set_exception(self.error)
        else:
            entries = {"log.retention.hours": ConfigEntry("log.retention.hours", "168")}
            if self.protocols is not None:
                entries[REBALANCE_PROTOCOLS] = ConfigEntry(REBALANCE_PROTOCOLS, self.protocols)
            fut.set_result(entries)
        return {r: fut for r in resources}


DENIED = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Cluster authorization failed"))


@pytest.mark.parametrize(
    ("admin", "offered"),
    [
        (FakeAdmin("classic,consumer,streams"), True),  # Kafka 4.x default
        (FakeAdmin("classic, consumer"), True),
        (FakeAdmin("classic"), False),  # KIP-848 turned off by the operator
        (FakeAdmin(None), None),  # Kafka < 3.7, or a managed service that hides the entry
        (FakeAdmin(error=DENIED), None),  # no DescribeConfigs permission
    ],
)
def test_the_probe_reads_the_brokers_rebalance_protocols(admin: FakeAdmin, offered: bool | None) -> None:
    got, why = broker_offers_consumer_protocol(admin, timeout=1)
    assert got is offered
    assert why  # the log line says why
    assert [(r.restype, r.name) for r in admin.asked] == [(ResourceType.BROKER, "1")]


@dataclass
class SlowThenAnswering(FakeAdmin):
    """A broker that times out ``slow`` times before it answers."""

    slow: int = 0

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, Future[dict[str, ConfigEntry]]]:
        if len(self.asked) < self.slow:
            self.asked += resources
            fut: Future[dict[str, ConfigEntry]] = Future()
            fut.set_exception(KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed while waiting for response")))
            return {r: fut for r in resources}
        return super().describe_configs(resources, **kwargs)


def test_a_slow_broker_is_asked_again_and_a_refusal_is_not() -> None:
    # a loaded machine's broker that answers the third time: the member is not made classic for life
    slow = SlowThenAnswering("classic,consumer", slow=2)
    assert broker_offers_consumer_protocol(slow, timeout=1)[0] is True
    assert len(slow.asked) == 3
    # one that never answers within the attempts: classic, and the reason says it could not ask
    silent = SlowThenAnswering("classic,consumer", slow=5)
    got, why = broker_offers_consumer_protocol(silent, timeout=1, attempts=3)
    assert got is None and "cannot read" in why and len(silent.asked) == 3
    # a refusal is an answer: asked once
    denied = FakeAdmin(error=DENIED)
    assert broker_offers_consumer_protocol(denied, timeout=1, attempts=3)[0] is None
    assert len(denied.asked) == 1


@pytest.mark.parametrize(
    ("verdict", "protocol"),
    [((True, "offered"), "consumer"), ((False, "not offered"), "classic"), ((None, "cannot tell"), "classic")],
)
def test_auto_picks_consumer_only_where_the_broker_says_so(verdict: Verdict, protocol: str) -> None:
    got, why = resolve("auto", lambda: verdict)
    assert got == protocol
    assert verdict[1] in why


@pytest.mark.parametrize("setting", ["classic", "consumer"])
def test_an_explicit_protocol_does_not_ask_the_broker(setting: str) -> None:
    def probe() -> Verdict:
        raise AssertionError("the broker was asked")

    assert resolve(setting, probe)[0] == setting


def test_auto_is_the_default_and_asks_the_broker_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatestream.kafka import consumer_config

    asked: list[str] = []

    def probe(admin: Any, timeout: float = 0) -> Verdict:
        asked.append("x")
        return False, "not offered"

    monkeypatch.setattr(group_protocol, "broker_offers_consumer_protocol", probe)
    monkeypatch.setattr(group_protocol, "_resolved", {})
    settings = IngestSettings(bootstrap_servers="127.0.0.1:1")
    assert settings.group_protocol == "auto"
    for _ in range(3):
        conf = consumer_config(settings, "g")
        assert conf["group.protocol"] == "classic"
        assert "session.timeout.ms" in conf  # the classic-only properties come with the fallback
    assert asked == ["x"]


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_instance_id_reaches_the_client_config(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    from confluent_kafka import Consumer

    from gatestream.kafka import consumer_config

    monkeypatch.setenv("GATESTREAM_GROUP_INSTANCE_ID", "ingest-0")
    conf = consumer_config(IngestSettings(group_protocol=protocol), "g")
    assert conf["group.instance.id"] == "ingest-0"
    Consumer(conf).close()  # librdkafka takes it under either protocol
    monkeypatch.delenv("GATESTREAM_GROUP_INSTANCE_ID")
    assert "group.instance.id" not in consumer_config(IngestSettings(group_protocol=protocol), "g")
