"""Kafka with SASL_SSL, SCRAM users and ACLs (ops/kafka/broker --secure, the stack's default):
each principal does its job and is refused one step outside it; a wrong password, a plaintext
client and a missing ACL each end in one line naming the principal, the resource and the
refusal, with exit 2; an ACL missing at run time keeps the events (spool) and counts it; no
password ever reaches a log.

The broker is the session's own secured node (one JVM, started once for the file's tests:
they share an xdist group); the database is the stack's, as in every test."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bench.brokers import PrivateBroker
from gatestream.kafka_access import KafkaNeeds, KafkaRefused, probe
from gatestream.kafka_acls import PRINCIPALS, AclSettings, ensure
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType, event_topics
from gatestream.settings import ProducerSettings
from gatestream.topics import ensure_topics
from tests.conftest import Env, run_gatestream
from tests.helpers import count_all

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("secure-broker")]


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    if shutil.which("java") is None:
        pytest.skip("no Java on PATH: ops/stack install (or ops/test) installs Java 17 and Kafka's jars")
    b = PrivateBroker(tmp_path_factory.mktemp("secure-kafka") / "kafka", users=PRINCIPALS)
    b.start()
    yield b
    b.kill()


class Runs:
    """Every gatestream process the test ran as some user, to grep their output for secrets."""

    def __init__(self, env: Env, broker: PrivateBroker) -> None:
        self.env, self.broker = env, broker
        self.outputs: list[str] = []

    def environ(self, user: str | None, **over: Any) -> dict[str, str]:
        policy = {"policy_topic": f"{self.env.prefix}policy-changes"}  # the test's own, as its other topics
        return self.env.environ(**{**self.broker.settings(user), **policy, **over})

    def run(self, user: str | None, *args: str, **over: Any) -> subprocess.CompletedProcess[str]:
        done = run_gatestream(self.environ(user, **over), *args, timeout=90)
        self.outputs += [done.stdout, done.stderr]
        return done

    def refused(self, user: str | None, *args: str, **over: Any) -> str:
        """The one line a refused process ends with (asserting exit 2)."""
        done = self.run(user, *args, **over)
        assert done.returncode == 2, (done.returncode, done.stdout[-1500:], done.stderr[-1500:])
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"gatestream {args[0]}: "), done.stderr[-1500:]
        return last


def _settings(env: Env, broker: PrivateBroker, user: str, **over: Any) -> AclSettings:
    return AclSettings(**{**env.common(), **broker.settings(user), "group_id": f"{env.prefix}ingest", **over})


def _secure_topics(env: Env, broker: PrivateBroker) -> None:
    """The test's topics on the secured broker, made by the admin (topic admin is its job)."""
    ps = ProducerSettings(**{**env.common(), **broker.settings("admin")})
    ensure_topics(ps, [*event_topics(ps), env.dlq_topic, f"{env.prefix}policy-changes"], partitions=2)


@pytest.mark.slow  # eleven gatestream processes, one after the other
def test_each_principal_does_its_job_and_a_refusal_is_one_line_and_exit_2(
    secure_broker: PrivateBroker, env: Env, tmp_path: Path
) -> None:
    b = secure_broker
    runs = Runs(env, b)
    _secure_topics(env, b)
    # the admin makes the ACLs, idempotently
    made = runs.run("admin", "kafka", "acls", "ensure")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "0 already there" in made.stdout and " created," in made.stdout
    again = runs.run("admin", "kafka", "acls", "ensure")
    assert again.returncode == 0 and " 0 created," in again.stdout, again.stdout

    # the gateway writes its events; ingest reads them into the database
    produced = runs.run("gateway", "produce", "--count", "300", "--spool-path", str(tmp_path / "spool"))
    assert produced.returncode == 0, produced.stderr[-2000:]
    assert json.loads(produced.stdout.strip().splitlines()[-1])["delivered"] == 300
    ingested = runs.run("ingest", "ingest", "--stop-after-idle", "2")
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    assert sum(count_all(env.database_url).values()) == 300

    # one step outside: each refused at start, one line naming principal, resource and refusal
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    line = runs.refused("gateway", "ingest")
    assert f"Kafka refused User:gateway: no READ on topic {topic}" in line
    line = runs.refused("ingest", "produce", "--count", "1", "--spool-path", str(tmp_path / "s2"))
    assert f"Kafka refused User:ingest: no WRITE on topic {topic}" in line
    line = runs.refused("exporter", "produce", "--count", "1", "--spool-path", str(tmp_path / "s3"))
    assert "Kafka refused User:exporter: no WRITE on topic" in line
    line = runs.refused("ingest", "ingest", group_id="someone-elses-group")
    assert "Kafka refused User:ingest: no READ on group someone-elses-group" in line
    # a wrong password, and a plaintext client on the SASL_SSL listener
    line = runs.refused("ingest", "ingest", kafka_sasl_password="not-the-password-at-all")
    assert "Kafka refused User:ingest: authentication (SASL SCRAM-SHA-512) failed" in line
    line = runs.refused(None, "produce", "--count", "1", "--spool-path", str(tmp_path / "s4"))
    assert "Kafka refused User:ANONYMOUS: a PLAINTEXT connection was closed by the broker" in line
    assert "SASL_SSL" in line

    # no process printed a password (its own or another's), in any line
    for user in ("admin", *PRINCIPALS):
        secret = b.password(user)
        assert not any(secret in out for out in runs.outputs), f"{user}'s password in a process's output"


def test_the_other_principals_and_an_acl_missing_at_run_time(
    secure_broker: PrivateBroker, env: Env, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Replay and the policy consumer may read what they need and no more; the exporter only
    describes; a producer refused at run time keeps its events in the spool and counts it."""
    from gatestream.producers.publisher import Publisher

    b = secure_broker
    _secure_topics(env, b)
    policy_topic = f"{env.prefix}policy-changes"
    created, _ = ensure(_settings(env, b, "admin", policy_topic=policy_topic))
    assert created
    events = tuple(sorted(event_topics(_settings(env, b, "admin"))))

    def needs(user: str, n: KafkaNeeds, **over: Any) -> None:
        assert probe(_settings(env, b, user, policy_topic=policy_topic, **over), n, timeout_s=20)

    def refused(user: str, n: KafkaNeeds) -> str:
        with pytest.raises(KafkaRefused) as exc:
            probe(_settings(env, b, user, policy_topic=policy_topic), n, timeout_s=20)
        return str(exc.value)

    needs("replay", KafkaNeeds(read=events, write=(env.dlq_topic,)))
    # replay is also the operator's `gatestream dlq`: reads the dead-letter topic, redrive writes back
    needs("replay", KafkaNeeds(read=(env.dlq_topic,), write=events))
    # ingest may not read the dead letters: with one on the topic, `dlq summary` as ingest is one
    # line and exit 2, not "0 records" (an empty topic is 0 records for whoever may describe it)
    from confluent_kafka import Producer

    from gatestream.kafka import base_config

    admin_producer = Producer(base_config(_settings(env, b, "admin")))
    admin_producer.produce(env.dlq_topic, b"a dead letter", headers={"gatestream.reason": b"bad-avro"})
    assert admin_producer.flush(20) == 0
    assert "User:ingest: no READ on topic " + env.dlq_topic in refused("ingest", KafkaNeeds(read=(env.dlq_topic,)))
    done = run_gatestream(env.environ(**b.settings("ingest")), "dlq", "summary", timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "gatestream dlq: Kafka refused User:ingest: no READ on topic " + env.dlq_topic
    ), done.stderr[-2000:]
    assert "no READ on topic " + policy_topic in refused("replay", KafkaNeeds(read=(policy_topic,)))
    needs("policy", KafkaNeeds(read=(policy_topic,), write=(env.dlq_topic,), groups=("gatestream-policy",)))
    assert "User:policy: no READ on topic" in refused("policy", KafkaNeeds(read=events[:1]))
    needs("exporter", KafkaNeeds(describe=(*events, env.dlq_topic)))
    assert "User:exporter: no READ on topic" in refused("exporter", KafkaNeeds(read=events[:1]))
    assert "User:gateway: no WRITE on topic " + env.dlq_topic in refused("gateway", KafkaNeeds(write=(env.dlq_topic,)))

    # at run time: ingest's user may not write the event topics; the events stay in the spool
    before = REGISTRY.get_sample_value("gatestream_kafka_authorization_failures_total", {"operation": "produce"}) or 0
    settings = ProducerSettings(**{**env.common(), **b.settings("ingest"), "spool_path": tmp_path / "spool"})
    pub = Publisher(settings)
    batch = list(generate(20, Fleet(orgs=1, devices_per_org=2, gateways_per_org=1), [EventType.ACTIVE_WINDOWS.value]))
    pub.publish_many(batch)
    left = pub.close(timeout=5)
    assert left == 20, "every refused event stays spooled"
    after = REGISTRY.get_sample_value("gatestream_kafka_authorization_failures_total", {"operation": "produce"}) or 0
    assert after > before
    out, err = capfd.readouterr()
    for user in ("admin", *PRINCIPALS):
        assert b.password(user) not in out + err


@pytest.mark.slow  # three broker starts: plain, with the one-off setup listener, secured
@pytest.mark.xdist_group("kafka-upgrade")  # brokers of its own: it need not wait for the secure-broker group
def test_a_broker_formatted_plain_is_secured_in_place_with_its_topics(tmp_path: Path) -> None:
    """The stack's broker of before (formatted without SCRAM users) started --secure: the users
    are added through a one-off loopback listener that is gone afterwards; its topics and their
    messages stay; the admin logs in and reads them, a plain client is refused."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    if shutil.which("java") is None:
        pytest.skip("no Java on PATH")
    state = tmp_path / "kafka"
    plain = PrivateBroker(state)
    plain.start()
    try:
        admin = AdminClient({"bootstrap.servers": plain.bootstrap})
        admin.create_topics([NewTopic("kept", num_partitions=1, replication_factor=1)])["kept"].result(timeout=30)
        p = Producer({"bootstrap.servers": plain.bootstrap})
        p.produce("kept", b"before")
        assert p.flush(30) == 0
        plain.stop()
        secured = PrivateBroker(state, users=())  # the admin alone: one setup call (a JVM) fewer
        secured.port, secured.controller_port = plain.port, plain.controller_port
        secured.start()
        props = (state / "server.properties").read_text()
        assert "SETUP" not in props and "allow.everyone.if.no.acl.found=false" in props
        assert oct((state / "server.properties").stat().st_mode & 0o777) == "0o600"  # it holds the admin's password
        conf = {
            "bootstrap.servers": secured.bootstrap, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "admin", "sasl.password": secured.password("admin"), "ssl.ca.location": str(secured.ca),
        }  # fmt: skip
        c = Consumer({**conf, "group.id": "upgrade-check"})
        c.assign([TopicPartition("kept", 0, 0)])
        got = [m.value() for m in c.consume(10, timeout=20) if m.error() is None]
        c.close()
        assert got == [b"before"]
        with pytest.raises(KafkaRefused, match="PLAINTEXT connection was closed"):
            probe(AclSettings(**secured.settings(None)), KafkaNeeds(), timeout_s=20)
    finally:
        plain.kill()
