"""The short form of the fault bench (``python -m bench.faults --short``, under 3 minutes):
the real pipeline under every kind of fault the CI machine can inject, every topic message
accounted for once. Its PostgreSQL and broker faults hit servers of its own (bench.postgres,
bench.brokers): the stack's services, which the other tests use meanwhile, are never stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Env
from tests.services import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Scenarios whose producer never resends (it is neither killed nor cut off from its broker):
# any duplicate ingest counts there is a batch read again after its commit.
NO_RESENDS = {"consumer-kill-9", "fault-hooks", "connection-killed", "postgres-crash", "rebalance-storm"}


# The short form's scenarios in three groups of about a minute each, so pytest-xdist runs them
# on different workers instead of one worker spending three minutes on all of them.
GROUPS = [
    ["consumer-kill-9", "fault-hooks"],
    ["connection-killed", "postgres-crash", "rebalance-storm"],
    ["broker-kill-9", "producer-kill-9"],
]


def test_the_groups_are_the_short_form() -> None:
    from bench.faults import SHORT

    assert sorted(s for g in GROUPS for s in g) == sorted(SHORT)


@pytest.mark.parametrize("scenarios", GROUPS, ids=["consumers", "database", "broker-and-producer"])
def test_every_fault_is_survived_with_every_message_accounted_for_once(env: Env, scenarios: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--short", "--scenarios", ",".join(scenarios)],
        env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert [r["scenario"] for r in report["scenarios"]] == scenarios, done.stdout
    for s in report["scenarios"]:
        name = s["scenario"]
        assert s["faults"] > 0 and s["events"] > 0, f"{name}: no fault injected or no event: {done.stdout}"
        assert s["note"] == "", f"{name}: {done.stdout}"
        assert s["offsets_off"] == 0, f"{name}: stored offsets are not the topics' end offsets: {done.stdout}"
        assert s["lost"] == 0 and s["rows"] == s["events"], f"{name}: rows are not the events published"
        assert s["duplicates"] == s["resent"], f"{name}: ingest read events again beyond the resent copies"
        if name in NO_RESENDS:
            assert (s["resent"], s["duplicates"]) == (0, 0), f"{name}: {done.stdout}"
