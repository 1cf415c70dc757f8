"""A realistic monitoring dataset for the storage and query benches, loaded by binary COPY.

Shape (issue 23 §4): ``days`` days (60) ending now, ``orgs`` organizations (1,000),
``devices`` desktop seats (users_on_computers_id, 50,000) and ``gateways`` (5,000),
with ``rows`` event rows in all, shared between the hypertables as ``SHARES`` says.

What makes it realistic rather than uniform:
- organization sizes follow Zipf (rank^-``zipf_s``): a few large organizations hold most
  devices, gateways and events; each device's activity is log-normal within its
  organization (some users are much busier);
- time: working hours, weekends quieter, rows of a day in time order (as ingest writes
  them); ``created_at`` is the event time plus an ingest delay of under 3 s;
- values repeat as monitoring data does: a few hundred applications and sites, Zipf
  popular, each with its own set of window titles / paths (a long tail of document
  names and video ids included); icons follow the application;
- ids: UUIDv7 at the event time; gateways are in ``monitoring.gateway_instances`` and
  report status snapshots on a steady cadence.

Rows are encoded straight into PostgreSQL's binary COPY format (no per-value adaptation):
a day of one table is one COPY and one transaction.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import random
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from gatestream.benches.vocabulary import (
    DELAYS_US,
    HABIT_CUM,
    HOUR_WEIGHTS,
    RESOLUTIONS,
    Vocabulary,
    copy_text,
    zipf_weights,
)
from gatestream.database import connect_once

SHARES: dict[str, float] = {
    "active_windows": 0.55,
    "visited_sites": 0.33,
    "gateway_status_snapshots": 0.05,
    "user_sessions": 0.04,
    "screenshots": 0.03,
}
_PG_EPOCH_S = 946_684_800  # 2000-01-01 in Unix seconds
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_head = struct.Struct("!hi16siiiiiq").pack  # field count, event_id, organization_id, device, time
_int4 = struct.Struct("!ii").pack
_ts = struct.Struct("!iq").pack
_f8 = struct.Struct("!id").pack
_gw_head = struct.Struct("!hi16siii16s").pack  # field count, event_id, organization_id, gateway_id


def _ts_us(unix_us: int) -> bytes:
    return _ts(8, unix_us - _PG_EPOCH_S * 1_000_000)


@dataclass(frozen=True)
class DatasetSpec:
    rows: int
    days: int = 60
    orgs: int = 1000
    devices: int = 50_000
    gateways: int = 5_000
    apps: int = 300
    sites: int = 300
    zipf_s: float = 1.0
    seed: int = 23
    end: datetime = field(default_factory=lambda: datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0))

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    def rows_of(self, table: str) -> int:
        return round(self.rows * SHARES[table])


@dataclass
class Fleet:
    """Organizations, devices and gateways with their activity weights."""

    org_weights: list[float]  # index org-1
    device_ids: list[int]
    device_org: list[int]
    device_cum: list[float]  # cumulative activity weights over device_ids
    gateways: list[tuple[int, uuid.UUID]]  # (organization, gateway id)
    org_devices: dict[int, list[int]]

    @classmethod
    def build(cls, spec: DatasetSpec, rnd: random.Random) -> Fleet:
        ow = zipf_weights(spec.orgs, spec.zipf_s)
        total = sum(ow)
        sizes = [max(1, math.floor(spec.devices * w / total)) for w in ow]
        sizes[0] += spec.devices - sum(sizes)  # the largest one absorbs the rounding
        ids = list(range(1, spec.devices + 1))
        rnd.shuffle(ids)  # seats were registered over time, organizations interleaved
        device_org: list[int] = []
        for org, n in enumerate(sizes, start=1):
            device_org += [org] * n
        weights = [rnd.lognormvariate(0, 0.8) for _ in ids]
        gw_sizes = [1 + math.floor((spec.gateways - spec.orgs) * w / total) for w in ow]
        gw_sizes[0] += spec.gateways - sum(gw_sizes)
        gateways = [
            (org, uuid.UUID(int=rnd.getrandbits(128), version=4)) for org, n in enumerate(gw_sizes, 1) for _ in range(n)
        ]
        org_devices: dict[int, list[int]] = {}
        for d, o in zip(ids, device_org, strict=True):
            org_devices.setdefault(o, []).append(d)
        return cls(ow, ids, device_org, list(itertools.accumulate(weights)), gateways, org_devices)


def _day_times(rnd: random.Random, day_start_us: int, n: int) -> list[int]:
    """``n`` event times (Unix µs, millisecond precision) in one day, working hours heavier, sorted."""
    hours = rnd.choices(range(24), weights=HOUR_WEIGHTS, k=n)
    r = rnd.random
    out = [day_start_us + (h * 3_600_000 + int(r() * 3_600_000)) * 1000 for h in hours]
    out.sort()
    return out


def _day_shares(spec: DatasetSpec) -> list[float]:
    w = [0.2 if (spec.start + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(spec.days)]
    total = sum(w)
    return [x / total for x in w]


def _uuid7_bytes(unix_us: int, rnd: random.Random) -> bytes:
    ms = unix_us // 1000
    tail = rnd.getrandbits(74)
    return ((ms << 80) | (0x7 << 76) | ((tail >> 62) << 64) | (0b10 << 62) | (tail & ((1 << 62) - 1))).to_bytes(16)


RowEncoder = Callable[[random.Random, int, int, int], bytes]  # (rnd, unix_us, org, device) -> row


class Dataset:
    """The generated rows of every table, one day at a time (reproducible from the seed)."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        rnd = random.Random(spec.seed)
        self.fleet = Fleet.build(spec, rnd)
        self.vocab = Vocabulary(spec.apps, spec.sites, rnd)
        self._sets: dict[tuple[str, int], list[int]] = {}

    # each encoder returns one binary COPY row in its table's COLUMNS order
    COLUMNS: dict[str, Sequence[str]] = {
        "active_windows": ("event_id", "organization_id", "users_on_computers_id", "datetime", "title",
                           "process_name", "icon", "active_time", "created_at"),
        "visited_sites": ("event_id", "organization_id", "users_on_computers_id", "datetime", "url", "title",
                          "browser", "duration", "created_at"),
        "user_sessions": ("event_id", "organization_id", "users_on_computers_id", "datetime", "session_event",
                          "username", "session_id", "duration_seconds", "created_at"),
        "screenshots": ("event_id", "organization_id", "users_on_computers_id", "datetime", "storage_url",
                        "size_bytes", "sha256", "width", "height", "mime_type", "created_at"),
        "gateway_status_snapshots": ("event_id", "organization_id", "gateway_id", "timestamp", "cpu_usage",
                                     "disk_usage", "memory_usage", "queue_depth", "connected_agents", "created_at"),
    }  # fmt: skip

    def _habits(self, kind: str, dev: int, cum: list[float], size: int) -> list[int]:
        """A device's own working set (``size`` windows or pages drawn by global popularity):
        a person switches between a few windows and sites all day, so their rows repeat."""
        key = (kind, dev)
        found = self._sets.get(key)
        if found is None:
            rnd = random.Random(f"{self.spec.seed}:{kind}:{dev}")
            found = [bisect.bisect(cum, rnd.random() * cum[-1]) for _ in range(size)]
            self._sets[key] = found
        return found

    def _pick_habit(self, rnd: random.Random, kind: str, dev: int, cum: list[float]) -> int:
        habits = self._habits(kind, dev, cum, len(HABIT_CUM))
        return habits[bisect.bisect(HABIT_CUM, rnd.random() * HABIT_CUM[-1])]

    def _active_window(self, rnd: random.Random, us: int, org: int, dev: int) -> bytes:
        v = self.vocab
        frag = v.windows[self._pick_habit(rnd, "windows", dev, v.windows_cum)]
        active = v.active_times[rnd.getrandbits(12)]
        return (
            _head(9, 16, _uuid7_bytes(us, rnd), 4, org, 4, dev, 8, us - _PG_EPOCH_S * 1_000_000)
            + frag + _int4(4, active) + _ts_us(us + DELAYS_US[rnd.getrandbits(12)])
        )  # fmt: skip

    def _visited_site(self, rnd: random.Random, us: int, org: int, dev: int) -> bytes:
        v = self.vocab
        url, title = v.urls[self._pick_habit(rnd, "urls", dev, v.urls_cum)]
        if url.endswith("="):
            url += "".join(rnd.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", k=11))
        browser = v.browsers[bisect.bisect(v.browsers_cum, rnd.random() * v.browsers_cum[-1])]
        return (
            _head(9, 16, _uuid7_bytes(us, rnd), 4, org, 4, dev, 8, us - _PG_EPOCH_S * 1_000_000)
            + copy_text(url) + copy_text(title) + browser + _int4(4, v.durations[rnd.getrandbits(12)])
            + _ts_us(us + DELAYS_US[rnd.getrandbits(12)])
        )  # fmt: skip

    def _user_session(self, rnd: random.Random, us: int, org: int, dev: int) -> bytes:
        v = self.vocab
        ev = v.sessions[bisect.bisect(v.sessions_cum, rnd.random() * v.sessions_cum[-1])]
        return (
            _head(9, 16, _uuid7_bytes(us, rnd), 4, org, 4, dev, 8, us - _PG_EPOCH_S * 1_000_000)
            + ev + copy_text(f"user{dev}") + copy_text(str(dev % 7 + 1)) + _int4(4, rnd.randrange(0, 28_800))
            + _ts_us(us + DELAYS_US[rnd.getrandbits(12)])
        )  # fmt: skip

    def _screenshot(self, rnd: random.Random, us: int, org: int, dev: int) -> bytes:
        digest = rnd.randbytes(32).hex()
        w, h = RESOLUTIONS[dev % len(RESOLUTIONS)]
        return (
            _head(11, 16, _uuid7_bytes(us, rnd), 4, org, 4, dev, 8, us - _PG_EPOCH_S * 1_000_000)
            + copy_text(f"s3://screenshots/{org}/{dev}/{digest[:16]}.webp")
            + struct.pack("!iq", 8, rnd.randrange(40_000, 900_000))
            + copy_text(digest) + _int4(4, w) + _int4(4, h) + copy_text("image/webp")
            + _ts_us(us + DELAYS_US[rnd.getrandbits(12)])
        )  # fmt: skip

    def day_rows(self, table: str, day: int, count: int) -> Iterator[bytes]:
        """``count`` rows of ``table`` on day ``day`` (0 = the first), in time order."""
        rnd = random.Random(f"{self.spec.seed}:{table}:{day}")
        day_start = int((self.spec.start + timedelta(days=day)).timestamp()) * 1_000_000
        if table == "gateway_status_snapshots":
            yield from self._snapshots(rnd, day, day_start)
            return
        encode: RowEncoder = {
            "active_windows": self._active_window, "visited_sites": self._visited_site,
            "user_sessions": self._user_session, "screenshots": self._screenshot,
        }[table]  # fmt: skip
        f = self.fleet
        picks = [bisect.bisect(f.device_cum, x * f.device_cum[-1]) for x in (rnd.random() for _ in range(count))]
        for us, i in zip(_day_times(rnd, day_start, count), picks, strict=True):
            yield encode(rnd, us, f.device_org[i], f.device_ids[i])

    def _snapshots(self, rnd: random.Random, day: int, day_start: int) -> Iterator[bytes]:
        """Every gateway reports on a steady cadence (``rows_of`` spread over the gateways and days)."""
        spec = self.spec
        per_gateway = max(1, spec.rows_of("gateway_status_snapshots") // len(self.fleet.gateways))
        every_us = spec.days * 86_400_000_000 // per_gateway
        start_us = int(spec.start.timestamp()) * 1_000_000
        day_end = day_start + 86_400_000_000
        per_org = collections.Counter(o for o, _ in self.fleet.gateways)
        rows: list[tuple[int, bytes]] = []
        for n, (org, gw) in enumerate(self.fleet.gateways):
            phase = (n * 7_919_000_003) % every_us
            k = max(0, -(-(day_start - start_us - phase) // every_us))
            t = start_us + phase + k * every_us
            agents = len(self.fleet.org_devices.get(org, ())) // per_org[org]
            while t < day_end:
                us = t - t % 1000
                load = HOUR_WEIGHTS[(us // 3_600_000_000) % 24] / 10
                rows.append((us, (
                    _gw_head(10, 16, _uuid7_bytes(us, rnd), 4, org, 16, gw.bytes)
                    + _ts_us(us) + _f8(8, round(min(99.0, 5 + 60 * load + rnd.uniform(0, 15)), 1))
                    + _f8(8, round(30 + (n % 50) + day * 0.2, 1))
                    + _f8(8, round(40 + 30 * load + rnd.uniform(0, 10), 1))
                    + _int4(4, 0 if rnd.random() < 0.8 else rnd.randrange(1, 5000)) + _int4(4, min(agents, 200))
                    + _ts_us(us + DELAYS_US[rnd.getrandbits(12)])
                )))  # fmt: skip
                t += every_us
        rows.sort(key=lambda r: r[0])
        for _, row in rows:
            yield row


@dataclass
class LoadResult:
    rows: dict[str, int]
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return sum(self.rows.values()) / self.seconds if self.seconds else 0.0


def load(url: str, spec: DatasetSpec, *, progress: Callable[[str], None] | None = None) -> LoadResult:
    """Generate the dataset and COPY it into the hypertables (and the gateways into
    ``monitoring.gateway_instances``); a day of one table per transaction; ANALYZE at the end."""
    ds = Dataset(spec)
    shares = _day_shares(spec)
    counts: dict[str, int] = dict.fromkeys(SHARES, 0)
    t0 = time.perf_counter()
    with connect_once(url) as conn:
        _load_gateways(conn, ds, spec)
        for day in range(spec.days):
            for table in SHARES:
                n = round(spec.rows_of(table) * shares[day])
                stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    sql.Identifier("monitoring", table), sql.SQL(", ").join(map(sql.Identifier, Dataset.COLUMNS[table]))
                )
                buf = bytearray(_SIGNATURE)
                with conn.transaction(), conn.cursor().copy(stmt) as cp:
                    for row in ds.day_rows(table, day, n):
                        buf += row
                        counts[table] += 1
                        if len(buf) > 1 << 20:
                            cp.write(bytes(buf))
                            buf.clear()
                    buf += _TRAILER
                    cp.write(bytes(buf))
            if progress and (day + 1) % 10 == 0:
                progress(f"  loaded day {day + 1}/{spec.days}: {sum(counts.values()):,} rows")
        for table in SHARES:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("monitoring", table)))
    return LoadResult(counts, time.perf_counter() - t0)


def _load_gateways(conn: psycopg.Connection[Any], ds: Dataset, spec: DatasetSpec) -> None:
    with (
        conn.transaction(),
        conn.cursor().copy(
            "COPY monitoring.gateway_instances (id, organization_id, name, status, last_seen_at) FROM STDIN"
        ) as cp,
    ):
        for n, (org, gw) in enumerate(ds.fleet.gateways):
            cp.write_row((gw, org, f"gw-{org}-{n}", "ONLINE", spec.end))
