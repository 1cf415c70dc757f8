"""A gatestream process ends with no Kafka client still running: nothing of librdkafka outlives Python.

The pipeline freezes the heap alive at its start (``gc.freeze``), so no Kafka client it
holds is ever collected: a client it does not destroy itself keeps its librdkafka threads
and its TLS connection running through ``exit()``, which runs OpenSSL's cleanup under them
(the suspect of a rare ``malloc_consolidate()`` abort after "replay finished").
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, gatestream_cmd
from tests.integration.test_replay import _events, _ingest_all
from tests.services import ROOT

pytestmark = pytest.mark.integration

# Loaded by the subprocess's interpreter (PYTHONPATH): at Python's exit, after the command
# returned, the names of the process's threads (librdkafka names its own "rdk:...").
PROBE = """
import atexit, os

def _threads_at_exit():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    with open(os.environ["EXIT_PROBE_OUT"], "w") as f:
        f.write("\\n".join(names))

atexit.register(_threads_at_exit)
"""


def test_a_replay_process_leaves_no_kafka_client_threads_running_at_exit(env: Env, tmp_path: Path) -> None:
    _ingest_all(env, tmp_path, _events(50))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "threads"
    done = subprocess.run(
        gatestream_cmd("replay", "--types", "active_windows", "--no-progress"),
        env={**env.environ(), "PYTHONPATH": str(site), "EXIT_PROBE_OUT": str(out)},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"read": 50' in done.stdout, done.stdout  # the pipeline ran: its consumer and dead-letter producer
    threads = out.read_text().split()
    assert any(t.startswith("python") for t in threads), f"not vacuous: the probe ran at exit ({threads})"
    assert not [t for t in threads if t.startswith("rdk:")], f"librdkafka threads alive at exit: {threads}"
