"""gatestream bench latency: its arithmetic, its command line and its refusal without commit timestamps
(the run itself needs the services: `gatestream bench latency --seconds 5 --runs 1` is its sanity run)."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest

from gatestream.bench_latency import INDEX_BITS, MEASURED, _event_id, percentiles
from gatestream.bench_output import table, write_json
from gatestream.cli import build_parser


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    values = array("d", [i / 1000 for i in range(1, 1001)])  # 1 ms .. 1000 ms
    assert percentiles(values) == {"p50": 500.0, "p99": 990.0, "p99.9": 999.0, "max": 1000.0}
    assert percentiles(array("d", [0.007])) == {"p50": 7.0, "p99": 7.0, "p99.9": 7.0, "max": 7.0}


def test_an_event_id_carries_its_index_and_phase_and_stays_a_uuid4() -> None:
    for i in (0, 1, 123_456_789, (1 << INDEX_BITS) - 1):
        eid = _event_id(MEASURED, i)
        assert eid.version == 4
        assert eid.int & ((1 << INDEX_BITS) - 1) == i
        assert _event_id(MEASURED - 1, (1 << INDEX_BITS) - 1) < _event_id(MEASURED, 0) <= eid


def test_the_command_line_takes_rates_and_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "latency", "--rate", "1000,10000", "--seconds", "120", "--json", "f.json"])
    assert (args.rate, args.seconds, args.runs, args.json) == ([1000, 10000], 120, 3, Path("f.json"))
    for bad in ("fast", "0", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "latency", "--rate", bad])
    assert "events per second" in capsys.readouterr().err


def test_without_commit_timestamps_the_bench_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gatestream import bench_latency
    from gatestream.settings import IngestSettings

    monkeypatch.setattr(bench_latency, "commit_timestamps_on", lambda url: False)
    rc = bench_latency.bench_latency(IngestSettings(), rates=[1000], seconds=1, runs=1, warmup_s=0, json_path=None)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "track_commit_timestamp is off" in err


def test_table_and_json(tmp_path: Path) -> None:
    text = table(["rate", "p99"], [["1,000/s", 12.25], ["10,000/s", 1234.5]])
    assert text.splitlines() == ["rate          p99", "--------  -------", "1,000/s      12.2", "10,000/s  1,234.5"]
    write_json(tmp_path / "f.json", "latency", {"rates": {"1000": {"median_ms": {}}}})
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["bench"] == "latency" and doc["rates"] == {"1000": {"median_ms": {}}} and doc["machine"]["cpus"] >= 1
