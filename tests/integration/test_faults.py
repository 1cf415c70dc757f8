"""The short form of ``gatestream bench faults`` (under 3 minutes): the real pipeline
under every kind of fault the CI machine can inject, every event counted."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import Env
from tests.services import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_fault_is_survived_with_nothing_lost_and_nothing_duplicated(env: Env) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gatestream", "bench", "faults", "--short"],
        env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = r"^(\S+)[ \t]+(\d+)[ \t]+(\d+)[ \t]+(\d+)[ \t]+(\d+)[ \t]+[\d.]+[ \t]+([\d.]+)[ \t]*(.*)$"
    rows = re.findall(row, done.stdout, re.M)
    assert len(rows) == 7, done.stdout
    for scenario, faults, events, lost, dup, rss, note in rows:
        assert int(faults) > 0 and int(events) > 0, f"{scenario}: no fault injected or no event: {done.stdout}"
        assert (int(lost), int(dup), note.strip()) == (0, 0, ""), f"{scenario}: {done.stdout}"
        assert float(rss) < 300, f"{scenario}: a consumer's peak RSS was {rss} MB"
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is True
