"""ops/kafka/cluster's misuse ends in one line and exit 2, before any JVM starts (the
cluster itself is started, killed and restarted by tests/integration/test_cluster.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.cluster import CLUSTER_SCRIPT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False)


def test_help_names_every_command() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for command in ("start DIR", "stop DIR", "kill DIR NODE", "restart DIR NODE", "status DIR", "bootstrap DIR"):
        assert f"ops/kafka/cluster {command}" in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bogus"], "unknown command 'bogus'"),
        (["kill"], "usage: cluster kill DIR NODE"),
        (["start", "DIR", "1", "2"], "usage: cluster start DIR [P1 P2 P3 C1 C2 C3]"),
        (["kill", "{dir}", "1"], "holds no cluster"),
        (["restart", "{dir}", "1"], "holds no cluster"),
    ],
)
def test_misuse_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = _run(*(a.format(dir=tmp_path) for a in args))
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_node_outside_the_three_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cluster.id").write_text("x\n")  # a cluster folder, so the node is what is wrong
    done = _run("kill", str(tmp_path), "4")
    assert done.returncode == 2 and "NODE must be 1, 2 or 3, not '4'" in done.stderr, done.stderr
