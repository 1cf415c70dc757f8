"""A Kafka node of one's own (``ops/kafka/broker``), to stop, kill -9 and start again at will.

Used by the fault bench's broker-kill-9 scenario and by the tests that need a broker they
may crash; the shared broker of the local stack is never touched."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

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
    """An Apache Kafka node (its log on disk under ``state``), started by ``ops/kafka/broker``."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port, self.controller_port = _free_ports(2)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 180) -> None:
        done = subprocess.run([str(BROKER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ops/kafka/broker {' '.join(args)} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        """Start (or restart from its on-disk log); returns once the broker serves requests."""
        self._run("start", str(self.state), str(self.port), str(self.controller_port))

    def stop(self) -> None:
        """Controlled shutdown (SIGTERM)."""
        self._run("stop", str(self.state))

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown; what the log held on disk is all that survives."""
        self._run("kill", str(self.state))
