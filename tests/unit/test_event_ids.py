"""UUIDv7 event ids (RFC 9562 §5.7): layout, time order, monotonic within a millisecond."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from gatestream.producers.event_ids import UUID7Generator, pack_uuid7, uuid7, uuid7_at, uuid7_time_ms
from gatestream.producers.events import ActiveWindow
from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms * 1_000_000 + 999_999  # nanoseconds; the last of its millisecond


def test_version_and_variant_bits() -> None:
    for u in [uuid7() for _ in range(1000)]:
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert (u.int >> 76) & 0xF == 7
        assert (u.int >> 62) & 0b11 == 0b10


def test_the_first_48_bits_are_the_unix_milliseconds() -> None:
    ms = 1_795_000_000_123
    u = UUID7Generator(clock_ns=FakeClock(ms))()
    assert uuid7_time_ms(u) == ms
    assert u.hex.startswith(f"{ms:012x}")
    assert uuid7_at(ms, random.Random(1)).int >> 80 == ms


def test_ids_sort_by_creation_time() -> None:
    clock = FakeClock(1_795_000_000_000)
    gen = UUID7Generator(clock_ns=clock)
    ids = []
    for step in range(200):
        clock.ms += 1 + step % 3
        ids.append(gen())
    assert ids == sorted(ids)
    assert sorted(ids, key=lambda u: u.int) == ids  # the database compares uuids as bytes, i.e. as integers
    assert len(set(ids)) == len(ids)


def test_monotonic_under_a_burst_in_one_millisecond() -> None:
    clock = FakeClock(1_795_000_000_000)
    gen = UUID7Generator(clock_ns=clock)
    burst = [gen() for _ in range(10_000)]  # all in the same millisecond
    assert all(a.int < b.int for a, b in zip(burst, burst[1:], strict=False))
    assert {uuid7_time_ms(u) for u in burst} == {clock.ms}
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in burst)


def test_monotonic_when_the_clock_steps_back() -> None:
    clock = FakeClock(1_795_000_000_500)
    gen = UUID7Generator(clock_ns=clock)
    first = gen()
    clock.ms -= 400  # NTP steps the clock back
    later = [gen() for _ in range(50)]
    assert all(first.int < u.int for u in later)
    assert later == sorted(later)


def test_a_used_up_millisecond_borrows_the_next_one() -> None:
    clock = FakeClock(1_795_000_000_000)
    gen = UUID7Generator(clock_ns=clock)
    a = gen()
    gen._tail = (1 << 74) - 1  # as after ~2**41 ids in one millisecond
    b = gen()
    assert uuid7_time_ms(a) == clock.ms and uuid7_time_ms(b) == clock.ms + 1
    assert a.int < b.int and b.version == 7 and b.variant == uuid.RFC_4122


def test_pack_refuses_a_time_past_48_bits() -> None:
    try:
        pack_uuid7(1 << 48, 0)
    except ValueError as e:
        assert "out of range" in str(e)
    else:
        raise AssertionError("no error")


def test_events_get_a_uuid7_when_made_and_keep_it() -> None:
    before = uuid7()
    e = ActiveWindow(organization_id=1, users_on_computers_id=2, datetime=datetime.now(UTC))
    assert e.event_id.version == 7 and e.event_id > before
    assert e.to_record()["event_id"] == e.to_record()["event_id"] == e.event_id  # a resend encodes the same id


def test_the_load_generator_makes_uuid7_ids_at_the_event_time() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = list(generate(50, Fleet(), [t.value for t in EventType], start=start, spread=timedelta(hours=1)))
    for e in events:
        record = e.to_record()
        eid, when = record["event_id"], next(v for v in record.values() if isinstance(v, datetime))
        assert eid.version == 7
        assert uuid7_time_ms(eid) == (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    again = [e.to_record()["event_id"] for e in generate(50, Fleet(), [t.value for t in EventType], start=start)]
    assert again == [e.to_record()["event_id"] for e in events]  # reproducible from the seed
