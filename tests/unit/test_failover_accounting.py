"""The failover drill's count of committed batches a promoted standby never received
(bench.accounting.batches_not_in): read from the members' logs, up to each one's first
database error, against the offsets the standby kept."""

from __future__ import annotations

import json
from pathlib import Path

from bench.accounting import batches_not_in, fenced_batches


def _line(event: str, **fields: object) -> str:
    return json.dumps({"event": event, **fields})


def test_batches_past_the_standbys_offsets_before_the_first_database_error_are_the_missed_ones(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "consumer-0.log", tmp_path / "consumer-1.log"
    a.write_text("\n".join([
        _line("batch committed", offsets={"t.x[0]": [0, 10]}),  # the standby has it
        _line("batch committed", offsets={"t.x[0]": [10, 15], "t.y[1]": [0, 4]}),  # past it on t.x[0]
        _line("database error; batch rolled back, will be retried", offsets={"t.x[0]": [15, 20]}),
        _line("batch committed", offsets={"t.x[0]": [10, 20]}),  # the re-read, on the new primary
    ]) + "\n")  # fmt: skip
    b.write_text("\n".join([
        _line("batch committed", offsets={"t.y[0]": [0, 7]}),
        _line("batch committed", offsets={"t.y[0]": [7, 9]}),
        '{"event": "batch committed", "offsets": {"t.y[0]": [9,',  # cut short by kill -9
        _line("batch fenced: another member moved these offsets; rolled back"),
    ]) + "\n")  # fmt: skip
    kept = {("t.x", 0): 10, ("t.y", 1): 4, ("t.y", 0): 7}
    # a[1] (t.x[0] 10 -> 15) and b[1] (t.y[0] 7 -> 9); 5 + 2 events behind
    assert batches_not_in([a, b], kept) == (2, 7)
    assert batches_not_in([a, b], {("t.x", 0): 15, ("t.y", 1): 4, ("t.y", 0): 9}) == (0, 0)
    assert fenced_batches([a, b]) == 1
