"""A Kafka node of one's own (``ops/kafka/broker``), to stop, kill -9 and start again at will.

Used by the fault bench's broker-kill-9 scenario and by the tests that need a broker they
may crash; the shared broker of the local stack is never touched."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

# gatestream's Kafka settings of a plain client (PLAINTEXT, no user): over a secured stack's
PLAIN: dict[str, str | None] = {
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_username": None,
    "kafka_sasl_password": None,
    "kafka_ssl_ca_location": None,
}


def secrets_token() -> str:
    """A password: 32 URL-safe characters (what ops/kafka/broker accepts in a SCRAM config)."""
    return token_urlsafe(24)


ROOT = Path(__file__).resolve().parents[1]
BROKER_SCRIPT = ROOT / "ops" / "kafka" / "broker"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class PrivateBroker:
    """An Apache Kafka node (its log on disk under ``state``), started by ``ops/kafka/broker``.

    ``users``: secured (``--secure``): SASL_SSL with one SCRAM user per name (and admin, the
    super user), passwords generated into ``state/secrets``, its certificate in ``state/tls``."""

    def __init__(self, state: Path, users: tuple[str, ...] | None = None) -> None:
        self.state = state
        self.port, self.controller_port = _free_ports(2)
        self.secure: tuple[str, str] | None = None
        if users is not None:
            secrets = state / "secrets"
            secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
            for user in ("admin", *users):
                f = secrets / f"kafka-{user}"
                if not f.exists():
                    f.touch(mode=0o600)
                    f.write_text(secrets_token())
            self.secure = (str(state / "tls"), str(secrets))

    def password(self, user: str) -> str:
        assert self.secure is not None, "a plain broker has no users"
        return (Path(self.secure[1]) / f"kafka-{user}").read_text()

    @property
    def ca(self) -> Path:
        assert self.secure is not None, "a plain broker has no CA"
        return Path(self.secure[0]) / "ca.pem"

    def settings(self, user: str | None) -> dict[str, Any]:
        """gatestream's Kafka settings (KafkaClientSettings fields) to reach it as ``user``
        (None: no user, plaintext)."""
        if user is None:
            return {"bootstrap_servers": self.bootstrap, **PLAIN}
        return {
            "bootstrap_servers": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_username": user,
            "kafka_sasl_password": self.password(user),
            "kafka_ssl_ca_location": str(self.ca),
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 180) -> None:
        done = subprocess.run([str(BROKER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ops/kafka/broker {' '.join(args)} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        """Start (or restart from its on-disk log); returns once the broker serves requests."""
        secure = ("--secure", *self.secure) if self.secure is not None else ()
        self._run("start", str(self.state), str(self.port), str(self.controller_port), *secure)

    def stop(self) -> None:
        """Controlled shutdown (SIGTERM)."""
        self._run("stop", str(self.state))

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown; what the log held on disk is all that survives."""
        self._run("kill", str(self.state))
