"""Where the tests find a real broker and a real TimescaleDB.

Order: GATESTREAM_DATABASE_URL + GATESTREAM_BOOTSTRAP_SERVERS from the environment
(``ops/test`` sets them from ``ops/stack``); else the local stack's ``.stack/env``;
else, where a Docker engine answers, testcontainers (Apache Kafka + the TimescaleDB
image); else the integration tests skip, saying how to start the services.
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


def _start_docker() -> Services:
    from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    kafka = KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft()
    kafka.start()
    pg = PostgresContainer(
        "timescale/timescaledb:2.19.3-pg15", username="postgres", password="postgres", dbname="gatestream"
    )
    pg.start()
    url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
    return Services(url, kafka.get_bootstrap_server(), "testcontainers", (kafka, pg))


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
            return Services(env["GATESTREAM_DATABASE_URL"], env["GATESTREAM_BOOTSTRAP_SERVERS"], "ops/stack")
        if forced == "stack":
            return "GATESTREAM_TEST_SERVICES=stack but no stack found: run ops/stack up"
    if _docker_available():
        return _start_docker()
    return "no broker/TimescaleDB: run `ops/stack up` (or ops/test), or make a Docker engine available"
