"""CPU time for the benches: this process's (``resource.getrusage``), and the database
backends serving one database (from ``/proc`` of the server's processes, when the server
runs on this machine).

The backends come and go with the connections, so ``BackendCpu`` samples them in a thread:
every ``every_s`` it lists the backends of the database (``pg_stat_activity``) and reads
their CPU time; a backend's last figure counts. What a backend spends after the last
sample before it exits is missed (at most ``every_s`` of it), and the server's own
processes (WAL writer, checkpointer) are not counted: the figure is the statements' CPU.
"""

from __future__ import annotations

import os
import resource
import threading
from typing import Any

from gatestream.database import connect_once

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of the line)


class BackendCpu:
    """CPU seconds of the backends of database ``dbname`` while it runs (a context manager);
    ``seconds`` is None where the server's processes cannot be read here (another machine)."""

    def __init__(self, url: str, every_s: float = 0.2) -> None:
        self.url = url
        self.every_s = every_s
        self._stop = threading.Event()
        self._last: dict[int, float] = {}
        self._base: dict[int, float] = {}
        self._readable = True
        self._thread = threading.Thread(target=self._run, name="backend-cpu", daemon=True)

    def __enter__(self) -> BackendCpu:
        self._conn = connect_once(self.url)
        self._own = self._conn.info.backend_pid
        self._base = self._sample()  # backends already there: only their growth counts
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._conn.close()

    def _sample(self) -> dict[int, float]:
        pids = [
            r[0]
            for r in self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
        seen: dict[int, float] = {}
        for pid in pids:
            cpu = _proc_cpu_s(pid)
            if cpu is None:
                self._readable = False
                continue
            seen[pid] = cpu
        self._last.update(seen)
        return seen

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    @property
    def seconds(self) -> float | None:
        if not self._readable and not self._last:
            return None
        return sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())
