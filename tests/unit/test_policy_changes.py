"""Debezium's change events of retention_policies as the policy consumer reads them
(consumers/policy/changes.py), the topics it subscribes to by GATESTREAM_POLICY_CHANGE_SOURCE,
and the connector config gatestream.cdc registers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from gatestream.cdc import connector_config
from gatestream.consumers.policy.changes import parse_change
from gatestream.consumers.policy.consumer import PolicyConsumer
from gatestream.settings import CdcSettings, PolicySettings

SOURCE = {"schema": "monitoring", "table": "retention_policies", "lsn": 1}
ROW = {"id": "x", "organization_id": 5, "resource_type": "active_windows", "retention_days": 90}


def _msg(envelope: dict[str, Any], schemas: bool = True) -> bytes:
    return json.dumps({"schema": {"type": "struct"}, "payload": envelope} if schemas else envelope).encode()


@pytest.mark.parametrize("schemas", [True, False], ids=["with-schema", "without-schema"])
def test_creates_updates_reads_and_deletes_name_their_row(schemas: bool) -> None:
    for op, name in (("c", "create"), ("u", "update"), ("r", "read")):
        got = parse_change(_msg({"op": op, "before": None, "after": ROW, "source": SOURCE}, schemas))
        assert got == {"op": name, "resource_type": "active_windows", "organization_id": 5}
    got = parse_change(_msg({"op": "d", "before": ROW, "after": None, "source": SOURCE}, schemas))
    assert got == {"op": "delete", "resource_type": "active_windows", "organization_id": 5}
    # a delete under the default replica identity carries only the key
    got = parse_change(_msg({"op": "d", "before": {"id": "x"}, "after": None, "source": SOURCE}, schemas))
    assert got == {"op": "delete", "resource_type": None, "organization_id": None}
    assert parse_change(_msg({"op": "t", "source": SOURCE}, schemas)) == {
        "op": "truncate",
        "resource_type": None,
        "organization_id": None,
    }


def test_a_tombstone_is_no_change_and_no_error() -> None:
    assert parse_change(None) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00\x01avro", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (_msg({"op": "x", "after": ROW, "source": SOURCE}), "op must be one of"),
        (_msg({"after": ROW, "source": SOURCE}), "op must be one of"),
        (_msg({"op": "c", "after": None, "source": SOURCE}), "without a 'after' row"),
        (_msg({"op": "d", "before": None, "source": SOURCE}), "without a 'before' row"),
        (_msg({"op": "c", "after": {**ROW, "resource_type": None}, "source": SOURCE}), "no resource_type"),
        (_msg({"op": "c", "after": {**ROW, "organization_id": "5"}, "source": SOURCE}), "not an integer"),
        (_msg({"op": "c", "after": ROW, "source": {**SOURCE, "table": "users"}}), "a change of monitoring.users"),
        (_msg({"op": "c", "after": ROW, "source": "pg"}), "source is not a JSON object"),
        (json.dumps({"schema": {}, "payload": [1]}).encode(), "payload is not a JSON object"),
    ],
)
def test_what_is_not_a_change_of_the_table_says_why(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_change(value)


def test_the_change_source_picks_the_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATESTREAM_POLICY_CHANGE_SOURCE", raising=False)
    s = PolicySettings(policy_topic="p", cdc_topic_prefix="c")
    assert s.policy_change_source == "both"  # what ops/stack runs; without Connect the CDC topic stays empty
    assert PolicyConsumer.change_topics(s) == ["p", "c.monitoring.retention_policies"]
    assert PolicyConsumer.change_topics(s.model_copy(update={"policy_change_source": "events"})) == ["p"]
    cdc_only = s.model_copy(update={"policy_change_source": "cdc"})
    assert PolicyConsumer.change_topics(cdc_only) == ["c.monitoring.retention_policies"]
    with pytest.raises(ValidationError):
        PolicySettings(policy_change_source="kafka")
    with pytest.raises(ValidationError):
        PolicySettings(cdc_topic_prefix="a topic")


def test_the_connector_reads_one_table_as_its_own_role_and_keeps_the_password_out_of_connect() -> None:
    s = CdcSettings(
        database_url="postgresql://postgres@db.example:6543/gs",
        cdc_password="s3cret",
        cdc_password_ref="${file:/etc/secrets.properties:cdc_password}",
        cdc_slot="slot_a",
        cdc_topic_prefix="pre",
    )
    c = connector_config(s)
    assert (c["database.hostname"], c["database.port"], c["database.dbname"]) == ("db.example", "6543", "gs")
    assert c["database.user"] == "gatestream_cdc"  # not the superuser of database_url
    assert c["database.password"] == "${file:/etc/secrets.properties:cdc_password}"
    assert "s3cret" not in json.dumps(c)
    assert c["table.include.list"] == "monitoring.retention_policies"
    assert (c["plugin.name"], c["slot.name"], c["publication.autocreate.mode"]) == ("pgoutput", "slot_a", "disabled")
    assert c["topic.prefix"] == "pre" and s.cdc_topic == "pre.monitoring.retention_policies"
    # without a reference the password itself; the worker's host may differ from ours
    other = CdcSettings(cdc_password="s3cret", cdc_database_url="postgresql://timescaledb:5432/gatestream")
    assert connector_config(other)["database.password"] == "s3cret"
    assert connector_config(other)["database.hostname"] == "timescaledb"
    with pytest.raises(ValidationError):
        CdcSettings(cdc_slot="Bad-Slot")
    # behind a transaction pooler the worker needs the server's own address (replication does not pass a pooler)
    from gatestream.cdc import ConnectError

    with pytest.raises(ConnectError, match="GATESTREAM_CDC_DATABASE_URL"):
        connector_config(CdcSettings(database_pooler="transaction"))
    pooled = CdcSettings(database_pooler="transaction", cdc_database_url="postgresql://db:5432/gatestream")
    assert connector_config(pooled)["database.port"] == "5432"
