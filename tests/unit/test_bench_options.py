"""``bench ingest``'s options and the members' start gate (no services)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

import pytest

from gatestream.bench_members import MEMBER_PARTITIONS, _open_gate_when_assigned
from gatestream.cli.bench import _paths


def test_decode_takes_the_two_paths_in_the_order_given() -> None:
    assert _paths("native,python") == ["native", "python"]
    assert _paths("python") == ["python"]
    for bad in ("rust", "native,native", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _paths(bad)


class _Alive:
    def is_alive(self) -> bool:
        return True


def test_the_gate_opens_only_once_every_member_holds_partitions_and_all_are_assigned() -> None:
    held: list[int] = [MEMBER_PARTITIONS, 0, 0]  # the first member in holds everything
    gate = threading.Event()
    seen: list[Any] = []

    def members_arrive() -> None:
        for counts in ([8, 4, 0], [4, 4, 4]):
            assert not gate.wait(0.3), "the gate opened before every member held partitions"
            seen.append(list(held))
            held[:] = counts

    t = threading.Thread(target=members_arrive)
    t.start()
    _open_gate_when_assigned(gate, held, 3, [_Alive()], timeout_s=30)
    t.join()
    assert gate.is_set() and held == [4, 4, 4]
    assert seen == [[MEMBER_PARTITIONS, 0, 0], [8, 4, 0]]
