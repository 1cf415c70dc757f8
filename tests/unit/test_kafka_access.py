"""Kafka security on the client side, without a broker: the settings become librdkafka's
configuration (the password only there), and librdkafka's bare errors become one line naming
the principal, the resource and what was refused (gatestream.kafka_access), and the ACL plan."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError
from pydantic import ValidationError

from gatestream.kafka import base_config
from gatestream.kafka_access import connection_refusal, is_authorization_error
from gatestream.kafka_acls import AclSettings, plan
from gatestream.settings import KafkaClientSettings

SECRET = "s3cret-Pa55word-xyz"


def _sasl(**over: Any) -> KafkaClientSettings:
    return KafkaClientSettings(
        **{"kafka_sasl_username": "ingest", "kafka_sasl_password": SECRET, "kafka_ssl_ca_location": "/x/ca.pem", **over}
    )


def test_a_user_name_means_sasl_ssl_with_scram_and_the_password_reaches_librdkafka_only() -> None:
    s = _sasl()
    conf = base_config(s)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("ingest", SECRET)
    assert conf["ssl.ca.location"] == "/x/ca.pem"
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    assert s.kafka_principal == "User:ingest"


def test_a_plain_client_gets_no_security_properties() -> None:
    conf = base_config(KafkaClientSettings())
    assert not any(k.startswith(("security.", "sasl.", "ssl.")) for k in conf)
    assert KafkaClientSettings().kafka_principal == "User:ANONYMOUS"


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"kafka_sasl_password": None}, "go together"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "needs SASL_SSL"),
        ({"kafka_security_protocol": "TLS"}, "security_protocol"),
    ],
)
def test_incomplete_or_contradictory_security_settings_are_refused_at_start(over: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        _sasl(**over)


def test_a_wrong_password_is_named_as_such() -> None:
    line = "sasl_ssl://127.0.0.1:9/bootstrap: SASL authentication error: Authentication failed during authentication"
    refusal = connection_refusal(_sasl(), [KafkaError._AUTHENTICATION], [line])
    assert refusal is not None
    text = str(refusal)
    assert "User:ingest" in text and "authentication" in text and "GATESTREAM_KAFKA_SASL_PASSWORD" in text
    assert SECRET not in text and "\n" not in text


def test_a_plaintext_client_on_a_tls_listener_is_told_to_use_sasl_ssl() -> None:
    line = "127.0.0.1:9/bootstrap: Disconnected: connection closed by peer (after 2ms in state APIVERSION_QUERY)"
    refusal = connection_refusal(KafkaClientSettings(), [KafkaError._TRANSPORT], [line])
    assert refusal is not None and "User:ANONYMOUS" in str(refusal) and "SASL_SSL" in str(refusal)


def test_an_untrusted_certificate_is_a_tls_refusal() -> None:
    line = "ssl://127.0.0.1:9/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
    refusal = connection_refusal(_sasl(), [KafkaError._SSL], [line])
    assert refusal is not None and "TLS handshake" in str(refusal) and "/x/ca.pem" in str(refusal)


def test_a_broker_that_is_away_is_not_a_refusal() -> None:
    line = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)"
    assert connection_refusal(_sasl(), [KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN], [line]) is None


def test_authorization_errors_are_told_apart_from_others() -> None:
    assert is_authorization_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert is_authorization_error(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    assert not is_authorization_error(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert not is_authorization_error(None)


def test_the_acl_plan_gives_each_principal_its_job_and_nothing_else() -> None:
    acls = plan(AclSettings(topic_prefix="p.", dlq_topic="p.dead-letter"))
    by = {(a.principal, a.resource_type, a.name, a.operation) for a in acls}
    assert ("User:gateway", "TOPIC", "p.active_windows", "WRITE") in by
    assert ("User:gateway", "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE") in by
    assert not any(p == "User:gateway" and op == "READ" for p, _, _, op in by)
    assert ("User:ingest", "GROUP", "gatestream-ingest", "READ") in by
    assert ("User:ingest", "TOPIC", "p.dead-letter", "WRITE") in by
    assert not any(p == "User:ingest" and op == "WRITE" and n != "p.dead-letter" for p, _, n, op in by)
    assert {op for p, _, _, op in by if p == "User:exporter"} == {"DESCRIBE"}
    assert not any(a.pattern == "PREFIXED" and a.name == "p." for a in acls)  # topics one by one
    assert len(acls) == len(set(acls))


def test_a_consumer_refused_at_run_time_is_unready_and_counts_it_not_a_dead_letter() -> None:
    from prometheus_client import REGISTRY

    from gatestream.consumers.observe import IngestObserver

    def failures() -> float:
        labels = {"operation": "consume"}
        return REGISTRY.get_sample_value("gatestream_kafka_authorization_failures_total", labels) or 0.0

    obs = IngestObserver("g", {})

    class Parts:
        owned: set[tuple[str, int]] = set()

    assert obs.ready(Parts())[0]  # type: ignore[arg-type]
    before = failures()
    obs.consumer_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed"))
    ok, why = obs.ready(Parts())  # type: ignore[arg-type]
    assert not ok and "ACL" in why
    assert failures() == before + 1
    obs.refused_at = 0.0  # long ago: ready again once refusals stop
    assert obs.ready(Parts())[0]  # type: ignore[arg-type]
