"""Change data capture of retention_policies (gatestream.cdc, consumers/policy/changes.py):
a plain SQL write of the table, as the product makes it, reaches the policy consumer through
Debezium's connector on Kafka Connect and changes the jobs within seconds; nothing is lost
while the connector is away, the Connect worker is killed or the database restarts.

Each test registers a connector of its own (its own slot, topic prefix and database) on the
stack's Connect worker or on a worker of its own; the stack's PostgreSQL is never restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from bench.postgres import PrivatePostgres, pg_bindir
from gatestream import cdc
from gatestream.consumers.policy.consumer import PolicyConsumer
from gatestream.consumers.policy.reconcile import make_engine, make_plan
from gatestream.dbmetrics import DatabaseCollector
from gatestream.migrate import migrate
from gatestream.settings import CdcSettings, PolicySettings
from gatestream.topics import delete_topics
from tests.conftest import Env, free_port, read_topic
from tests.helpers import wait_for
from tests.services import ROOT, Services, client_settings, kafka_conf

pytestmark = pytest.mark.integration

AW = "monitoring.active_windows"
CHANGE_WITHIN_S = 10.0  # "within a few seconds", with room for a loaded 2-core machine
CONNECT = ROOT / "ops" / "connect" / "connect"


def cdc_settings(env: Env, connect_url: str, database_url: str) -> CdcSettings:
    tag = env.prefix.strip(".")
    if env.services.kafka_security.get("kafka_sasl_username") and connect_url == env.services.connect_url:
        # a secured stack: its worker logs in as User:connect, whose ACLs name the stack's CDC
        # prefix; the suite (the admin) lets it write this test's too
        from confluent_kafka.admin import AdminClient

        from gatestream.kafka_acls import create, debezium_acls

        create(AdminClient(env.services.kafka_conf()), debezium_acls("User:connect", f"{env.prefix}cdc"))
    return CdcSettings(
        **{**env.common(), "database_url": database_url},
        connect_url=connect_url,
        cdc_connector=f"{tag}-policies",
        cdc_slot=f"gs_{tag}_{uuid.uuid4().hex[:6]}",
        cdc_topic_prefix=f"{env.prefix}cdc",
        cdc_heartbeat_ms=2000,
        cdc_password_ref=env.services.cdc_password_ref,  # the stack's server asks the role for its password
    )


def require_cdc(env: Env, database_url: str) -> str:
    """Connect's URL, or skip saying what is missing."""
    if not env.services.connect_url:
        pytest.skip("no Kafka Connect here (GATESTREAM_CONNECT_URL unset): ops/stack up runs one with Debezium")
    with psycopg.connect(database_url) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
    if level != ("logical",):
        pytest.skip(f"the server runs wal_level={level[0] if level else '?'}: `ops/stack up` restarts it with logical")
    return env.services.connect_url


@contextlib.contextmanager
def capturing(cs: CdcSettings) -> Iterator[CdcSettings]:
    """The test's connector, RUNNING; afterwards deleted with its slot (a database with a slot
    cannot be dropped) and its topics."""
    try:
        cdc.register(cs, wait_s=60)
        yield cs
    finally:
        with contextlib.suppress(cdc.ConnectError):
            cdc.delete(cs)
        with contextlib.suppress(psycopg.Error):
            cdc.drop_slot(cs)
        with contextlib.suppress(Exception):
            delete_topics(
                client_settings(cs.bootstrap_servers),
                [cs.cdc_topic, f"__debezium-heartbeat.{cs.cdc_topic_prefix}"],
            )


def consumer(settings: PolicySettings) -> tuple[PolicyConsumer, threading.Thread]:
    pc = PolicyConsumer(settings)
    t = threading.Thread(target=pc.run, daemon=True)
    t.start()
    assert wait_for(lambda: pc.runs >= 1, 30), "no startup reconcile"
    return pc, t


ACTIVE = "gatestream_db_replication_slot_active"


def slot_metrics(database_url: str, slot: str) -> dict[str, float]:
    """The database exporter's samples of one replication slot."""
    return {
        sample.name: sample.value
        for family in DatabaseCollector(database_url, min_interval_s=0).collect()
        for sample in family.samples
        if sample.labels.get("slot") == slot
    }


def set_days(conn: psycopg.Connection[Any], org: int, days: int) -> None:
    conn.execute("UPDATE monitoring.retention_policies SET retention_days = %s WHERE organization_id = %s", (days, org))


def drop_after(settings: PolicySettings, conn: psycopg.Connection[Any]) -> Any:
    """The longest retention of active_windows as its chunk-dropping job has it now."""
    return make_engine(conn, settings).actual()[f"retention:{AW}"].params.get("drop_after_days")


def wait_drop_after(settings: PolicySettings, conn: psycopg.Connection[Any], days: int, within: float) -> float:
    t0 = time.monotonic()
    assert wait_for(lambda: drop_after(settings, conn) == days, within, interval=0.05), (
        f"the job did not change to {days} days within {within} s: {drop_after(settings, conn)}"
    )
    return time.monotonic() - t0


def test_plain_sql_changes_the_jobs_and_nothing_is_lost_while_the_connector_is_stopped(env: Env) -> None:
    url = require_cdc(env, env.database_url)
    with capturing(cdc_settings(env, url, env.database_url)) as cs:
        settings = env.policy(
            policy_change_source="cdc", cdc_topic_prefix=cs.cdc_topic_prefix, full_reconcile_interval_s=3600
        )
        pc, t = consumer(settings)
        try:
            with psycopg.connect(env.database_url, autocommit=True) as conn:
                assert drop_after(settings, conn) == 365  # the default: no policy rows yet
                sql = "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
                conn.execute(sql + "VALUES (5, 'active_windows', 800)")
                wait_drop_after(settings, conn, 800, CHANGE_WITHIN_S)
                set_days(conn, 5, 900)
                wait_drop_after(settings, conn, 900, CHANGE_WITHIN_S)
                conn.execute("DELETE FROM monitoring.retention_policies WHERE organization_id = 5")
                wait_drop_after(settings, conn, 365, CHANGE_WITHIN_S)

                # Connect away (the connector stopped): a write meanwhile waits in the slot, and
                # arrives once it is back; the periodic reconcile (an hour here) plays no part
                cdc.stop(cs)
                assert wait_for(lambda: cdc.states(cdc.status(cs))[:1] == ["STOPPED"], 20)
                # STOPPED is the connector's state; its task lets go of the slot a moment later
                # (under load, seconds): only then is Connect away from the slot
                assert wait_for(lambda: slot_metrics(env.database_url, cs.cdc_slot)[ACTIVE] == 0, 30)
                conn.execute(sql + "VALUES (6, 'active_windows', 700)")
                time.sleep(1.5)
                assert drop_after(settings, conn) == 365, "changed without the connector: the test proves nothing"
                # the exporter sees the slot without its reader, holding the WAL since
                slot = slot_metrics(env.database_url, cs.cdc_slot)
                assert slot["gatestream_db_replication_slot_active"] == 0
                assert slot["gatestream_db_replication_slot_retained_bytes"] > 0
                cdc.resume(cs)
                wait_drop_after(settings, conn, 700, 20)
                assert wait_for(lambda: slot_metrics(env.database_url, cs.cdc_slot)[ACTIVE] == 1, 10)

                # a message on the CDC topic that is not a change of the table: dead-lettered with
                # its reason, and the consumer carries on
                runs = pc.runs
                p = Producer(kafka_conf(env.services.bootstrap_servers))
                bad = {"payload": {"op": "c", "after": {"id": 1}, "source": {"schema": "public", "table": "x"}},
                       "schema": {}}  # fmt: skip
                p.produce(cs.cdc_topic, value=json.dumps(bad).encode())
                assert p.flush(10) == 0
                assert wait_for(lambda: pc.runs > runs, 20)
                dead = read_topic(env.services.bootstrap_servers, env.dlq_topic, expected=1, timeout=15)
                assert [dict(m.headers())["gatestream.reason"] for m in dead] == [b"invalid-change-event"]
                assert b"not of monitoring.retention_policies" in dict(dead[0].headers())["gatestream.error"]
                assert make_plan(conn, settings, make_engine(conn, settings)).changes == []

                # the table quiet, other tables writing: the slot moves on (lsn.flush.mode
                # connector_and_driver). With Debezium 3.6's default it stayed where the last change
                # of the table was and pinned all WAL until the server lost it past max_slot_wal_keep_size
                conn.execute("CREATE TABLE wal_filler (x text)")
                conn.execute("INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
                written = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
                assert written is not None

                def confirmed_past_it() -> bool:
                    row = conn.execute(
                        "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                        (written[0], cs.cdc_slot),
                    ).fetchone()
                    return bool(row and row[0])

                assert wait_for(confirmed_past_it, 60), "the slot pins the WAL of tables it does not capture"
        finally:
            pc.request_stop()
            t.join(20)


def _connect_worker(tmp: Path, services: Services, group: str, port: int) -> tuple[Path, str]:
    """A worker of the test's own on the stack's broker (as the suite's user, the admin, on a secured one)."""
    d = tmp / "connect"
    environ = dict(os.environ)
    tool = services.kafka_tool_args(tmp)  # the same client properties a Kafka tool takes
    if tool:
        environ["GATESTREAM_CONNECT_KAFKA_CLIENT"] = tool[1]
    cmd = [str(CONNECT), "start", str(d), str(port), services.bootstrap_servers, group]
    subprocess.run(cmd, check=True, timeout=150, env=environ)
    return d, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_a_killed_connect_worker_and_a_restarted_database_lose_no_change(env: Env, tmp_path: Path) -> None:
    """On a PostgreSQL of the test's own (restarted here) and a Connect worker of its own (killed -9
    and started again): every change made while either was away reaches the jobs."""
    require_cdc(env, env.database_url)
    bindir = pg_bindir("15")
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries here")
    pg = PrivatePostgres(bindir, wal_level="logical")
    group, port = f"{env.prefix}connect", free_port()
    worker: Path | None = None
    try:
        pg.start()
        db_url = pg.url.rsplit("/", 1)[0] + "/gatestream"
        with psycopg.connect(pg.url, autocommit=True) as c:
            c.execute("CREATE DATABASE gatestream")
        migrate(db_url)
        worker, connect_url = _connect_worker(tmp_path, env.services, group, port)
        with capturing(cdc_settings(env, connect_url, db_url)) as cs:
            settings: PolicySettings = env.policy(
                database_url=db_url,
                policy_change_source="cdc",
                cdc_topic_prefix=cs.cdc_topic_prefix,
                full_reconcile_interval_s=3600,
            )
            pc, t = consumer(settings)
            try:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    sql = "INSERT INTO monitoring.retention_policies (organization_id, resource_type, retention_days) "
                    conn.execute(sql + "VALUES (5, 'active_windows', 800)")
                    wait_drop_after(settings, conn, 800, CHANGE_WITHIN_S)
                    # the worker crashes; the database takes writes meanwhile
                    subprocess.run([str(CONNECT), "kill", str(worker)], check=True, timeout=30)
                    set_days(conn, 5, 850)
                    time.sleep(1)
                    assert drop_after(settings, conn) == 800
                    _connect_worker(tmp_path, env.services, group, port)
                    cdc.wait_running(cs, 60)
                    wait_drop_after(settings, conn, 850, 30)
                # the database restarts: a change committed just before it, and one just after
                with psycopg.connect(db_url, autocommit=True) as conn:
                    set_days(conn, 5, 870)
                pg.stop()
                pg.start()
                with psycopg.connect(db_url, autocommit=True) as conn:
                    wait_drop_after(settings, conn, 870, 40)
                    conn.execute(sql + "VALUES (6, 'active_windows', 880)")
                    wait_drop_after(settings, conn, 880, 40)
            finally:
                pc.request_stop()
                t.join(20)
    finally:
        if worker is not None:
            subprocess.run([str(CONNECT), "kill", str(worker)], timeout=30, check=False)
            with contextlib.suppress(Exception):
                delete_topics(
                    env.services.client_settings(),
                    [f"{group}.configs", f"{group}.offsets", f"{group}.status"],
                )
        pg.stop()
        pg.remove()
