"""PostgreSQL failover resumes exactly once: the fault bench's postgres-failover scenario.

Ingest writes into a primary of its own with an asynchronous streaming standby; the
standby's link is held (it receives nothing more) for a while, then the primary is killed
-9 and the standby promoted. The members, given both servers in one multi-host URL with
target_session_attrs=read-write, reconnect to the promoted standby with no restart. Because
the offsets commit with the rows, the commits the standby never received are lost rows
*and* offsets together; the members re-read exactly that tail from Kafka. The local stack's
servers are never stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Env
from tests.services import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("scenario", ["postgres-failover", "postgres-failover-idle"])
def test_a_failover_to_a_standby_that_missed_commits_re_reads_exactly_the_lost_tail(env: Env, scenario: str) -> None:
    """postgres-failover: events keep coming through the failover. postgres-failover-idle: the
    stream has ended and every batch is written when the primary dies, so no batch fails and no
    event comes to tell a member: its health check finding the database back must."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--short", "--scenarios", scenario],
        # past the bench's own drain (180 s, bench/faults.py DRAIN_S) plus its start under load: a
        # run that loses rows then says how many, instead of being cut off (seen once at 300 s)
        env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    (s,) = report["scenarios"]
    got = s["measured"]
    print(f"{scenario}: {got}")  # the figures, for the report (-s)
    assert s["faults"] == 1 and s["note"] == "", done.stdout
    # the standby lost committed batches: rows and offsets, together
    assert got["missed_batches"] > 0 and got["missed_events"] > 0, done.stdout
    # ... and the members re-read exactly those: every event once, offsets at the topics' ends,
    # nothing found already stored (no resends in this scenario)
    assert s["lost"] == 0 and s["rows"] == s["events"] > 0, done.stdout
    assert s["offsets_off"] == 0, done.stdout
    assert (s["resent"], s["duplicates"]) == (0, 0), done.stdout
    # they re-read every owned partition from the promoted standby's offsets at once, instead
    # of running into the fence batch by batch with offsets the new primary never stored
    assert got["fenced_batches"] == 0, done.stdout
    assert 0 < got["kill_to_first_batch_s"] < 60, done.stdout
