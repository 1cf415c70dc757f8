"""Where the tests find a real broker and a real TimescaleDB.

Order: GATESTREAM_DATABASE_URL + GATESTREAM_BOOTSTRAP_SERVERS from the environment
(``ops/test`` sets them from ``ops/stack``); else the local stack's ``.stack/env``;
else, where a Docker engine answers, testcontainers (the same Apache Kafka version as
ops/stack + the TimescaleDB image); else the integration tests skip, saying how to start the services.
Set GATESTREAM_TEST_SERVICES=docker or =stack to force one.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# gatestream's Kafka security settings (ops/stack env prints them as GATESTREAM_KAFKA_*)
KAFKA_SECURITY = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_location",
)


@dataclass
class Services:
    database_url: str
    bootstrap_servers: str
    source: str
    handles: tuple[Any, ...] = ()
    schema_registry_url: str | None = None  # None: the shipped schema catalog
    # A second server running the Apache edition of the same TimescaleDB build
    # (timescaledb.license = 'apache'), where the stack runs the Community edition.
    apache_database_url: str | None = None
    # Kafka Connect's REST API with Debezium's PostgreSQL connector (ops/stack's worker), if any
    connect_url: str | None = None
    # what a connector's config says for the CDC role's password (ops/stack: a Connect config-provider
    # reference to its secrets file; the role has that password on the stack's servers)
    cdc_password_ref: str | None = None
    # How the suite logs in to that broker: gatestream's Kafka security settings (KafkaClientSettings
    # fields), the admin's on a secured stack; all None on a plain broker
    kafka_security: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(KAFKA_SECURITY))

    def kafka_settings(self, bootstrap: str | None = None) -> dict[str, str | None]:
        """bootstrap_servers and the security settings to reach ``bootstrap`` (default: the
        stack's broker). Another broker (a test's private, plain one) gets no security settings:
        explicitly none, so that GATESTREAM_KAFKA_* in the environment do not apply either."""
        if bootstrap is None or bootstrap == self.bootstrap_servers:
            return {"bootstrap_servers": self.bootstrap_servers, **self.kafka_security}
        return {"bootstrap_servers": bootstrap, **dict.fromkeys(KAFKA_SECURITY)}

    def client_settings(self, bootstrap: str | None = None) -> Any:
        """gatestream's KafkaClientSettings for ``bootstrap`` (default: the stack's broker)."""
        from gatestream.settings import KafkaClientSettings

        return KafkaClientSettings(**self.kafka_settings(bootstrap))  # type: ignore[arg-type]

    def kafka_tool_args(self, folder: Path) -> list[str]:
        """``--command-config FILE`` for Kafka's own (Java) tools on the stack's broker as the
        suite's user; nothing on a plain broker. FILE (mode 600) is written into ``folder``."""
        conf = self.kafka_conf()
        if "sasl.username" not in conf:
            return []
        f = folder / "kafka-tool.properties"
        f.touch(mode=0o600)
        f.write_text(
            f"security.protocol={conf['security.protocol']}\nsasl.mechanism={conf['sasl.mechanism']}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{conf["sasl.username"]}" password="{conf["sasl.password"]}";\n'
            f"ssl.truststore.type=PEM\nssl.truststore.location={conf.get('ssl.ca.location', '')}\n"
        )
        return ["--command-config", str(f)]

    def kafka_conf(self, bootstrap: str | None = None) -> dict[str, Any]:
        """librdkafka configuration of a raw client of the tests' own (the admin's on the stack)."""
        from gatestream.kafka import security_config

        settings = self.client_settings(bootstrap)
        return {"bootstrap.servers": settings.bootstrap_servers, **security_config(settings)}

    def close(self) -> None:
        for h in self.handles:
            h.stop()


_FOUND: list[Services] = []  # what find_services found in this process


def kafka_conf(bootstrap: str) -> dict[str, Any]:
    """librdkafka configuration of a raw test client of ``bootstrap``: with the stack's security
    settings (the admin's user) when it is the stack's broker, with none for another (a private one)."""
    for found in _FOUND:
        if found.bootstrap_servers == bootstrap:
            return found.kafka_conf()
    return {"bootstrap.servers": bootstrap}


def client_settings(bootstrap: str) -> Any:
    """gatestream's KafkaClientSettings for ``bootstrap``, as ``kafka_conf``."""
    for found in _FOUND:
        if found.bootstrap_servers == bootstrap:
            return found.client_settings()
    from gatestream.settings import KafkaClientSettings

    return KafkaClientSettings(bootstrap_servers=bootstrap, **dict.fromkeys(KAFKA_SECURITY))


def _from_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = shlex.split(v)[0] if v else ""
    return out


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


KAFKA_IMAGE = "apache/kafka:4.4.0"  # the version ops/kafka/pom.xml pins and docker-compose.yml runs
# The Community edition of the TimescaleDB version ops/stack builds and docker-compose.yml runs
TIMESCALEDB_IMAGE = "timescale/timescaledb:2.28.3-pg15"


def _start_docker() -> Services:
    """Apache Kafka (the same version as ops/stack) and the TimescaleDB image (Community edition) in containers.

    Kafka must advertise an address the host can reach, so its listener port is the same
    inside and outside the container (a free host port, bound 1:1)."""
    import socket

    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(port, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", f"PLAINTEXT://:{port},CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    kafka.start()
    wait_for_logs(kafka, "Kafka Server started", timeout=90)
    pg = PostgresContainer(TIMESCALEDB_IMAGE, username="postgres", password="postgres", dbname="gatestream")
    # as ops/stack and compose: commit timestamps, which `gatestream bench latency` measures by
    pg.with_command("postgres -c track_commit_timestamp=on")
    pg.start()
    url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
    return Services(url, f"127.0.0.1:{port}", "testcontainers", (kafka, pg))


def find_services() -> Services | str:
    """The services, or a reason why there are none."""
    forced = os.environ.get("GATESTREAM_TEST_SERVICES", "")
    env = dict(os.environ)
    if forced != "docker":
        if not (env.get("GATESTREAM_DATABASE_URL") and env.get("GATESTREAM_BOOTSTRAP_SERVERS")):
            stack_env = Path(env.get("GATESTREAM_STACK_DIR", ROOT / ".stack")) / "env"
            if stack_env.exists():
                env.update(_from_env_file(stack_env))
        if env.get("GATESTREAM_DATABASE_URL") and env.get("GATESTREAM_BOOTSTRAP_SERVERS"):
            found = Services(
                env["GATESTREAM_DATABASE_URL"],
                env["GATESTREAM_BOOTSTRAP_SERVERS"],
                "ops/stack",
                schema_registry_url=env.get("GATESTREAM_SCHEMA_REGISTRY_URL") or None,
                apache_database_url=env.get("GATESTREAM_APACHE_DATABASE_URL") or None,
                connect_url=env.get("GATESTREAM_CONNECT_URL") or None,
                cdc_password_ref=env.get("GATESTREAM_CDC_PASSWORD_REF") or None,
                kafka_security={k: env.get(f"GATESTREAM_{k.upper()}") or None for k in KAFKA_SECURITY},
            )
            _FOUND.append(found)
            return found
        if forced == "stack":
            return "GATESTREAM_TEST_SERVICES=stack but no stack found: run ops/stack up"
    if _docker_available():
        return _start_docker()
    return "no broker/TimescaleDB: run `ops/stack up` (or ops/test), or make a Docker engine available"
