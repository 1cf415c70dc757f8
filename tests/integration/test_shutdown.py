"""A database that hangs or refuses must not keep a process from ending, nor a command
from answering: ``gatestream status`` says so in one line within seconds, and an ingest
member ends on SIGTERM in seconds, rc 0, one line, its batch in hand read again later.

The database is made to misbehave through a TCP proxy of the test's own (tests/proxy.py),
never by touching the shared server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gatestream.producers.loadgen import Fleet, generate
from gatestream.schemas import EventType
from tests.conftest import Env, free_port, gatestream_cmd, run_gatestream
from tests.helpers import count_all, http_get, publish, unschedule_cron_jobs, wait_for
from tests.proxy import TcpProxy
from tests.services import ROOT, kafka_conf

pytestmark = pytest.mark.integration

STOP_BOUND_S = 20  # a hang detector: the process should end in seconds; not a speed figure


@pytest.fixture
def db_proxy(env: Env) -> Iterator[TcpProxy]:
    info = psycopg.conninfo.conninfo_to_dict(env.database_url)
    proxy = TcpProxy(str(info["host"]), int(str(info["port"])))
    yield proxy
    proxy.close()


def through(env: Env, proxy: TcpProxy) -> str:
    """The test's database URL (a libpq keyword string here), pointed at the proxy."""
    return psycopg.conninfo.make_conninfo(env.database_url, host="127.0.0.1", port=str(proxy.port))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _sigterm(proc: subprocess.Popen[bytes], while_: str) -> int:
    """SIGTERM, and the exit code once the process ended (the test fails if it does not, in time)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_BOUND_S} s after SIGTERM {while_}")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_status_on_a_database_that_never_answers_ends_with_one_line(env: Env, db_proxy: TcpProxy) -> None:
    db_proxy.hang()  # the TCP connection is accepted, the server never says a word
    try:
        done = run_gatestream(env.environ(database_url=through(env, db_proxy)), "status", timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("gatestream status was still waiting for the database after 45 s")
    assert db_proxy.connections >= 1, "the command went through the proxy"
    assert done.returncode == 1, done
    err = _lines(done.stderr)
    assert len(err) == 1, err
    assert "database" in err[0] and "unreachable" in err[0] and "Traceback" not in done.stderr, err


def test_status_of_a_group_that_never_stored_an_offset_says_so_and_fails(env: Env) -> None:
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO gatestream.consumer_offsets (consumer_group, topic, partition, next_offset) "
            "VALUES ('some-known-group', %s, 0, 5)",
            (env.topic(EventType.VISITED_SITES),),
        )
    done = run_gatestream(env.environ(), "status", "--group", "no-such-group", timeout=60)
    assert done.returncode == 1, done
    assert "group no-such-group" in done.stdout  # the table is still shown
    # and what the database runs, edition named (the stack's main server: the Community edition
    # where TimescaleDB was built from source, else the Apache one)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        license_ = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()
    edition = {"timescale": "Community edition", "apache": "Apache edition"}[str(license_[0] if license_ else "")]
    assert re.search(rf"database PostgreSQL \d+\.\d+, TimescaleDB \d+\.\d+\.\d+ \({edition}\)", done.stdout), (
        done.stdout
    )
    err = _lines(done.stderr)
    assert len(err) == 1, err
    assert "'no-such-group' has no stored offsets" in err[0] and "some-known-group" in err[0], err

    as_json = run_gatestream(env.environ(), "status", "--json", "--group", "no-such-group", timeout=60)
    assert as_json.returncode == 1 and json.loads(as_json.stdout), as_json
    known = run_gatestream(env.environ(), "status", "--json", "--group", "some-known-group", timeout=60)
    assert known.returncode == 0, known


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["hang", "refuse"])
def test_sigterm_ends_an_ingest_member_while_the_database_is_away(
    env: Env, db_proxy: TcpProxy, tmp_path: Path, outage: str
) -> None:
    port = free_port()
    out, err = tmp_path / "ingest.out", tmp_path / "ingest.err"
    proc = subprocess.Popen(
        gatestream_cmd("ingest", "--batch-rows", "300", "--batch-ms", "200", "--metrics-port", str(port)),
        env=env.environ(database_url=through(env, db_proxy)),
        cwd=ROOT,
        stdout=out.open("wb"),
        stderr=err.open("wb"),
    )

    def unready() -> bool:
        return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 503

    try:
        publish(env, tmp_path / "s1.sqlite3", list(generate(200, Fleet(), list(EventType), seed=31)))
        assert wait_for(lambda: sum(count_all(env.database_url).values()) == 200, 60), err.read_text()[-3000:]
        if outage == "hang":
            db_proxy.hang()
        else:
            db_proxy.refuse()
        # events arrive while the database is away: a batch is in hand when the stop comes
        publish(env, tmp_path / "s2.sqlite3", list(generate(200, Fleet(), list(EventType), seed=32)))
        wait_for(unready, 15)  # the member noticed (if it can tell)
        code = _sigterm(proc, f"with the database {outage}ing")
    finally:
        _reap(proc)
    stderr = err.read_text()
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    stopped = [json.loads(line) for line in _lines(stderr) if '"ingest stopped"' in line]
    assert len(stopped) == 1, stderr[-3000:]
    assert _lines(out.read_text()) and json.loads(_lines(out.read_text())[-1])["consumed"] >= 200

    # nothing lost: the batch that was in hand is read again by the next member
    db_proxy.resume()
    drained = run_gatestream(env.environ(), "ingest", "--stop-after-idle", "2", timeout=120)
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert sum(count_all(env.database_url).values()) == 400


@pytest.mark.slow
def test_sigterm_ends_the_policy_consumer_in_the_middle_of_a_reconcile_the_database_never_answers(
    env: Env, db_proxy: TcpProxy, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    from gatestream.topics import ensure_topics

    topic, group = f"{env.prefix}policy-changes", f"{env.prefix}policy"
    # the topic before the first event: the consumer makes it at its start too, which on a loaded
    # machine came after the test's 10 s of waiting to publish
    ensure_topics(env.policy(policy_topic=topic), [topic], partitions=1)
    err = tmp_path / "policy.err"
    proc = subprocess.Popen(
        gatestream_cmd("policy-consumer", "--full-interval", "3600"),
        env=env.environ(database_url=through(env, db_proxy), policy_topic=topic, policy_group_id=group),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=err.open("wb"),
    )
    try:
        p = Producer(kafka_conf(env.services.bootstrap_servers))

        def change_event() -> None:
            p.produce(topic, value=b'{"resource_type": "active_windows", "op": "set"}')
            assert p.flush(10) == 0

        def events_read() -> int:
            return err.read_text().count('"policy change event"')

        # a first event while the database answers: the consumer owns its partition and reads
        # (under KIP-848 the assignment may come seconds after the startup reconcile)
        change_event()
        assert wait_for(lambda: events_read() == 1 and err.read_text().count('"reconciled"') >= 2, 60), err.read_text()[
            -3000:
        ]
        db_proxy.hang()
        change_event()
        # the second is read; its reconcile waits on a database that never answers
        assert wait_for(lambda: events_read() == 2, 30), err.read_text()[-3000:]
        code = _sigterm(proc, "in a reconcile the database never answers")
    finally:
        _reap(proc)
        unschedule_cron_jobs(env.database_url)
    stderr = err.read_text()
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert len([line for line in _lines(stderr) if '"policy consumer stopped"' in line]) == 1, stderr[-3000:]
