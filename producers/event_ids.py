"""Time-ordered event ids: UUIDv7 (RFC 9562 §5.7), made when an event is created.

Layout (big-endian, 128 bits): 48-bit Unix time in milliseconds, 4-bit version (7),
12 bits ``rand_a``, 2-bit variant (``10``), 62 bits ``rand_b``. The 74 bits after the
time are random, except that ids made in the same millisecond by one generator count up
(RFC 9562 §6.2, method 2, "monotonic random"): the next id of a millisecond is the
previous one plus a random increment, so one gateway's ids sort in creation order even in
a burst. Why time-ordered: the primary key (event_id, time) then takes inserts on its
right edge instead of random pages, and ids of the same period sit together.

Python 3.11 has no ``uuid.uuid7`` (3.14 does); these few lines avoid a dependency.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_TAIL_BITS = 74  # rand_a (12) + rand_b (62)
_TAIL_LIMIT = 1 << _TAIL_BITS
_MS_LIMIT = 1 << 48


def pack_uuid7(unix_ms: int, tail: int) -> uuid.UUID:
    """The UUIDv7 of a millisecond and 74 bits of (random or counted) tail."""
    if not 0 <= unix_ms < _MS_LIMIT:
        raise ValueError(f"UUIDv7 time out of range: {unix_ms} ms")
    rand_a, rand_b = tail >> 62, tail & ((1 << 62) - 1)
    return uuid.UUID(int=(unix_ms << 80) | _VERSION_7 | (rand_a << 64) | _VARIANT_RFC | rand_b)


def uuid7_at(unix_ms: int, rnd: random.Random) -> uuid.UUID:
    """A UUIDv7 for a given time with its random bits from ``rnd`` (reproducible data:
    load generators and benches); gateways use ``uuid7()``."""
    return pack_uuid7(unix_ms, rnd.getrandbits(_TAIL_BITS))


def uuid7_time_ms(u: uuid.UUID) -> int:
    """The Unix milliseconds a UUIDv7 carries."""
    return u.int >> 80


class UUID7Generator:
    """Monotonic UUIDv7s from one clock: every id is greater than the previous one, within
    a millisecond and when the clock steps back (the previous time is kept until the clock
    passes it). Thread-safe."""

    def __init__(
        self,
        clock_ns: Callable[[], int] = time.time_ns,
        randbits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._clock_ns = clock_ns
        self._randbits = randbits
        self._lock = threading.Lock()
        self._ms = -1
        self._tail = 0

    def _fresh_tail(self) -> int:
        # the tail's top bit starts at 0, leaving room to count up within a millisecond (RFC 9562 §6.2)
        return self._randbits(_TAIL_BITS - 1)

    def __call__(self) -> uuid.UUID:
        with self._lock:
            now_ms = self._clock_ns() // 1_000_000
            if now_ms > self._ms:
                self._ms, self._tail = now_ms, self._fresh_tail()
            else:  # same millisecond, or the clock went back: count up from the last id
                self._tail += 1 + self._randbits(32)
                if self._tail >= _TAIL_LIMIT:  # the millisecond is used up: borrow the next one
                    self._ms, self._tail = self._ms + 1, self._fresh_tail()
            return pack_uuid7(self._ms, self._tail)


uuid7 = UUID7Generator()
"""A new time-ordered event id (the process's one generator)."""
