"""Replay against the real broker and TimescaleDB: backfill without duplicates, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from gatestream.consumers.pipeline import IngestSummary
from gatestream.consumers.replay import ReplaySelection, replay
from gatestream.consumers.replay_reader import RangeReader
from gatestream.consumers.routes import build_routes
from gatestream.producers.events import ActiveWindow
from gatestream.producers.publisher import Publisher
from gatestream.schemas import EventType
from tests.conftest import Env, gatestream_cmd, read_topic, run_gatestream
from tests.helpers import count_rows, publish, start_ingest_thread, stored_offsets, wait_for
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration

AW = EventType.ACTIVE_WINDOWS
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)


def _events(n: int, start: datetime = BASE, seed: int = 0) -> list[ActiveWindow]:
    """n events over 6 hours, organizations 1..3, devices 1..12."""
    step = timedelta(hours=6) / n
    return [
        ActiveWindow(
            organization_id=1 + (i + seed) % 3,
            users_on_computers_id=1 + i % 12,
            datetime=start + i * step,
            title=f"w{i}",
            active_time=i % 50,
        )
        for i in range(n)
    ]


def _ingest_all(env: Env, tmp_path: Path, events: list[ActiveWindow]) -> None:
    publish(env, tmp_path / "spool.sqlite3", events)
    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=2.0))
    t.join(60)
    assert not t.is_alive()
    assert count_rows(env.database_url, AW) == len(events)


def _delete(db_url: str, where: str, params: tuple[object, ...]) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(f"DELETE FROM monitoring.active_windows WHERE {where}", params).rowcount  # noqa: S608


def test_a_deleted_slice_comes_back_exactly_and_whole_replays_add_nothing(env: Env, tmp_path: Path) -> None:
    n = 3000
    _ingest_all(env, tmp_path, _events(n))
    hour = BASE + timedelta(hours=2)
    deleted = _delete(
        env.database_url, "organization_id = 2 AND datetime >= %s AND datetime < %s", (hour, hour + timedelta(hours=1))
    )
    assert deleted > 100
    settings = env.ingest()

    sel = ReplaySelection(event_types=(AW,), since=hour, until=hour + timedelta(hours=1), organizations=frozenset({2}))
    dry = replay(settings, sel, dry_run=True)
    assert (dry.inserted, dry.dry_run, dry.run) == (deleted, True, None)
    assert count_rows(env.database_url, AW) == n - deleted, "a dry run writes nothing"
    with psycopg.connect(env.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM gatestream.replay_runs").fetchone() == (0,), "nor records a run"
        assert conn.execute(
            "SELECT count(*) FROM gatestream.consumer_offsets WHERE consumer_group LIKE 'gatestream-replay%%'"
        ).fetchone() == (0,)

    s = replay(settings, sel)
    assert s.complete and s.inserted == deleted and s.already_present == 0
    assert count_rows(env.database_url, AW) == n
    with psycopg.connect(env.database_url) as conn:
        back = conn.execute(
            "SELECT count(*) FROM monitoring.active_windows WHERE organization_id = 2 "
            "AND datetime >= %s AND datetime < %s",
            (hour, hour + timedelta(hours=1)),
        ).fetchone()
    assert back == (deleted,)

    whole = ReplaySelection(event_types=(AW,))
    for restart in (False, True):  # twice more, the second time from scratch
        again = replay(settings, whole, restart=restart)
        assert (again.inserted, again.already_present, again.read) == (0, n, n)
    assert count_rows(env.database_url, AW) == n
    # the live ingest group's offsets were never touched by the replays
    assert sum(stored_offsets(env.database_url, f"{env.prefix}ingest").values()) == n


@pytest.mark.slow
def test_a_killed_replay_continues_when_run_again(env: Env, tmp_path: Path) -> None:
    n = 4000
    _ingest_all(env, tmp_path, _events(n))
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    # a relative start is resolved once, when the run starts: the same command line resumes it
    args = ["replay", "--types", "active_windows", "--from", "-30h", "--name", "after-restore", "--max-rate", "1500",
            "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        gatestream_cmd(*args),
        env=env.environ(batch_max_rows=200, batch_max_ms=200),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert wait_for(lambda: count_rows(env.database_url, AW) >= n // 4, 30), "replay made no progress"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    halfway = count_rows(env.database_url, AW)
    assert 0 < halfway < n

    again = subprocess.run(
        gatestream_cmd(*args[:-3], "--no-progress"),
        env=env.environ(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["complete"] is True and summary["resumed"] is True
    assert summary["read"] < n, "the second run resumed instead of starting over"
    assert summary["inserted"] + halfway == n and summary["already_present"] == 0
    assert count_rows(env.database_url, AW) == n


def test_replay_while_live_ingest_runs_on_fresh_events(env: Env, tmp_path: Path) -> None:
    old = _events(2000)
    _ingest_all(env, tmp_path, old)
    deleted = _delete(env.database_url, "organization_id = 3", ())
    assert deleted > 0

    live, live_thread = start_ingest_thread(env.ingest(stop_after_idle_s=4.0))
    fresh = _events(3000, start=BASE + timedelta(hours=7), seed=1)

    def produce() -> None:
        pub = Publisher(env.producer(tmp_path / "spool2.sqlite3"))
        for i in range(0, len(fresh), 100):
            pub.publish_many(fresh[i : i + 100])
            pub.poll(0.02)
        assert pub.close(30) == 0

    producer = threading.Thread(target=produce)
    producer.start()
    s = replay(env.ingest(), ReplaySelection(event_types=(AW,), organizations=frozenset({3})))
    producer.join(60)
    live_thread.join(90)
    assert not live_thread.is_alive()

    assert s.complete and s.inserted >= deleted
    total = len(old) + len(fresh)
    assert count_rows(env.database_url, AW) == total
    with psycopg.connect(env.database_url) as conn:
        assert conn.execute("SELECT count(DISTINCT event_id) FROM monitoring.active_windows").fetchone() == (total,)
    # the replay can only have raced live ingest on fresh org-3 events: those it inserted
    # first, live ingest found present (and the other way round) - never a second row
    assert s.inserted - deleted == live.summary.duplicates
    assert sum(stored_offsets(env.database_url, f"{env.prefix}ingest").values()) == total


def _replay_cli(env: Env, *args: str) -> tuple[int, dict[str, object] | None, str]:
    done = subprocess.run(
        gatestream_cmd("replay", "--no-progress", *args), env=env.environ(), cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return done.returncode, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None), done.stderr


@pytest.mark.slow
def test_a_rerun_after_a_restore_restores_again_and_a_name_keeps_its_selection(env: Env, tmp_path: Path) -> None:
    n = 2000
    _ingest_all(env, tmp_path, _events(n))
    rc, first, _ = _replay_cli(env, "--types", "active_windows")
    assert rc == 0 and first is not None and (first["complete"], first["inserted"], first["already_present"]) == (
        True, 0, n,
    )  # fmt: skip
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    rc, again, err = _replay_cli(env, "--types", "active_windows")
    assert rc == 0 and again is not None, err
    assert "ended complete" in err and "starting a new run" in err, "says in one line what it does"
    assert (again["complete"], again["inserted"], again["run"]) == (True, n, first["run"] + 1)  # type: ignore[operator]
    assert count_rows(env.database_url, AW) == n

    rc, one, _ = _replay_cli(env, "--types", "active_windows", "--name", "x", "--orgs", "1")
    assert rc == 0 and one is not None and one["complete"]
    rc, none, err = _replay_cli(env, "--types", "active_windows", "--name", "x", "--orgs", "2")
    assert rc == 2 and none is None
    assert "belongs to another selection" in err and '"orgs": [1]' in err and '"orgs": [2]' in err

    listed = subprocess.run(
        gatestream_cmd("replays", "list", "--json"), env=env.environ(), cwd=ROOT, capture_output=True, text=True
    )
    runs = json.loads(listed.stdout)
    assert [r["state"] for r in runs] == ["complete"] * 3
    assert all(r["done"] == r["planned"] for r in runs)
    forgot = subprocess.run(
        gatestream_cmd("replays", "forget", "--older-than", "0s"), env=env.environ(), cwd=ROOT,
        capture_output=True, text=True,
    )  # fmt: skip
    assert forgot.returncode == 0 and "forgot 3" in forgot.stdout
    with psycopg.connect(env.database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM gatestream.consumer_offsets WHERE consumer_group LIKE 'gatestream-replay%%'"
        ).fetchone()
    assert left == (0,), "their progress rows went with them"


@pytest.mark.slow
def test_every_run_ends_and_bad_arguments_get_rc_2_with_a_clear_line(env: Env, tmp_path: Path) -> None:
    _ingest_all(env, tmp_path, _events(500))
    aw = ("--types", "active_windows")
    # a start past every partition's end: an honest, immediate, complete summary
    rc, s, err = _replay_cli(env, *aw, "--from-offset", "99999")
    assert rc == 0 and s is not None and (s["complete"], s["read"], s["inserted"]) == (True, 0, 0), err
    # epoch seconds only as an explicit time; a range in the past ends too
    rc, s, err = _replay_cli(env, *aw, "--from", "@1000000000", "--to", "@1000003600")
    assert rc == 0 and s is not None and s["complete"] and s["inserted"] == 0, err
    refused = {
        "bare number": ["--from", "1795000000"],
        "huge bare number": ["--to", "99999999999999999999"],
        "from after to": ["--from", "-1h", "--to", "-2h"],
        "offsets reversed": ["--from-offset", "50", "--to-offset", "10"],
        "duration overflow": ["--from", "-99999999999d"],
        "not ASCII digits": ["--from", "²"],
        "no partition": ["--partitions", ","],
        "no organization": ["--orgs", ""],
        "negative rate": ["--max-rate", "-5"],
        "negative skew": ["--skew", "-5m", "--from", "-1h"],
    }
    for case, args in refused.items():
        rc, s, err = _replay_cli(env, *aw, *args)
        assert rc == 2 and s is None, f"{case}: rc {rc}, {err}"
        assert "Traceback" not in err and err.strip(), f"{case}: {err}"
        assert len([line for line in err.splitlines() if "error" in line.lower()]) == 1, f"{case}: {err}"
    # a year-1 start is a valid (if wide) selection, not a crash
    rc, s, err = _replay_cli(env, *aw, "--from", "0001-01-01T00:00Z", "--dry-run")
    assert rc == 0 and s is not None and s["read"] == 500, err


def test_a_replay_started_while_the_database_is_down_waits_for_it(env: Env, tmp_path: Path) -> None:
    from tests.conftest import free_port

    # at debug level every attempt is a line (the first a warning, the rest debug)
    environ = env.environ(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", log_level="debug")
    log = tmp_path / "replay.log"
    with log.open("w") as err_file:
        proc = subprocess.Popen(
            gatestream_cmd("replay", "--types", "active_windows", "--no-progress"), env=environ, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=err_file, text=True,
        )  # fmt: skip
        try:
            retried = wait_for(
                lambda: log.read_text().count("database unreachable; retrying") >= 2 or proc.poll() is not None, 60
            )
            assert retried and proc.poll() is None, "it retried instead of exiting"
        finally:
            proc.terminate()
            proc.wait(20)
    err = log.read_text()
    assert err.count("database unreachable; retrying") >= 2 and "Traceback" not in err, err[-2000:]


@pytest.mark.slow
def test_dry_run_says_what_the_real_run_does(env: Env, tmp_path: Path) -> None:
    """Fresh, half done, after completion, with --restart, with duplicates on the topic."""
    n = 3000
    events = _events(n)
    _ingest_all(env, tmp_path, events)
    publish(env, tmp_path / "again.sqlite3", events[:400])  # a gateway resent 400 events
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    args = ("--types", "active_windows", "--name", "dry")

    def dry(*extra: str) -> dict[str, object]:
        rc, s, err = _replay_cli(env, *args, "--dry-run", *extra)
        assert rc == 0 and s is not None, err
        return s

    fresh = dry()
    assert (fresh["inserted"], fresh["already_present"], fresh["read"]) == (n, 400, n + 400)
    assert count_rows(env.database_url, AW) == 0
    # half done: a real run killed midway, then the dry run of its resumption
    proc = subprocess.Popen(
        gatestream_cmd("replay", *args, "--no-progress", "--max-rate", "800"),
        env=env.environ(batch_max_rows=200), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert wait_for(lambda: count_rows(env.database_url, AW) >= n // 3, 60)
    proc.kill()
    proc.wait(10)
    half = dry()
    rc, real, _ = _replay_cli(env, *args)
    assert rc == 0 and real is not None and real["resumed"] is True
    assert (half["inserted"], half["already_present"]) == (real["inserted"], real["already_present"])
    assert count_rows(env.database_url, AW) == n
    # after completion: a new run, which finds everything present
    after = dry()
    rc, real, _ = _replay_cli(env, *args)
    assert real is not None and (after["inserted"], real["inserted"], real["already_present"]) == (0, 0, n + 400)
    # --restart after a truncate
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    restart = dry("--restart")
    rc, real, _ = _replay_cli(env, *args, "--restart")
    assert real is not None and restart["inserted"] == real["inserted"] == n


def test_max_rate_limits_the_replay_in_batches_of_at_most_a_second(env: Env, tmp_path: Path) -> None:
    """The rate limit's behaviour; the rate it achieves is ``gatestream bench replay --max-rate``'s figure."""
    n, rate = 600, 200
    _ingest_all(env, tmp_path, _events(n))
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE monitoring.active_windows")
    readers: list[RangeReader] = []
    settings = env.ingest(batch_max_rows=5000, batch_max_ms=60_000)  # large: the limit must bound them
    s = replay(settings, ReplaySelection(event_types=(AW,)), max_rate=rate, reader_hook=readers.append)
    assert s.complete and s.inserted == n and count_rows(env.database_url, AW) == n
    assert s.report()["max_rate"] == rate, "the summary reports the limit it read at"
    r = readers[0]
    # a smooth rate: polls of a fifth of a second of events, a commit at least every second
    assert (r.poll_max, r.settings.batch_max_rows, r.settings.batch_max_ms) == (rate // 5, rate, 1000)
    assert r.summary.batches >= n // rate, "no batch holds more than a second of events"


@pytest.mark.slow
def test_a_replay_does_not_dead_letter_an_event_again(env: Env, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    _ingest_all(env, tmp_path, _events(300))
    raw = Producer(kafka_conf(env.services.bootstrap_servers))
    raw.produce(env.topic(AW), key=b"1", value=b"not Avro at all")
    assert raw.flush(10) == 0
    ing, t = start_ingest_thread(env.ingest(stop_after_idle_s=2.0))
    t.join(60)
    assert ing.summary.dead_lettered == 1
    for _ in range(2):
        rc, s, err = _replay_cli(env, "--types", "active_windows")
        assert rc == 0 and s is not None and s["dead_lettered"] == 0, err
    dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=2, timeout=5)
    assert len(dead) == 1, "the poison event is in the dead-letter topic once"


def _batch_failures() -> float:
    return REGISTRY.get_sample_value("gatestream_ingest_batch_failures_total", {"reason": "database"}) or 0.0


def test_a_replay_whose_first_commit_fails_reads_nothing_before_its_from_offset(env: Env, tmp_path: Path) -> None:
    """The first batch rolls back (a database blip) while nothing is stored yet: the run
    reads its range again from --from-offset, not from the partition's beginning."""
    events = _events(800)
    publish(env, tmp_path / "spool.sqlite3", events)
    msgs = read_topic(env.services.bootstrap_servers, env.topic(AW), expected=len(events))
    assert len(msgs) == len(events)
    settings = env.ingest()
    with psycopg.connect(env.database_url) as conn:
        decoder = build_routes(conn, settings, {env.topic(AW): AW})[env.topic(AW)].decoder
    at = {decoder.decode(m.value())["event_id"]: m.offset() for m in msgs}
    start = 50
    selected = {event_id for event_id, offset in at.items() if offset >= start}
    assert 0 < len(selected) < len(events), "every partition has events below and above the start"

    failures = _batch_failures()
    s = replay(env.ingest(fault_hooks="fail-commit:1"), ReplaySelection(event_types=(AW,), from_offset=start))
    assert _batch_failures() == failures + 1, "the first commit failed and was retried"
    assert s.complete
    with psycopg.connect(env.database_url) as conn:
        stored = {str(r[0]) for r in conn.execute("SELECT event_id FROM monitoring.active_windows").fetchall()}
    below = stored - selected
    assert not below, f"{len(below)} rows from offsets below --from-offset {start}"
    assert stored == selected and s.inserted == len(selected)


class _Failure(Exception):
    """Raised by a test's progress callback: the replay fails midway."""


def _failed_run(env: Env, name: str) -> tuple[str, int]:
    """A replay of every active window that fails after its first commit: (its group, its run id)."""
    readers: list[RangeReader] = []

    def fail_after_a_commit(s: IngestSummary, _left: dict[str, int]) -> None:
        if s.batches:
            raise _Failure

    with pytest.raises(_Failure):
        replay(
            env.ingest(batch_max_rows=100), ReplaySelection(event_types=(AW,)), name=name,
            progress=fail_after_a_commit, reader_hook=readers.append,
        )  # fmt: skip
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute("SELECT run_id, state FROM gatestream.replay_runs WHERE name = %s", (name,)).fetchone()
    assert row is not None and row[1] == "failed"
    assert stored_offsets(env.database_url, readers[0].group), "it stored progress before it failed"
    return readers[0].group, row[0]


def _runs(env: Env) -> dict[str, dict[str, Any]]:
    listed = run_gatestream(env.environ(), "replays", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {r["name"]: r for r in json.loads(listed.stdout)}


def _state(db_url: str, name: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT state FROM gatestream.replay_runs WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_failed_run_runs_again_when_resumed(env: Env, tmp_path: Path) -> None:
    n = 600
    publish(env, tmp_path / "spool.sqlite3", _events(n))
    _failed_run(env, "fails")
    seen: list[str] = []

    def watch(_s: IngestSummary, _left: dict[str, int]) -> None:
        if not seen:
            seen.append(_state(env.database_url, "fails"))

    s = replay(env.ingest(), ReplaySelection(event_types=(AW,)), name="fails", progress=watch)
    assert seen == ["running"], "while it is resumed, the run is running (replays list says so)"
    assert s.resumed and s.complete and s.read < n
    assert _state(env.database_url, "fails") == "complete" and count_rows(env.database_url, AW) == n


def test_forget_keeps_unfinished_runs_and_their_progress_unless_forced(env: Env, tmp_path: Path) -> None:
    publish(env, tmp_path / "spool.sqlite3", _events(600))
    done = replay(env.ingest(), ReplaySelection(event_types=(AW,)), name="done")
    assert done.complete
    group, run_id = _failed_run(env, "fails")

    forgot = run_gatestream(env.environ(), "replays", "forget", "--older-than", "0s")
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot 1 " in forgot.stdout and "kept 1 unfinished" in forgot.stdout and "--force" in forgot.stdout
    listed = _runs(env)
    assert set(listed) == {"fails"}, "the complete run went, the failed one stayed"
    assert (listed["fails"]["run_id"], listed["fails"]["state"]) == (run_id, "failed")
    assert listed["fails"]["group"] == group, "replays list names the group the run stored its progress under"
    assert 0 < listed["fails"]["done"] < listed["fails"]["planned"], "with its progress"

    forced = run_gatestream(env.environ(), "replays", "forget", "--older-than", "0s", "--force")
    assert forced.returncode == 0 and "forgot 1 " in forced.stdout and "kept" not in forced.stdout, forced.stdout
    assert _runs(env) == {}
    assert stored_offsets(env.database_url, group) == {}, "forget removed the progress of the group the run used"
