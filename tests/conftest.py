"""Fixtures: real services (see tests/services.py), a fresh database and fresh topics per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

# re-exported: tests use the broker script and the private broker from here
from bench.brokers import BROKER_SCRIPT as BROKER_SCRIPT
from bench.brokers import PrivateBroker as PrivateBroker
from gatestream.edition import Edition, timescaledb_edition
from tests.services import KAFKA_SECURITY, ROOT, Services, find_services, kafka_conf

# A killed member's partitions move after the session timeout: keep it at the broker's
# minimum (group.min.session.timeout.ms, 6 s) so the tests that kill members stay short.
# Under KIP-848 the broker's own group.consumer.session.timeout.ms applies (10 s in ops/kafka).
TEST_CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order for pytest-xdist (ops/test runs ``--dist loadgroup``): the slow tests first, so the
    workers share them from the start instead of one worker finishing a long one alone; the
    tests that use the private broker on one worker, so one broker starts (a JVM costs seconds
    of CPU on a 2-core machine) instead of one per worker."""
    for item in items:
        if "private_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("private-broker"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise as collected


@pytest.fixture(params=["classic", "consumer"])
def group_protocol(request: pytest.FixtureRequest) -> str:
    """Run a test under both consumer-group protocols: classic and KIP-848's."""
    return str(request.param)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    if os.environ.get("GATESTREAM_TEST_SERVICES") == "none":
        pytest.fail("the fast lane (ops/test --fast) has no services: a test that needs them is an integration test")
    found = find_services()
    if isinstance(found, str):
        pytest.skip(found)
    yield found
    found.close()


def _admin_url(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def _drop_leftovers(conn: psycopg.Connection[Any]) -> None:
    """Drop the databases of test sessions that ended without dropping them (killed: a time-out,
    ^C). Their names carry the session's pid; only those of a process no longer alive on this
    machine go. Left behind they pile up, and each holds a TimescaleDB scheduler."""
    for (name,) in conn.execute(
        r"SELECT datname FROM pg_database WHERE datname ~ '^gs_(tmpl|test)_[0-9]+_[0-9a-f]+$'"
    ).fetchall():
        pid = int(str(name).split("_")[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a name of ours, matched above
        except PermissionError:
            pass  # alive, another user's


class _Templates:
    """One migrated template database per server and test session; every test's database is
    cloned from it (a clone is a file copy: much faster than running the migrations again)."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}  # server URL -> template name
        self.editions: dict[str, Edition] = {}

    def template(self, server_url: str) -> str:
        if server_url not in self.made:
            from gatestream.migrate import migrate

            name = f"gs_tmpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            admin = _admin_url(server_url, "postgres")
            with psycopg.connect(admin, autocommit=True) as conn:
                _drop_leftovers(conn)
                conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, not input
            url = _admin_url(server_url, name)
            migrate(url)
            with psycopg.connect(url, autocommit=True) as conn:
                self.editions[server_url] = timescaledb_edition(conn)
                # no job scheduler in the template: TimescaleDB's background workers ignore
                # ALLOW_CONNECTIONS, and each template's scheduler held one of the server's
                # timescaledb.max_background_workers for the whole session (a test database's
                # scheduler then never started: its job never ran). A database-level setting,
                # so the clones run their jobs as usual.
                conn.execute("SELECT timescaledb_pre_restore()")
            with psycopg.connect(admin, autocommit=True) as conn:
                # A template must have no sessions: refuse new ones (TimescaleDB's job scheduler would
                # connect to it) and end those already there. CREATE DATABASE ... TEMPLATE still reads it.
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            self.made[server_url] = name
        return self.made[server_url]

    def edition(self, server_url: str) -> Edition:
        self.template(server_url)
        return self.editions[server_url]

    def clone(self, server_url: str) -> str:
        """A fresh, migrated database on that server; its URL."""
        template = self.template(server_url)
        name = f"gs_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_admin_url(server_url, "postgres"), autocommit=True) as conn:
            # names are ours, not input; a session still leaving the template is waited for by PostgreSQL (5 s)
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return _admin_url(server_url, name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(_admin_url(url, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        for server_url, name in self.made.items():
            with psycopg.connect(_admin_url(server_url, "postgres"), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def templates(services: Services) -> Iterator[_Templates]:
    t = _Templates()
    yield t
    t.close()


@pytest.fixture
def db_url(services: Services, templates: _Templates) -> Iterator[str]:
    """A fresh, migrated database for one test, on the stack's main server (whatever edition it runs)."""
    url = templates.clone(services.database_url)
    yield url
    templates.drop(url)


def edition_server(services: Services, templates: _Templates, edition: Edition) -> str | None:
    """The URL of a server that runs ``edition``, or None where the stack has none."""
    for url in (services.database_url, services.apache_database_url):
        if url and templates.edition(url) is edition:
            return url
    return None


@pytest.fixture(params=[Edition.COMMUNITY, Edition.APACHE], ids=["community", "apache"])
def edition(request: pytest.FixtureRequest, services: Services, templates: _Templates) -> Edition:
    """Run a test on both TimescaleDB editions: the Community (TSL) edition and the Apache one
    (the same build with timescaledb.license = 'apache' on a second server of the stack).
    Only the Apache fallback of ``ops/stack`` (no Community build: GATESTREAM_TIMESCALEDB_SOURCE
    unreachable) lacks the Community edition; there its cases skip, saying so."""
    wanted = Edition(request.param)
    if edition_server(services, templates, wanted) is None:
        if wanted is Edition.COMMUNITY:
            pytest.skip(
                "no server runs the Community edition here: ops/stack fell back to Debian's Apache edition "
                "(set GATESTREAM_TIMESCALEDB_SOURCE to TimescaleDB's source to build the Community one)"
            )
        pytest.skip(
            "no server runs the Apache edition here: GATESTREAM_APACHE_DATABASE_URL (the stack's second "
            "server, which ops/stack up starts beside a Community build) is not set"
        )
    return wanted


@pytest.fixture
def edition_db_url(services: Services, templates: _Templates, edition: Edition) -> Iterator[str]:
    """A fresh, migrated database on a server of the ``edition`` under test."""
    server = edition_server(services, templates, edition)
    assert server is not None  # the edition fixture skipped otherwise
    url = templates.clone(server)
    yield url
    templates.drop(url)


def _env_value(v: Any) -> str:
    """A setting as an environment variable: a secret as its value (the subprocess needs it)."""
    from pydantic import SecretStr

    return v.get_secret_value() if isinstance(v, SecretStr) else str(v)


@dataclass
class Env:
    """Settings for one test: its database and its own topics."""

    services: Services
    database_url: str
    prefix: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}dead-letter"

    def common(self) -> dict[str, Any]:
        values = {
            **self.services.kafka_settings(),
            "database_url": self.database_url,
            "topic_prefix": self.prefix,
            "dlq_topic": self.dlq_topic,
            "schema_registry_url": self.services.schema_registry_url,
            **self.extra,
        }
        return self._kafka(values, self.extra)

    def _kafka(self, values: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        """``values`` pointed by ``over`` at another broker than the stack's (a test's private,
        plain one) lose the stack's Kafka security settings (set to None: nor do GATESTREAM_KAFKA_*
        of the environment apply), unless ``over`` sets its own (a secured private broker)."""
        if values.get("bootstrap_servers") == self.services.bootstrap_servers or any(k in over for k in KAFKA_SECURITY):
            return values
        return {**values, **dict.fromkeys(KAFKA_SECURITY)}

    def ingest(self, **over: Any) -> Any:
        from gatestream.settings import IngestSettings

        values = {**self.common(), **TEST_CONSUMER, "group_id": f"{self.prefix}ingest", **over}
        return IngestSettings(**self._kafka(values, {**self.extra, **over}))

    def policy(self, **over: Any) -> Any:
        """The policy consumer's settings, with this test's own change topics and group."""
        from gatestream.settings import PolicySettings

        values = {
            **self.common(),
            **TEST_CONSUMER,
            "policy_topic": f"{self.prefix}policy-changes",
            "policy_group_id": f"{self.prefix}policy",
            # Debezium's topic of this test (tests/integration/test_policy_cdc.py), not the stack's
            "cdc_topic_prefix": f"{self.prefix}cdc",
            **over,
        }
        return PolicySettings(**self._kafka(values, {**self.extra, **over}))

    def producer(self, spool: Path, **over: Any) -> Any:
        from gatestream.settings import ProducerSettings

        values = {**self.common(), "spool_path": spool, "partitions": 4, **over}
        return ProducerSettings(**self._kafka(values, {**self.extra, **over}))

    def environ(self, **over: Any) -> dict[str, str]:
        """Environment for a gatestream subprocess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATESTREAM_")}
        values = {
            **self.common(),
            **TEST_CONSUMER,
            "group_id": f"{self.prefix}ingest",
            "cdc_topic_prefix": f"{self.prefix}cdc",  # a policy consumer's CDC topic: this test's
            **over,
        }
        values = self._kafka(values, {**self.extra, **over})
        env.update({f"GATESTREAM_{k.upper()}": _env_value(v) for k, v in values.items() if v is not None})
        env["GATESTREAM_LOG_FORMAT"] = "json"
        return env

    def topic(self, event_type: Any) -> str:
        return f"{self.prefix}{event_type.value}"

    def on_broker(self, bootstrap: str, partitions: int = 2) -> Env:
        """These settings pointed at another broker (a test's private one), with the topics created there."""
        from gatestream.schemas import event_topics
        from gatestream.settings import ProducerSettings
        from gatestream.topics import ensure_topics

        e = Env(self.services, self.database_url, self.prefix, {**self.extra, "bootstrap_servers": bootstrap})
        ps = ProducerSettings(**e.common())
        ensure_topics(ps, [*event_topics(ps), e.dlq_topic], partitions=partitions)
        return e


def _env(services: Services, database_url: str) -> Iterator[Env]:
    from gatestream.schemas import event_topics
    from gatestream.settings import ProducerSettings
    from gatestream.topics import delete_topics, ensure_topics

    e = Env(services, database_url, f"t{uuid.uuid4().hex[:8]}.")
    ps = ProducerSettings(**e.common())
    names = [*event_topics(ps), e.dlq_topic]
    ensure_topics(ps, names, partitions=2)  # every test's topics: few partitions, less broker work
    yield e
    try:
        delete_topics(ps, names)  # keep the shared broker's disk small
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


@pytest.fixture
def env(services: Services, db_url: str) -> Iterator[Env]:
    yield from _env(services, db_url)


@pytest.fixture
def edition_env(services: Services, edition_db_url: str) -> Iterator[Env]:
    """As ``env``, on a database of the ``edition`` under test."""
    yield from _env(services, edition_db_url)


def gatestream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatestream", *args]


def run_gatestream(environ: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gatestream_cmd(*args), env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """All messages of ``topic`` from the beginning, once ``expected`` have arrived (or timeout)."""
    c = Consumer(
        {
            **kafka_conf(bootstrap),
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,
        }
    )
    md = c.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=0.2):
            if m.error() is None:
                out.append(m)
    c.close()
    return out


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture(scope="session")
def _session_private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    if shutil.which("java") is None:
        pytest.skip("no Java on PATH: ops/stack install (or ops/test) installs Java 17 and Kafka's jars")
    b = PrivateBroker(tmp_path_factory.mktemp("private-kafka") / "kafka")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def private_broker(_session_private_broker: PrivateBroker) -> PrivateBroker:
    """A Kafka node of the test session's own, to stop or kill -9 at will; one for the whole session
    (a start costs seconds). Tests keep apart by their topic prefix, as on the shared broker. A test
    that stops or kills it starts it again; one that failed before doing so leaves it down, so each
    test begins with a start (nothing to do when it runs)."""
    _session_private_broker.start()
    return _session_private_broker
