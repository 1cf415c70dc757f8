"""The micro-batch adapts to the rate: at a trickle an event commits without waiting for
the batch to fill or age (the flush rule itself is unit-tested in tests/unit/test_flush.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env
from tests.helpers import count_rows, publish, start_ingest_thread, stored_offsets, wait_for

pytestmark = pytest.mark.integration

AW = EventType.ACTIVE_WINDOWS


def test_at_a_trickle_each_event_commits_without_waiting_for_a_full_or_old_batch(env: Env, tmp_path: Path) -> None:
    # A batch that could hold 5,000 rows for ten minutes: only the adaptive rule commits it.
    settings = env.ingest(batch_max_rows=5000, batch_max_ms=600_000)
    ing, thread = start_ingest_thread(settings)
    try:
        events = list(generate(3, Fleet(orgs=1, devices_per_org=3), [AW], seed=11))
        publish(env, tmp_path / "a.sqlite3", events[:1])
        assert wait_for(lambda: count_rows(env.database_url, AW) == 1, 30), "the first event was not committed"
        publish(env, tmp_path / "b.sqlite3", events[1:])
        assert wait_for(lambda: count_rows(env.database_url, AW) == 3, 30), "the next events were not committed"
        assert wait_for(lambda: sum(stored_offsets(env.database_url, settings.group_id).values()) == 3, 10)
        assert wait_for(lambda: ing.summary.inserted == 3, 10)  # accounted once the loop saw the commit
        assert ing.summary.batches >= 2 and ing.summary.duplicates == 0
    finally:
        ing.request_stop()
        thread.join(60)
    assert not thread.is_alive()
