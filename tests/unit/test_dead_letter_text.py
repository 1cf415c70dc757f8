"""Dead letters for people: times in ISO 8601, the setting that widens the window named,
and a redrive plan that publishes each event once."""

from __future__ import annotations

from datetime import UTC, datetime

from gatestream.consumers.batch import Plausibility
from gatestream.consumers.deadletter import iso_ms
from gatestream.consumers.dlq import DeadLetter, plan, summary
from gatestream.settings import IngestSettings

NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z
DAY = 86_400_000


def test_times_read_as_iso_8601_utc_and_absurd_ones_say_so() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000+00:00"
    assert iso_ms(NOW + 1) == "2026-11-18T11:06:40.001+00:00"
    assert datetime.fromisoformat(iso_ms(-2_208_988_800_000)) == datetime(1900, 1, 1, tzinfo=UTC)
    assert iso_ms(2**63 - 1) == f"{2**63 - 1} ms since the epoch (outside the calendar)"


def test_the_out_of_range_reason_shows_times_and_names_the_setting_that_widens_the_window() -> None:
    p = Plausibility(earliest_ms=946_684_800_000, max_future_ms=DAY)  # 2000-01-01, one day
    ahead = p.problem("datetime", {"datetime": NOW + 2 * DAY}, NOW)
    assert ahead is not None and ahead[0] == "event-time-out-of-range"
    assert "datetime = 2026-11-20T11:06:40.000+00:00 is 172800 s ahead" in ahead[1]
    assert "GATESTREAM_MAX_FUTURE_SKEW_S" in ahead[1] and str(NOW) not in ahead[1]
    before = p.problem("datetime", {"datetime": 0}, NOW)
    assert before is not None and "1970-01-01T00:00:00.000+00:00" in before[1]
    assert "2000-01-01T00:00:00.000+00:00" in before[1] and "GATESTREAM_EARLIEST_EVENT_TIME" in before[1]


def _letter(offset: int, source_offset: int, value: bytes | None = b"v") -> DeadLetter:
    headers = {
        "gatestream.reason": "event-time-out-of-range",
        "gatestream.source.topic": "gs.active_windows",
        "gatestream.source.partition": "0",
        "gatestream.source.offset": str(source_offset),
    }
    return DeadLetter(0, offset, None, value, headers)


def test_a_redrive_publishes_each_event_once_and_skips_those_redriven_unless_again() -> None:
    settings = IngestSettings(dlq_topic="gs.dead-letter")
    # offsets 0..4; source offset 3 dead-lettered twice (a crash before its offset committed); 4 has no value
    letters = [_letter(i, i) for i in range(4)] + [_letter(4, 3), _letter(5, 9, value=None)]
    done = {("gs.active_windows", 0, 1): datetime.now(UTC)}
    first = plan(settings, letters, done, again=False)
    assert [d.offset for d in first.todo] == [0, 2, 3]
    assert (first.already_redriven, first.duplicates, first.skipped) == (1, 1, 1)
    assert [d.offset for d in plan(settings, letters, done, again=True).todo] == [0, 1, 2, 3]
    counts = summary(letters, done)
    assert list(counts) == [("event-time-out-of-range", "gs.active_windows")]
    only = counts[("event-time-out-of-range", "gs.active_windows")]
    assert (only.pending, only.redriven) == (4, 1), "events, not records: source offset 3 counts once"
