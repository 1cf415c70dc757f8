"""The dataset benches' logic without services: the generated fleet and rows, the
columnstore settings, percentiles and the row-count option."""

from __future__ import annotations

import argparse
import struct
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from gatestream.bench_output import nearest_rank
from gatestream.benches.dataset import Dataset, DatasetSpec
from gatestream.cli.bench import _count
from gatestream.consumers.policy import columnstore
from gatestream.producers.event_ids import uuid7_time_ms
from gatestream.schemas import SchemaCatalog

SPEC = DatasetSpec(rows=20_000, days=7, orgs=50, devices=2_000, gateways=200, end=datetime(2026, 12, 1, tzinfo=UTC))
_PG_EPOCH_US = 946_684_800 * 1_000_000


def _fields(row: bytes) -> list[bytes | None]:
    """A binary COPY row taken apart: its fields' bytes (None for NULL)."""
    (count,) = struct.unpack_from("!h", row)
    pos, out = 2, []
    for _ in range(count):
        (n,) = struct.unpack_from("!i", row, pos)
        pos += 4
        out.append(None if n < 0 else row[pos : pos + n])
        pos += max(n, 0)
    assert pos == len(row)
    return out


def test_the_fleet_is_zipf_sized_and_complete() -> None:
    fleet = Dataset(SPEC).fleet
    sizes = Counter(fleet.device_org)
    assert sum(sizes.values()) == SPEC.devices and set(sizes) == set(range(1, SPEC.orgs + 1))
    assert sizes[1] == max(sizes.values()) and sizes[1] > 5 * sizes[SPEC.orgs]  # skewed, largest first
    assert len(set(fleet.device_ids)) == SPEC.devices
    gw = Counter(o for o, _ in fleet.gateways)
    assert len(fleet.gateways) == SPEC.gateways and set(gw) == set(sizes) and gw[1] == max(gw.values())


def test_rows_are_valid_binary_copy_in_time_order_with_uuid7_ids() -> None:
    ds = Dataset(SPEC)
    rows = list(ds.day_rows("active_windows", 3, 500))
    assert len(rows) == 500
    times = []
    for row in rows:
        f = _fields(row)
        assert len(f) == len(Dataset.COLUMNS["active_windows"])
        eid = uuid.UUID(bytes=f[0])
        (t_us,) = struct.unpack("!q", f[3] or b"")
        assert eid.version == 7 and uuid7_time_ms(eid) == (t_us + _PG_EPOCH_US) // 1000
        (created_us,) = struct.unpack("!q", f[8] or b"")
        assert created_us > t_us
        assert f[5] is not None and f[5].endswith(b".exe") and (f[4] or b"")
        times.append(t_us)
    assert times == sorted(times)
    day_start = int(SPEC.start.timestamp() + 3 * 86_400) * 1_000_000 - _PG_EPOCH_US
    assert day_start <= times[0] and times[-1] < day_start + 86_400_000_000


def test_values_repeat_as_monitoring_data_does() -> None:
    rows = list(Dataset(SPEC).day_rows("active_windows", 1, 3000))
    processes = Counter(_fields(r)[5] for r in rows)
    top10 = sum(n for _, n in processes.most_common(10))
    assert top10 > 0.5 * len(rows)  # a few applications dominate
    assert len(processes) > 20  # and a long tail exists


def test_the_dataset_is_reproducible() -> None:
    a = list(Dataset(SPEC).day_rows("visited_sites", 2, 200))
    b = list(Dataset(SPEC).day_rows("visited_sites", 2, 200))
    assert a == b
    snaps = list(Dataset(SPEC).day_rows("gateway_status_snapshots", 2, 0))
    assert snaps and all(len(_fields(r)) == len(Dataset.COLUMNS["gateway_status_snapshots"]) for r in snaps)


def test_columnstore_orderby_is_the_device_then_time() -> None:
    keys = columnstore.key_columns(SchemaCatalog())
    assert keys["monitoring.active_windows"] == "users_on_computers_id"
    assert keys["monitoring.gateway_status_snapshots"] == "gateway_id"
    assert columnstore.orderby("datetime", "users_on_computers_id") == "users_on_computers_id, datetime DESC"
    assert columnstore.orderby("ts", None) == "ts DESC"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 51)]  # 50 runs
    assert nearest_rank(values, 0.50) == 25.0
    assert nearest_rank(values, 0.99) == 50.0
    assert nearest_rank([3.0], 0.99) == 3.0


def test_row_counts_take_suffixes() -> None:
    assert _count("200k") == 200_000 and _count("10M") == 10_000_000 and _count("1.5m") == 1_500_000
    assert _count("250000") == 250_000
    for bad in ("ten", "0", "-5k"):
        with pytest.raises(argparse.ArgumentTypeError):
            _count(bad)
