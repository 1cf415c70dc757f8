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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


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

    def close(self) -> None:
        for h in self.handles:
            h.stop()


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
            return Services(
                env["GATESTREAM_DATABASE_URL"],
                env["GATESTREAM_BOOTSTRAP_SERVERS"],
                "ops/stack",
                schema_registry_url=env.get("GATESTREAM_SCHEMA_REGISTRY_URL") or None,
                apache_database_url=env.get("GATESTREAM_APACHE_DATABASE_URL") or None,
                connect_url=env.get("GATESTREAM_CONNECT_URL") or None,
                cdc_password_ref=env.get("GATESTREAM_CDC_PASSWORD_REF") or None,
            )
        if forced == "stack":
            return "GATESTREAM_TEST_SERVICES=stack but no stack found: run ops/stack up"
    if _docker_available():
        return _start_docker()
    return "no broker/TimescaleDB: run `ops/stack up` (or ops/test), or make a Docker engine available"
