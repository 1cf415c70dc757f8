"""Debezium's change events of monitoring.retention_policies (gatestream.cdc): what a
message on the CDC topic says, or why it is not a change event of that table.

With Kafka Connect's JsonConverter and schemas on, a value is ``{"schema": ..., "payload":
ENVELOPE}`` (without schemas, the envelope alone); the envelope holds ``op`` (c create,
u update, d delete, r a snapshot read, t truncate), the row ``before`` and ``after``, and
``source`` (schema, table, lsn, ...). A delete is followed by a tombstone (no value), which
only serves log compaction. Like the policy events, a change only says that something
changed: the consumer reconciles from the table.
"""

from __future__ import annotations

import json
from typing import Any

from gatestream.settings import CDC_TABLE

OPS = {"c": "create", "u": "update", "d": "delete", "r": "read", "t": "truncate"}
SCHEMA, TABLE = CDC_TABLE.split(".")


def _row(env: dict[str, Any], side: str, op: str) -> dict[str, Any]:
    row = env.get(side)
    if not isinstance(row, dict):
        raise ValueError(f"op {op!r} without a {side!r} row")
    return row


def parse_change(value: bytes | None) -> dict[str, Any] | None:
    """The change (op, resource_type, organization_id; the last two None where the event does
    not carry them), None for a tombstone, or ValueError saying what is wrong."""
    if value is None:
        return None  # the tombstone after a delete
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    env = doc["payload"] if "payload" in doc and "schema" in doc else doc
    if not isinstance(env, dict):
        raise ValueError("payload is not a JSON object")
    op = env.get("op")
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, got {str(op)[:40]!r}")
    source = env.get("source")
    if source is not None:
        if not isinstance(source, dict):
            raise ValueError("source is not a JSON object")
        where = (source.get("schema"), source.get("table"))
        if where != (SCHEMA, TABLE):
            raise ValueError(f"a change of {str(where[0])[:60]}.{str(where[1])[:60]}, not of {CDC_TABLE}")
    if op == "t":
        return {"op": OPS[op], "resource_type": None, "organization_id": None}
    row = _row(env, "before", op) if op == "d" else _row(env, "after", op)
    rt, org = row.get("resource_type"), row.get("organization_id")
    if op != "d" and not isinstance(rt, str):
        raise ValueError(f"the row has no resource_type (got {str(rt)[:40]!r})")
    if rt is not None and not isinstance(rt, str):
        raise ValueError(f"resource_type is not text: {str(rt)[:40]!r}")
    if org is not None and (not isinstance(org, int) or isinstance(org, bool)):
        raise ValueError(f"organization_id is not an integer: {str(org)[:40]!r}")
    return {"op": OPS[op], "resource_type": rt, "organization_id": org}
