"""The producer's spool: nothing accepted is lost while the broker is away or the gateway restarts."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gatestream.producers.events import ActiveWindow
from gatestream.producers.publisher import Publisher
from gatestream.producers.spool import Spool
from gatestream.schemas import EventType
from gatestream.topics import ensure_topics
from tests.conftest import Env, PrivateBroker, gatestream_cmd, read_topic
from tests.services import ROOT

pytestmark = pytest.mark.integration


def _events(n: int, start: datetime) -> list[ActiveWindow]:
    return [
        ActiveWindow(
            organization_id=1, users_on_computers_id=i % 5, datetime=start + timedelta(milliseconds=i), title=f"w{i}"
        )
        for i in range(n)
    ]


def _ensure(env: Env, broker: PrivateBroker) -> str:
    settings = env.producer(Path("unused"), bootstrap_servers=broker.bootstrap)
    topic = env.topic(EventType.ACTIVE_WINDOWS)
    ensure_topics(settings, [topic], partitions=3)
    return topic


@pytest.mark.slow
def test_spool_keeps_events_through_a_broker_outage_and_a_restart(
    env: Env, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    spool = tmp_path / "gw.sqlite3"
    topic = _ensure(env, private_broker)
    settings = env.producer(spool, bootstrap_servers=private_broker.bootstrap, message_timeout_ms=2000)
    now = datetime.now(UTC).replace(microsecond=0)

    reports: list[tuple[str, bytes, object]] = []
    pub = Publisher(settings, on_delivery=lambda t, k, e: reports.append((t, k, e)))
    before = _events(50, now)
    pub.publish_many(before)
    assert pub.flush(20) == 0
    assert len(read_topic(private_broker.bootstrap, topic, 50, timeout=10)) == 50
    assert len(reports) == 50 and all(t == topic and e is None for t, _, e in reports)

    private_broker.stop()  # outage: events keep being accepted into the spool
    during = _events(120, now + timedelta(minutes=1))
    pub.publish_many(during)
    assert pub.flush(4) == 120, "nothing can be delivered while the broker is down"
    assert any(e is not None for _, _, e in reports[50:]), "failed deliveries are reported"
    assert pub.close(timeout=1) == 120  # gateway shuts down with events spooled
    assert Spool(spool).depth == 120

    private_broker.start()  # the broker comes back with its log: the first 50 are still there
    # the gateway restarts on the same spool, with the default delivery time-out: the short one
    # above made the outage quick to see, but a write the broker takes longer than that to
    # acknowledge (a broker just restarted, on a loaded machine) fails locally though it may be
    # stored, and is resent: a copy on the topic that ingest skips, which this test must not count
    later_reports: list[object] = []
    pub2 = Publisher(
        settings.model_copy(update={"message_timeout_ms": 30000}), on_delivery=lambda t, k, e: later_reports.append(e)
    )  # fmt: skip
    assert pub2.spool.depth == 120
    assert pub2.flush(60) == 0
    pub2.close()
    assert later_reports == [None] * 120, "after the restart each spooled event was delivered at its first send"

    got = read_topic(private_broker.bootstrap, topic, 170, timeout=15)
    from gatestream.consumers.decoder import Decoder
    from gatestream.schemas import SchemaCatalog
    from gatestream.schemas.registry import make_registry

    cat = SchemaCatalog()
    dec = Decoder(make_registry(settings.schema_registry_url, cat), cat.latest(EventType.ACTIVE_WINDOWS).schema)
    ids = [dec.decode(m.value())["event_id"] for m in got]
    # each event once: the ones acknowledged before the outage were not sent again
    assert sorted(map(str, ids)) == sorted(str(e.event_id) for e in before + during)
    later = {str(e.event_id) for e in during}
    got = [m for m in got if str(dec.decode(m.value())["event_id"]) in later]
    # per device, the order of acceptance is kept
    by_device: dict[bytes, list[str]] = defaultdict(list)
    for m in sorted(got, key=lambda m: (m.partition(), m.offset())):
        by_device[m.key()].append(dec.decode(m.value())["title"])
    for key, titles in by_device.items():
        assert titles == sorted(titles, key=lambda t: int(t[1:])), f"device {key!r} out of order"


@pytest.mark.slow
def test_a_producer_process_exits_with_events_spooled_and_the_next_run_sends_them(
    env: Env, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    spool = tmp_path / "gw.sqlite3"
    topic = _ensure(env, private_broker)
    private_broker.stop()
    environ = env.environ(bootstrap_servers=private_broker.bootstrap, message_timeout_ms=1500)
    first = subprocess.run(
        gatestream_cmd(
            "produce", "--count", "300", "--types", "active_windows", "--spool-path", str(spool), "--flush-timeout", "3"
        ),
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 3, first.stderr[-2000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["still_spooled"] == 300
    assert "still in the spool" in first.stderr

    private_broker.start()
    # the next run with the default delivery time-out (the short one above only makes the
    # outage quick to see; a broker just restarted on a loaded machine may take longer to ack)
    second = subprocess.run(
        gatestream_cmd("produce", "--count", "0", "--spool-path", str(spool)),
        env=env.environ(bootstrap_servers=private_broker.bootstrap),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(read_topic(private_broker.bootstrap, topic, 300, timeout=15)) == 300
    assert Spool(spool).depth == 0
