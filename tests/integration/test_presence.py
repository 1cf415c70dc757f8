"""Gateway and agent presence, and the tenant check, from the event streams (issue 24 §1)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gatestream.consumers.deadletter import Reason
from gatestream.producers.events import ActiveWindow, GatewayStatusSnapshot
from gatestream.producers.publisher import Publisher
from tests.conftest import Env, run_gatestream
from tests.helpers import start_ingest_thread, wait_for

pytestmark = pytest.mark.integration


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _gateway(conn: psycopg.Connection[Any], gid: uuid.UUID) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT organization_id, status, last_seen_at, reported_at, reported_figures "
        "FROM monitoring.gateway_instances WHERE id = %s",
        (gid,),
    ).fetchone()


def _agents(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT agent_uid, gateway_id, hostname, status, last_seen_at FROM monitoring.agent_instances ORDER BY 1"
    ).fetchall()


def test_presence_moves_forward_only_and_the_sweep_marks_the_silent_offline(db_url: str) -> None:
    """The batch step's two statements and the sweep, as ingest calls them: an older report
    never flips the status or figures back, an older event never moves last_seen_at back, a
    replayed batch changes nothing, the sweep marks the silent OFFLINE once, and a newer
    event (not an old one) brings them back."""
    gw = uuid.uuid4()
    now = datetime.now(UTC).replace(microsecond=0)
    old, older, newer = now - timedelta(minutes=10), now - timedelta(minutes=20), now - timedelta(minutes=9)

    def report(conn: psycopg.Connection[Any], t: datetime, status: str, disk: float) -> None:
        conn.execute(
            "SELECT gatestream.track_gateways(%s, %s, %s, %s, %s::jsonb[])",
            ([gw], [_ms(t)], [_ms(t)], [status], [json.dumps({"disk_usage": disk})]),
        )

    def seen(conn: psycopg.Connection[Any], t: datetime, host: str | None = None) -> None:
        conn.execute("SELECT gatestream.track_gateways(%s, %s, %s, %s, %s::jsonb[])", ([gw], [_ms(t)], [None],
                     [None], [None]))  # fmt: skip
        conn.execute("SELECT gatestream.track_agents(%s, %s, %s, %s)", (["42"], [gw], [host], [_ms(t)]))

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO monitoring.gateway_instances (id, organization_id) VALUES (%s, 7)", (gw,))
        report(conn, old, "ERROR", 97.0)
        seen(conn, old, "desk-1")
        first = _gateway(conn, gw)
        assert first is not None and first[1:3] == ("ERROR", old) and first[4] == {"disk_usage": 97.0}
        report(conn, older, "ONLINE", 10.0)  # out of order: an older report
        seen(conn, older, "other-host")  # and an older event
        report(conn, old, "ERROR", 97.0)  # a replay of the same
        assert _gateway(conn, gw) == first
        assert _agents(conn) == [("42", gw, "desk-1", "ONLINE", old)]

        assert conn.execute("SELECT * FROM gatestream.sweep_presence(interval '5 minutes')").fetchone() == (1, 1)
        assert conn.execute("SELECT * FROM gatestream.sweep_presence(interval '5 minutes')").fetchone() == (0, 0)
        report(conn, old, "ERROR", 97.0)  # replayed after the sweep: still OFFLINE
        seen(conn, old)
        assert _gateway(conn, gw)[1] == "OFFLINE"  # type: ignore[index]
        assert _agents(conn)[0][3] == "OFFLINE"
        seen(conn, newer)  # it speaks again
        assert _gateway(conn, gw)[1:3] == ("ONLINE", newer)  # type: ignore[index]
        assert _agents(conn) == [("42", gw, "desk-1", "ONLINE", newer)]


def test_last_seen_moves_in_grains_and_a_status_change_applies_at_once(db_url: str) -> None:
    """With a grain of 30 s (GATESTREAM_PRESENCE_GRAIN_S): a newer event 10 s later writes
    no row (xmin unchanged: no new row version); one 40 s later moves the gateway and the
    agent; a new host name and a newer status report apply within the grain; an older event
    never moves anything back; after the sweep, an event 1 s newer brings both back ONLINE
    at once."""
    gw = uuid.uuid4()
    grain = timedelta(seconds=30)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)

    def seen(conn: psycopg.Connection[Any], t: datetime, host: str | None = None) -> None:
        conn.execute("SELECT gatestream.track_gateways(%s, %s, %s, %s, %s::jsonb[], %s)", ([gw], [_ms(t)], [None],
                     [None], [None], grain))  # fmt: skip
        conn.execute("SELECT gatestream.track_agents(%s, %s, %s, %s, %s)", (["42"], [gw], [host], [_ms(t)], grain))

    def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT xmin::text, status, last_seen_at FROM monitoring.gateway_instances WHERE id = %s "
            "UNION ALL SELECT xmin::text, status || ' ' || hostname, last_seen_at FROM monitoring.agent_instances",
            (gw,),
        ).fetchall()

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO monitoring.gateway_instances (id, organization_id) VALUES (%s, 7)", (gw,))
        seen(conn, t0, "desk-1")
        first = rows(conn)
        assert [r[1:] for r in first] == [("ONLINE", t0), ("ONLINE desk-1", t0)]
        seen(conn, t0 + timedelta(seconds=10))
        assert rows(conn) == first, "an event within the grain wrote a row"
        seen(conn, t0 + timedelta(seconds=40))
        moved = rows(conn)
        assert [r[1:] for r in moved] == [("ONLINE", t0 + timedelta(seconds=40)),
                                          ("ONLINE desk-1", t0 + timedelta(seconds=40))]  # fmt: skip
        assert all(m[0] != f[0] for m, f in zip(moved, first, strict=True))
        seen(conn, t0 + timedelta(seconds=45), "desk-2")  # the agent's host changed: at once; the gateway waits
        host = rows(conn)
        assert host[0] == moved[0] and host[1][1:] == ("ONLINE desk-2", t0 + timedelta(seconds=45))
        report = t0 + timedelta(seconds=50)  # a newer report applies within the grain
        figures = [json.dumps({"disk_usage": 97.0})]
        conn.execute("SELECT gatestream.track_gateways(%s, %s, %s, %s, %s::jsonb[], %s)",
                     ([gw], [_ms(report)], [_ms(report)], ["ERROR"], figures, grain))  # fmt: skip
        assert rows(conn)[0][1:] == ("ERROR", report)
        before = rows(conn)
        seen(conn, t0)  # an older event: nothing moves back, nothing is written
        assert rows(conn) == before

        assert conn.execute("SELECT * FROM gatestream.sweep_presence(interval '5 minutes')").fetchone() == (1, 1)
        back = report + timedelta(seconds=1)
        seen(conn, back)  # well within the grain, but it changes the status
        assert [r[1:] for r in rows(conn)] == [("ONLINE", back), ("ONLINE desk-2", back)]


def _publish(env: Env, spool: Path, events: list[Any], gateway: uuid.UUID | None, host: str | None = None) -> None:
    pub = Publisher(env.producer(spool), gateway_id=gateway, agent_hostname=host)
    pub.publish_many(events)
    assert pub.close(timeout=30) == 0


def _dead_letters(db_url: str) -> dict[str, str]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT source_topic || ':' || source_offset, reason FROM gatestream.dead_letters"))


@pytest.mark.parametrize("decode", ["auto", "off"], ids=["native", "python"])
def test_ingest_tracks_presence_and_dead_letters_another_organizations_events(
    env: Env, tmp_path: Path, decode: str
) -> None:
    """Gateway A (organization 1, registered by the product) sends its seats' windows, two
    status reports (the newer one, disk 97 %, says ERROR; the older arrives later and
    changes nothing) and one window naming organization 2: that one is dead-lettered
    tenant-mismatch and never becomes a row. Gateway B is unknown: registered under the
    organization of its first event. A publisher with no gateway identity: its event lands,
    no presence. A second group re-reading everything (a replay) changes no presence row.
    On the native path (decode=auto) the checked rows are COPY tuples the transcoder made:
    a warm-up event teaches it the schema ids first."""
    gw_a, gw_b = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO monitoring.gateway_instances (id, organization_id, name) VALUES (%s, 1, 'A')", (gw_a,)
        )

    def window(org: int, seat: int, t: datetime) -> ActiveWindow:
        return ActiveWindow(organization_id=org, users_on_computers_id=seat, datetime=t, title="x")

    def snapshot(t: datetime, disk: float) -> GatewayStatusSnapshot:
        return GatewayStatusSnapshot(organization_id=1, gateway_id=gw_a, timestamp=t, cpu_usage=5.0,
                                     disk_usage=disk, memory_usage=40.0, queue_depth=3, connected_agents=2)  # fmt: skip

    _publish(env, tmp_path / "w.sqlite3", [window(1, 10, now - timedelta(minutes=1)),
                                           snapshot(now - timedelta(minutes=1), 50.0)], gw_a, "desk-10")  # fmt: skip
    ing, t = start_ingest_thread(env.ingest(native_decode=decode))
    kinds: set[type] = set()
    real_apply = ing._presence.apply

    def apply(conn: Any, tables: Any) -> Any:
        kinds.update(type(r) for tb in tables.values() for r in tb.rows)
        return real_apply(conn, tables)

    ing._presence.apply = apply
    try:
        with psycopg.connect(env.database_url, autocommit=True) as conn:

            def rows() -> int:
                row = conn.execute("SELECT count(*) FROM monitoring.active_windows").fetchone()
                return int(row[0]) if row else 0

            def snapshots() -> int:
                row = conn.execute("SELECT count(*) FROM monitoring.gateway_status_snapshots").fetchone()
                return int(row[0]) if row else 0

            assert wait_for(lambda: rows() == 1 and snapshots() == 1, timeout=60)
            kinds.clear()
            mismatch = window(2, 11, now)
            earlier = now - timedelta(seconds=5)
            reports = [snapshot(now, 97.0), snapshot(now - timedelta(seconds=30), 10.0)]
            _publish(env, tmp_path / "a.sqlite3", [window(1, 11, now), mismatch, window(1, 12, earlier), *reports],
                     gw_a, "desk-a")  # fmt: skip
            _publish(env, tmp_path / "b.sqlite3", [window(3, 30, now)], gw_b)
            _publish(env, tmp_path / "n.sqlite3", [window(5, 50, now)], None)
            assert wait_for(lambda: rows() == 5 and len(_dead_letters(env.database_url)) == 1, timeout=60)
            assert list(_dead_letters(env.database_url).values()) == [Reason.TENANT_MISMATCH]
            assert conn.execute("SELECT count(*) FROM monitoring.active_windows WHERE event_id = %s",
                                (mismatch.event_id,)).fetchone() == (0,)  # fmt: skip
            a = _gateway(conn, gw_a)
            assert a is not None and a[:4] == (1, "ERROR", now, now)
            assert a[4] == {"cpu_usage": 5.0, "disk_usage": 97.0, "memory_usage": 40.0, "queue_depth": 3,
                            "connected_agents": 2}  # fmt: skip
            b = _gateway(conn, gw_b)
            assert b is not None and b[:3] == (3, "ONLINE", now)
            agents = _agents(conn)
            assert [(u, g, h, s) for u, g, h, s, _ in agents] == [
                ("10", gw_a, "desk-10", "ONLINE"), ("11", gw_a, "desk-a", "ONLINE"),
                ("12", gw_a, "desk-a", "ONLINE"), ("30", gw_b, None, "ONLINE"),
            ]  # fmt: skip
            # (seat 50's event came without a gateway identity: no presence for it)
            if decode == "auto":
                assert ing._native is not None and kinds == {bytes}, f"rows checked were {kinds}"
            else:
                assert kinds == {tuple}
            before = (conn.execute("SELECT * FROM monitoring.gateway_instances ORDER BY id").fetchall(), agents)
    finally:
        ing.request_stop()
        t.join(30)
    replay, t2 = start_ingest_thread(env.ingest(native_decode=decode, group_id=f"{env.prefix}again",
                                                stop_after_idle_s=1.0))  # fmt: skip
    t2.join(60)
    assert replay.summary.consumed == 9 and replay.summary.inserted == 0
    with psycopg.connect(env.database_url) as conn:
        after = (conn.execute("SELECT * FROM monitoring.gateway_instances ORDER BY id").fetchall(), _agents(conn))
    assert after == before


def test_unknown_gateways_refused_by_setting_and_the_fleet_command(env: Env, tmp_path: Path) -> None:
    """GATESTREAM_UNKNOWN_GATEWAY=refuse: an unregistered gateway's event is dead-lettered
    unknown-gateway and the gateway is not registered; a registered one's lands. `gatestream
    fleet --org` lists it with its agent; `fleet sweep` marks them OFFLINE."""
    known, stranger = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO monitoring.gateway_instances (id, organization_id, name) VALUES (%s, 7, 'hq')",
                     (known,))  # fmt: skip
    t0 = datetime.now(UTC) - timedelta(minutes=2)
    _publish(env, tmp_path / "k.sqlite3", [ActiveWindow(organization_id=7, users_on_computers_id=70, datetime=t0)],
             known, "desk-70")  # fmt: skip
    _publish(env, tmp_path / "s.sqlite3", [ActiveWindow(organization_id=7, users_on_computers_id=71, datetime=t0)],
             stranger)  # fmt: skip
    ing, t = start_ingest_thread(env.ingest(unknown_gateway="refuse", stop_after_idle_s=1.0))
    t.join(60)
    assert ing.summary.consumed == 2 and ing.summary.inserted == 1
    assert list(_dead_letters(env.database_url).values()) == [Reason.UNKNOWN_GATEWAY]
    with psycopg.connect(env.database_url) as conn:
        assert _gateway(conn, stranger) is None

    out = run_gatestream(env.environ(), "fleet", "--org", "7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "organization 7: 1 gateways, 1 agents (OFFLINE after 300s silent)"
    assert str(known) in lines[2] and "hq" in lines[2] and "ONLINE" in lines[2] and lines[2].rstrip().endswith("2m")
    assert "agent" in lines[3] and "70" in lines[3] and "desk-70" in lines[3]
    sweep = run_gatestream(env.environ(), "fleet", "sweep", "--offline-after", "60")
    assert sweep.stdout.strip() == "marked OFFLINE after 60s of silence: 1 gateways, 1 agents", sweep.stderr
    listed = json.loads(run_gatestream(env.environ(), "fleet", "--org", "7", "--json").stdout)
    assert [(m["kind"], m["state"]) for m in listed] == [("gateway", "OFFLINE"), ("agent", "OFFLINE")]
    bad = run_gatestream(env.environ(), "fleet")
    assert bad.returncode == 2 and "--org N is required" in bad.stderr


def test_a_redriven_event_keeps_its_gateway_identity_and_is_checked_again(env: Env, tmp_path: Path) -> None:
    """A gateway registered under organization 1 sends organization 2's event: dead-lettered
    tenant-mismatch. Redriven as it is (`gatestream dlq redrive`), it carries its identity
    headers back and is refused again (without them it would land unchecked). Once the
    gateway's registration is corrected, the next redrive lands it and tracks the gateway
    and its agent (with the host name from the redriven headers)."""
    gw = uuid.uuid4()
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO monitoring.gateway_instances (id, organization_id) VALUES (%s, 1)", (gw,))
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    event = ActiveWindow(organization_id=2, users_on_computers_id=20, datetime=t0)
    _publish(env, tmp_path / "g.sqlite3", [event], gw, "desk-20")

    def ingest() -> None:  # (one group: each run reads on from where the last one stopped)
        _, t = start_ingest_thread(env.ingest(stop_after_idle_s=1.0))
        t.join(60)

    def redrive() -> dict[str, int]:
        out = run_gatestream(env.environ(), "dlq", "redrive", "--reason", Reason.TENANT_MISMATCH)
        assert out.returncode == 0, out.stderr[-1000:]
        return dict(json.loads(out.stdout))

    def landed() -> int:
        with psycopg.connect(env.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM monitoring.active_windows WHERE event_id = %s",
                               (event.event_id,)).fetchone()  # fmt: skip
            return int(row[0]) if row else 0

    ingest()
    assert list(_dead_letters(env.database_url).values()) == [Reason.TENANT_MISMATCH] and landed() == 0
    assert redrive()["published"] == 1
    ingest()
    letters = _dead_letters(env.database_url)
    assert list(letters.values()) == [Reason.TENANT_MISMATCH] * 2 and landed() == 0, "the copy was refused too"
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("UPDATE monitoring.gateway_instances SET organization_id = 2 WHERE id = %s", (gw,))
    assert redrive()["published"] == 1  # (the copy's dead letter; the first one was redriven already)
    ingest()
    assert landed() == 1
    with psycopg.connect(env.database_url) as conn:
        assert _gateway(conn, gw)[:3] == (2, "ONLINE", t0)  # type: ignore[index]
        assert _agents(conn) == [("20", gw, "desk-20", "ONLINE", t0)]
