"""Change data capture of monitoring.retention_policies: the Debezium PostgreSQL connector's
config, and its registration on Kafka Connect through Connect's REST API.

Debezium reads the table's changes from a logical replication slot of its own (``pgoutput``,
the publication sql/052_policy_cdc.sql creates, as the least-privileged role made there) and
writes them, as JSON with their schema, to ``<cdc_topic_prefix>.monitoring.retention_policies``,
which the policy consumer reads (gatestream.consumers.policy.changes). Registration is
idempotent (PUT /connectors/NAME/config): the same call creates or updates the connector.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import psycopg
import structlog
from psycopg import sql

from gatestream.database import connect_once
from gatestream.settings import CDC_TABLE, CdcSettings

log = structlog.get_logger("gatestream.cdc")

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
REQUEST_TIMEOUT_S = 10.0


class ConnectError(Exception):
    """Kafka Connect is not configured, does not answer, or refused the connector."""


def connector_config(settings: CdcSettings) -> dict[str, str]:
    """The connector's config: one table, its own slot, the migration's publication, no superuser."""
    if settings.cdc_database_url is None and settings.database_pooler == "transaction":
        # logical replication is a protocol of its own, which a pooler (PgBouncer) does not pass on
        raise ConnectError(
            "Debezium's replication connection cannot go through the pooler that GATESTREAM_DATABASE_URL names "
            "(GATESTREAM_DATABASE_POOLER=transaction): set GATESTREAM_CDC_DATABASE_URL to the server's own address"
        )
    url = settings.cdc_database_url or settings.database_url
    info = psycopg.conninfo.conninfo_to_dict(url)
    if settings.cdc_password_ref:
        password = settings.cdc_password_ref
    elif settings.cdc_password is not None:
        password = settings.cdc_password.get_secret_value()
    else:
        password = ""  # a server that trusts the connection (ops/stack: loopback, trust)
    return {
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "database.hostname": str(info.get("host") or "127.0.0.1"),
        "database.port": str(info.get("port") or 5432),
        "database.dbname": str(info.get("dbname") or "gatestream"),
        "database.user": settings.cdc_user,
        "database.password": password,
        "plugin.name": "pgoutput",
        "slot.name": settings.cdc_slot,
        "publication.name": settings.cdc_publication,
        # made by the migration: the connector's role needs to own nothing
        "publication.autocreate.mode": "disabled",
        "table.include.list": CDC_TABLE,
        "topic.prefix": settings.cdc_topic_prefix,
        # the first start reads the table once (op "r"), then streams; and it reads it again
        # whenever the stored position is gone from the slot (a slot that was lost past
        # max_slot_wal_keep_size and dropped by register(): the changes of the gap come as reads)
        "snapshot.mode": "when_needed",
        # while the table is quiet and other tables write, heartbeats confirm the stream's
        # position: the slot moves on instead of pinning the server's WAL
        "heartbeat.interval.ms": str(settings.cdc_heartbeat_ms),
        # ... and only if the driver may confirm the server's keepalive position while nothing of
        # ours is pending: Debezium 3.6's default ('connector') confirms only on its own events, so
        # a quiet table pinned every byte of WAL until the slot was lost at max_slot_wal_keep_size
        "lsn.flush.mode": "connector_and_driver",
        # the broker creates no topic on first use: the worker creates the connector's
        "topic.creation.default.replication.factor": "-1",  # the broker's default: 1 on the stack, 3 on a cluster
        "topic.creation.default.partitions": "1",
        # the task hands its queue to Connect every 100 ms (default 500): a change's latency
        "poll.interval.ms": "100",
        "tombstones.on.delete": "true",
        # the database went away (a restart, a failover): the task reconnects after 3 s, not 10
        "retriable.restart.connector.wait.ms": "3000",
        "decimal.handling.mode": "string",
        "time.precision.mode": "connect",
        **_tls(info),
    }


def _tls(info: dict[str, Any]) -> dict[str, str]:
    """The URL's TLS settings for Debezium's JDBC connections (its database.sslmode takes libpq's
    values; ops/stack's server takes TLS only, with its CA's certificate: verify-full)."""
    out: dict[str, str] = {}
    if info.get("sslmode"):
        out["database.sslmode"] = str(info["sslmode"])
    if info.get("sslrootcert"):
        out["database.sslrootcert"] = str(info["sslrootcert"])
    return out


def _connect_url(settings: CdcSettings) -> str:
    if not settings.connect_url:
        raise ConnectError("GATESTREAM_CONNECT_URL is not set: no Kafka Connect to register the connector on")
    return settings.connect_url.rstrip("/")


def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")[:300]
    except (OSError, ValueError) as exc:
        raise ConnectError(f"Kafka Connect at {url} does not answer: {exc}") from exc


def _name(settings: CdcSettings) -> str:
    return urllib.parse.quote(settings.cdc_connector, safe="")


def set_password(settings: CdcSettings) -> bool:
    """Give the connector's role GATESTREAM_CDC_PASSWORD (as the database's owner); False when unset."""
    if settings.cdc_password is None:
        return False
    with connect_once(settings.database_url) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(settings.cdc_user), sql.Literal(settings.cdc_password.get_secret_value())
            )
        )
    return True


def register(settings: CdcSettings, wait_s: float = 60.0) -> dict[str, Any]:
    """Create or update the connector, then wait until it and its task run; its status."""
    base = _connect_url(settings)
    if drop_lost_slot(settings):
        log.warning(
            "replication slot lost, dropped",
            slot=settings.cdc_slot,
            why="the server removed WAL it still needed (max_slot_wal_keep_size) while the connector was away; "
            "Debezium makes the slot again and reads the table once (snapshot.mode when_needed)",
        )
    code, body = _request("PUT", f"{base}/connectors/{_name(settings)}/config", connector_config(settings))
    if code not in (200, 201):
        raise ConnectError(f"Kafka Connect refused the connector {settings.cdc_connector} (HTTP {code}): {body}")
    if "FAILED" in states(status(settings)):
        # An unchanged config restarts nothing: a task that failed before this call (at the worker's
        # start, say, while migrations held a long transaction and Debezium could not take its
        # slot) would stay FAILED. Restart what failed, once.
        code, body = _request("POST", f"{base}/connectors/{_name(settings)}/restart?includeTasks=true&onlyFailed=true")
        if code not in (200, 202, 204):
            name = settings.cdc_connector
            raise ConnectError(f"Kafka Connect did not restart the failed {name} (HTTP {code}): {body}")
        time.sleep(0.5)  # the restart is asynchronous: let the FAILED state go before waiting
    return wait_running(settings, wait_s)


def status(settings: CdcSettings) -> dict[str, Any] | None:
    """The connector's status as Connect reports it; None when Connect has no such connector."""
    code, body = _request("GET", f"{_connect_url(settings)}/connectors/{_name(settings)}/status")
    if code == 404:
        return None
    if code != 200 or not isinstance(body, dict):
        raise ConnectError(f"Kafka Connect: HTTP {code}: {body}")
    return body


def states(st: dict[str, Any] | None) -> list[str]:
    """The connector's state, then each task's."""
    if st is None:
        return []
    return [str(st.get("connector", {}).get("state")), *(str(t.get("state")) for t in st.get("tasks", []))]


def wait_running(settings: CdcSettings, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    st: dict[str, Any] | None = None
    while True:
        st = status(settings)
        got = states(st)
        if len(got) >= 2 and all(s == "RUNNING" for s in got):
            assert st is not None
            return st
        if "FAILED" in got and st is not None:
            trace = next((t.get("trace", "") for t in st.get("tasks", []) if t.get("state") == "FAILED"), "")
            trace = trace or st.get("connector", {}).get("trace", "")
            first = str(trace).splitlines()[0] if trace else "?"
            raise ConnectError(f"connector {settings.cdc_connector} FAILED: {first}")
        if time.monotonic() >= deadline:
            name = settings.cdc_connector
            raise ConnectError(f"connector {name} not RUNNING after {wait_s:.0f} s: {got or 'absent'}")
        time.sleep(0.25)


def stop(settings: CdcSettings) -> None:
    """Stop the connector (Connect keeps its config and offsets; resume() starts it again)."""
    code, body = _request("PUT", f"{_connect_url(settings)}/connectors/{_name(settings)}/stop")
    if code not in (200, 202, 204):
        raise ConnectError(f"stopping {settings.cdc_connector}: HTTP {code}: {body}")


def resume(settings: CdcSettings, wait_s: float = 60.0) -> dict[str, Any]:
    code, body = _request("PUT", f"{_connect_url(settings)}/connectors/{_name(settings)}/resume")
    if code not in (200, 202, 204):
        raise ConnectError(f"resuming {settings.cdc_connector}: HTTP {code}: {body}")
    return wait_running(settings, wait_s)


def delete(settings: CdcSettings) -> None:
    """Delete the connector (idempotent). Its replication slot stays: drop_slot() removes it."""
    code, body = _request("DELETE", f"{_connect_url(settings)}/connectors/{_name(settings)}")
    if code not in (200, 204, 404):
        raise ConnectError(f"deleting {settings.cdc_connector}: HTTP {code}: {body}")


def drop_lost_slot(settings: CdcSettings) -> bool:
    """Drop the connector's slot if the server lost it (wal_status 'lost': WAL it needed was removed
    past max_slot_wal_keep_size). Nothing can stream from such a slot; Debezium would retry it for
    ever. True if one was dropped."""
    with connect_once(settings.database_url) as conn:
        row = conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND wal_status = 'lost' AND NOT active",
            (settings.cdc_slot,),
        ).fetchone()
    return row is not None


def drop_slot(settings: CdcSettings, wait_s: float = 15.0) -> bool:
    """Drop the connector's slot once no reader holds it (after delete()); False if there is none."""
    deadline = time.monotonic() + wait_s
    with connect_once(settings.database_url) as conn:
        while True:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (settings.cdc_slot,)
            ).fetchone()
            if row is None:
                return False
            if not row[0] or time.monotonic() >= deadline:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.cdc_slot,))
                return True
            time.sleep(0.2)
