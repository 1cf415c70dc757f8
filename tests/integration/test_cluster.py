"""A partition's leader killed -9 mid-stream, twice, on a three-node KRaft cluster of the
test's own (``python -m bench.faults --short --scenarios leader-kill-9``; ops/kafka/cluster,
bench/leader_kill.py): with event topics of three replicas, min.insync.replicas 2 and an
idempotent ``acks=all`` producer, the same producer and the same two ingest members ride out
every kill, and every event lands exactly once; and with two nodes of three gone, no write is
acknowledged. The stack's broker is never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Env
from tests.services import ROOT

# its own group: three JVMs on one worker at a time are enough for a 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("kafka-cluster")]


def test_leader_kills_are_survived_without_a_client_restart_and_every_event_lands_once(env: Env) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--short", "--scenarios", "leader-kill-9"],
        env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(done.stdout.strip().splitlines()[-3])  # the scenario's line, with each kill's figures (pytest -rA)
    [s] = report["scenarios"]
    m: dict[str, float] = s["measured"]
    assert s["faults"] >= 2, f"fewer than two leaders killed: {done.stdout}"
    # the bench makes its topics as `gatestream topics ensure` does: the cluster's defaults, 3 replicas,
    # and an acks=all write needs 2 of them
    assert m["replicas"] == 3 and m["min_isr"] == 2, done.stdout
    # exactly once: each event stored, each offset at the topic's end, nothing read twice
    assert s["note"] == "" and s["events"] > 0, done.stdout
    assert s["lost"] == 0 and s["rows"] == s["events"], f"rows are not the events published: {done.stdout}"
    assert s["offsets_off"] == 0, f"stored offsets are not the topics' end offsets: {done.stdout}"
    assert s["duplicates"] == s["resent"], f"ingest read events again beyond the resent copies: {done.stdout}"
    # without a restart: the two members started at the beginning are the only ones, and the one
    # producer delivered everything and ended well
    assert m["members_started"] == 2 and m["producer_rc"] == 0, done.stdout
    for k in range(1, s["faults"] + 1):
        # each kill moved leadership, and the node came back and caught up before the next one
        assert m[f"kill{k}_leader_s"] > 0 and m[f"kill{k}_restart_s"] > 0 and m[f"kill{k}_isr_s"] > 0, done.stdout
    # one step outside: with two of the three nodes gone, no acks=all write is acknowledged
    assert m["acks_with_one_node"] == 0, done.stdout
    # the first kill comes mid-stream: events written after it were acknowledged and stored
    assert 0 < m.get("kill1_acked_s", 0) <= m.get("kill1_row_s", 0), done.stdout
