"""Connections and waits that cannot block for ever (no services needed):

- product code connects only through ``gatestream.database`` (an AST walk that counts
  what it saw, so it cannot pass by seeing nothing);
- the one wait-for-a-service loop backs off quietly and ends as soon as stop is set;
- the pipeline's pauses after a failed batch end when stop is set, and once stopping it
  does not reconnect to a database that is away;
- a command's connection attempt fails with one line, within its connect timeout.
"""

from __future__ import annotations

import ast
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gatestream.consumers.partitions import Partitions
from gatestream.consumers.pipeline import BatchPipeline, IngestSummary, _InFlight
from gatestream.database import DatabaseUnavailable, connect_once
from gatestream.waiting import after_stuck_stop, wait_for_service

ROOT = Path(__file__).resolve().parents[2]
# gatestream/consumers, producers and schemas are links to these: walk the real folders
PRODUCT_DIRS = ("gatestream", "consumers", "producers", "schemas")
ALLOWED = {ROOT / "gatestream" / "database.py"}  # the one place that calls psycopg.connect


def _product_files() -> Iterator[Path]:
    for top in PRODUCT_DIRS:
        for folder, dirs, files in os.walk(ROOT / top):  # does not follow the links: no file twice
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (Path(folder) / f for f in files if f.endswith(".py"))


def _direct_connects(tree: ast.AST) -> list[int]:
    """Lines calling psycopg.connect, psycopg.Connection.connect or a ``connect`` imported from psycopg."""
    from_psycopg = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "psycopg"
        for alias in node.names
        if alias.name == "connect"
    }
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        dotted = ast.unparse(f)
        if dotted in ("psycopg.connect", "psycopg.Connection.connect") or (
            isinstance(f, ast.Name) and f.id in from_psycopg
        ):
            lines.append(node.lineno)
    return lines


def test_product_code_connects_only_through_gatestream_database() -> None:
    files = list(_product_files())
    walked = {p.relative_to(ROOT).parts[0] for p in files}
    assert len(files) > 40 and walked == set(PRODUCT_DIRS), f"walked {len(files)} files in {sorted(walked)}"
    offenders = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in files
        if p not in ALLOWED
        for line in _direct_connects(ast.parse(p.read_text(), str(p)))
    ]
    assert not offenders, (
        "use gatestream.database.connect (processes) or connect_once (commands): they always set a "
        f"connect_timeout and keepalives; direct psycopg.connect calls: {offenders}"
    )


def test_the_walk_sees_a_direct_connect() -> None:
    tree = ast.parse("import psycopg\nfrom psycopg import connect as c\npsycopg.connect('x')\nc('y')\n")
    assert _direct_connects(tree) == [3, 4]


# ---------------------------------------------------------------------- waiting for a service
class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self.lines.append(("debug", event, kw))


def test_wait_for_service_logs_once_per_error_and_once_when_back() -> None:
    errors = [ConnectionError("refused")] * 3 + [TimeoutError("no answer")] * 2
    log = _Log()

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "up"

    got = wait_for_service("registry", attempt, retry=lambda e: isinstance(e, OSError), first_delay=0.001, logger=log)
    assert got == "up"
    assert [(lvl, kw.get("error")) for lvl, _, kw in log.lines if lvl != "debug"] == [
        ("warning", "refused"),
        ("warning", "no answer"),
        ("info", None),
    ]
    assert [kw["attempt"] for lvl, _, kw in log.lines if lvl == "debug"] == [2, 3, 5], "the rest, at debug level"
    assert log.lines[-1][2]["attempts"] == 5


def test_wait_for_service_raises_a_permanent_error_at_once() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ValueError("bad password")

    with pytest.raises(ValueError):
        wait_for_service("database", attempt, retry=lambda e: isinstance(e, OSError), logger=_Log())
    assert len(calls) == 1


def test_wait_for_service_ends_with_the_last_error_once_stop_is_set() -> None:
    stop = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            wait_for_service(
                "database", _refuse, retry=lambda e: True, stop=stop, first_delay=60, logger=_Log()
            )  # fmt: skip
        except ConnectionRefusedError as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    stop.set()
    t.join(10)  # a hang detector: the wait is 60 s
    assert not t.is_alive() and len(outcome) == 1


def _refuse() -> None:
    raise ConnectionRefusedError("refused")


def test_a_stop_that_does_not_finish_within_its_grace_cuts_and_one_that_does_does_not() -> None:
    stop, finished, cut = threading.Event(), threading.Event(), threading.Event()
    watcher = after_stuck_stop(stop, finished, 0.05, cut.set)
    stop.set()  # ... and the work in hand never finishes
    assert cut.wait(10), "nothing was cut"
    watcher.join(10)

    stop, finished, cut = threading.Event(), threading.Event(), threading.Event()
    watcher = after_stuck_stop(stop, finished, 60, cut.set)
    stop.set()
    finished.set()  # finished within the grace
    watcher.join(10)
    assert not watcher.is_alive() and not cut.is_set()

    stop, finished, cut = threading.Event(), threading.Event(), threading.Event()
    watcher = after_stuck_stop(stop, finished, 0.05, cut.set)
    finished.set()  # ended on its own (idle, a replay's end): the watcher goes away
    watcher.join(10)
    assert not watcher.is_alive() and not cut.is_set()


# ---------------------------------------------------------------------- the pipeline's pauses
class _WatchedStop(threading.Event):
    """A stop event that tells when somebody waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


class _Nothing:
    """Stands for the batch, the offset store, the observer: accepts any call."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: {}


def _pipeline_with_failed_batch(exc: BaseException, stop: threading.Event) -> BatchPipeline:
    p = object.__new__(BatchPipeline)  # no services: only what _await touches
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    p.stop_event = stop
    p.summary = IngestSummary()
    p.parts = Partitions()
    p._batch = _Nothing()  # type: ignore[assignment]
    p.offsets = _Nothing()  # type: ignore[assignment]
    p.observer = _Nothing()  # type: ignore[assignment]
    p._retry_pause = 16.0  # the next pause would be 30 s
    p._inflight = _InFlight(fut, _Nothing(), {("t", 0): (0, 10)}, time.monotonic())  # type: ignore[arg-type]
    return p


def test_the_pause_after_an_unexpected_batch_failure_ends_when_stop_is_set() -> None:
    stop = _WatchedStop()
    p = _pipeline_with_failed_batch(RuntimeError("a bug"), stop)
    t = threading.Thread(target=p._await, daemon=True)
    t.start()
    stop.waited.wait(5)  # it pauses on the stop event (the old code slept 30 s in time.sleep)
    stop.set()
    t.join(10)  # a hang detector, not a speed figure
    assert not t.is_alive(), "the loop thread kept sleeping after stop was set"


def test_a_database_error_while_stopping_does_not_wait_for_the_database() -> None:
    stop = threading.Event()
    stop.set()
    p = _pipeline_with_failed_batch(psycopg.OperationalError("server closed the connection"), stop)
    p._conn = _Nothing()  # type: ignore[assignment]

    def no_reconnect() -> psycopg.Connection[Any]:
        raise AssertionError("reconnected to the database while stopping")

    p._connect = no_reconnect  # type: ignore[method-assign]
    p._await()  # rolled back; the next owner reads the partitions from the stored offsets


# ---------------------------------------------------------------------- a command's attempt
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_command_gets_one_line_when_nothing_listens() -> None:
    port = _free_port()
    with pytest.raises(DatabaseUnavailable) as err:
        connect_once(f"postgresql://nobody@127.0.0.1:{port}/db")
    assert f"127.0.0.1:{port}/db is unreachable" in str(err.value)


def test_a_command_gets_one_line_when_the_server_never_answers() -> None:
    with socket.socket() as silent:  # accepts TCP connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        outcome: list[BaseException] = []

        def attempt() -> None:
            try:
                connect_once(f"postgresql://nobody@127.0.0.1:{port}/db?connect_timeout=2")
            except DatabaseUnavailable as exc:
                outcome.append(exc)

        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        t.join(20)  # a hang detector
        assert not t.is_alive() and len(outcome) == 1, "no connect timeout"
        assert "timeout" in str(outcome[0]) and "\n" not in str(outcome[0])


def test_a_transaction_pooler_gets_no_prepared_statements_and_no_startup_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GATESTREAM_DATABASE_POOLER=transaction: psycopg prepares nothing (a prepared statement lives in one
    server session, which the next transaction may not get), and a URL with startup options (which PgBouncer
    refuses) is a setting error in one line; without a pooler, psycopg's defaults stay."""
    from gatestream.database import DatabaseSettingError, _params

    url = "postgresql://u@127.0.0.1:6432/gatestream"
    monkeypatch.setenv("GATESTREAM_DATABASE_POOLER", "transaction")
    pooled = _params(url, {})
    assert pooled["prepare_threshold"] is None and "options" not in pooled
    with pytest.raises(DatabaseSettingError, match=r"ALTER ROLE") as err:
        _params(url + "?options=-c%20work_mem%3D64MB", {})
    monkeypatch.setenv("GATESTREAM_DATABASE_POOLER", "none")
    assert "prepare_threshold" not in _params(url, {})
    assert "\n" not in str(err.value)
