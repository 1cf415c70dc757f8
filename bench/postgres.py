"""A PostgreSQL + TimescaleDB server of one's own, to crash and stop at will.

The fault bench's postgres-crash and database-away scenarios run against it, so the bench
(and the test that runs its short form) never stops the local stack's server that other
tests and other people use. It is made from the binaries the stack installed (the same
TimescaleDB build), in a folder of its own, and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.brokers import _free_ports

DEBIAN_PG = Path("/usr/lib/postgresql")


def pg_bindir(major: str | None = None) -> Path | None:
    """The server binaries: Debian's folder of that major version (the newest one when None),
    else what ``pg_config --bindir`` names."""
    if DEBIAN_PG.is_dir():
        majors = sorted((p.name for p in DEBIAN_PG.iterdir() if (p / "bin" / "pg_ctl").exists()), key=int)
        if major in majors or (major is None and majors):
            return DEBIAN_PG / (major or majors[-1]) / "bin"
    if shutil.which("pg_config") is None:
        return None
    done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
    found = Path(done.stdout.strip())
    return found if done.returncode == 0 and (found / "pg_ctl").exists() else None


class PrivatePostgres:
    """One server: ``start()`` (initdb the first time), ``crash()`` (no shutdown: what the WAL
    holds is what survives), ``stop()`` (fast shutdown), ``remove()``. Raises RuntimeError with
    the server's own words when a step fails."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # the server runs as the postgres user when we are root (initdb refuses root): its folder
        # must be reachable by that user, which a private home or /tmp/pytest-* may not be
        self.state = Path(tempfile.mkdtemp(prefix="gatestream-pg-", dir="/var/tmp" if os.geteuid() == 0 else None))
        self.data = self.state / "data"
        self.log = self.state / "postgres.log"
        (self.port,) = _free_ports(1)
        if os.geteuid() == 0:
            self.state.chmod(0o755)
            shutil.chown(self.state, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        argv = [str(self.bindir / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} {cmd[-1]} failed: {(done.stderr or done.stdout).strip()[-1500:]} {tail}")

    def start(self) -> None:
        """Start (initdb and configure it the first time); returns once it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.state}'\n"
                    "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n"
                    "shared_buffers = 128MB\nmax_connections = 100\nlog_min_messages = warning\n"
                )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self, *, keep: bool = False) -> None:
        """Stop it if it runs; remove its folder unless ``keep`` (its log is worth a look)."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.crash()
            except RuntimeError:
                pass
        if not keep:
            shutil.rmtree(self.state, ignore_errors=True)
