"""Plans for the native transcoder: how to turn one writer schema's events into one table's COPY tuples.

A plan is compiled once per (topic, writer schema id) from the writer schema, the
topic's reader schema and the table's columns, resolving the two schemas as fastavro
does (fields matched by name, writer fields the reader lacks skipped, reader defaults
for fields the writer lacks, the promotions int -> long/float/double, long ->
float/double, float -> double, string <-> bytes, unions branch by branch). It is a flat
list of integer codes that ``gatestream.consumers._transcode`` runs (see
``native/transcode.c`` for the layout):

- read ops, in the writer's field order: (read type, conversion, slot); a union is
  (UNION, number of branches, slot) followed by one op per writer branch;
- columns, in the table's order: (slot, encoding, constant index); a reader default is a
  constant, encoded here once;
- the slots the plausibility checks look at (event time, identifiers).

Whatever this module cannot express exactly (named types, arrays, maps, aliases, a
column type without a native encoding, a default it cannot encode) gives no plan
(``Unsupported``): that schema id's events then take the Python path, which is always
correct. Where fastavro would fail on every event of a schema id (a reader field without
default that the writer lacks, types that never match), there is no plan either, so the
Python path dead-letters each event with today's reason.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RT = {"null": 0, "boolean": 1, "int": 2, "long": 3, "float": 4, "double": 5, "string": 6, "bytes": 7}
RT_UNION, RT_ERROR = 8, 9
CV_NONE, CV_DOUBLE, CV_AS_BYTES, CV_AS_STRING = 0, 1, 2, 3
E_INT2, E_INT4, E_INT8, E_FLOAT8, E_TEXT, E_UUID, E_TSTZ, E_BOOL, E_BYTEA, E_CONST = range(10)
# column type OID -> encoding; the same bytes psycopg's binary dumpers (and consumers.pgtypes's) write
ENCODINGS = {21: E_INT2, 23: E_INT4, 20: E_INT8, 701: E_FLOAT8, 25: E_TEXT, 1043: E_TEXT, 2950: E_UUID,
             1184: E_TSTZ, 16: E_BOOL, 17: E_BYTEA}  # fmt: skip
PG_EPOCH_MS = 946_684_800_000
NULL_FIELD = b"\xff\xff\xff\xff"

_PROMOTIONS = {("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
               ("float", "double"), ("string", "bytes"), ("bytes", "string")}  # fmt: skip


class Unsupported(Exception):
    """The plan cannot be expressed natively: the Python path handles this schema id."""


@dataclass(frozen=True)
class Plan:
    codes: tuple[int, ...]
    consts: tuple[bytes, ...]


def _prim(t: Any) -> str | list[Any]:
    """A primitive type's name, or a union's branch list; anything else is unsupported."""
    if isinstance(t, list):
        return t
    if isinstance(t, dict) and set(t) <= {"type", "logicalType"}:  # (logical types are stripped before)
        t = t["type"]
    if isinstance(t, str) and t in RT:
        return t
    raise Unsupported(f"type {t!r}")


def _match(w: str, r: str) -> bool:
    return w == r or (w, r) in _PROMOTIONS


def _conv(w: str, r: str) -> int:
    if w in ("int", "long") and r in ("float", "double"):
        return CV_DOUBLE
    if (w, r) == ("string", "bytes"):
        return CV_AS_BYTES
    if (w, r) == ("bytes", "string"):
        return CV_AS_STRING
    return CV_NONE


def _branch(w: str, r: str | list[Any]) -> tuple[int, int]:
    """(read type, conversion) of a value written as ``w`` and read as ``r``, or RT_ERROR."""
    for rb in r if isinstance(r, list) else [r]:
        rb = _prim(rb)
        if isinstance(rb, list):
            raise Unsupported("a union inside a union")
        if _match(w, rb):
            return RT[w], _conv(w, rb)
    return RT_ERROR, CV_NONE


class _NeverDecodes(Exception):
    """fastavro would refuse every event of this writer schema."""


def _ops(w_type: Any, r_type: Any, slot: int) -> list[tuple[int, int, int]]:
    w = _prim(w_type)
    r = _prim(r_type) if r_type is not None else w
    if isinstance(w, list):
        branches = [_prim(b) for b in w]
        if any(isinstance(b, list) for b in branches):
            raise Unsupported("a union inside a union")
        ops = [(RT_UNION, len(branches), slot)]
        for b in branches:
            assert isinstance(b, str)
            ops.append((*_branch(b, r), -1))
        return ops
    rt, cv = _branch(w, r)
    if rt == RT_ERROR:
        raise _NeverDecodes(f"{w_type!r} cannot be read as {r_type!r}")
    return [(rt, cv, slot)]


def encode_constant(value: Any, oid: int) -> bytes:
    """One COPY field (length prefix included) for a reader default, as psycopg writes it."""
    enc = ENCODINGS.get(oid)
    if value is None:
        return NULL_FIELD
    if enc is None:
        raise Unsupported(f"column type {oid}")
    if isinstance(value, bool):
        if enc == E_BOOL:
            return b"\x00\x00\x00\x01" + bytes([value])
    elif isinstance(value, int):
        fmt = {E_INT2: ">h", E_INT4: ">i", E_INT8: ">q"}.get(enc)
        try:
            if fmt is not None:
                body = struct.pack(fmt, value)
                return len(body).to_bytes(4, "big") + body
            if enc == E_TSTZ:
                return b"\x00\x00\x00\x08" + struct.pack(">q", (value - PG_EPOCH_MS) * 1000)
        except struct.error as exc:
            raise Unsupported(f"default {value!r}") from exc
    elif isinstance(value, float) and enc == E_FLOAT8:
        return b"\x00\x00\x00\x08" + struct.pack(">d", value)
    elif isinstance(value, str) and enc in (E_TEXT, E_UUID):
        try:
            body = value.encode() if enc == E_TEXT else bytes.fromhex(value.replace("-", ""))
        except (UnicodeEncodeError, ValueError) as exc:
            raise Unsupported(f"default {value!r}") from exc
        if enc == E_UUID and len(body) != 16:
            raise Unsupported(f"default {value!r}")
        return len(body).to_bytes(4, "big") + body
    raise Unsupported(f"default {value!r} for column type {oid}")


def compile_plan(
    writer: dict[str, Any],
    reader: dict[str, Any] | None,
    columns: Sequence[str],
    type_oids: Sequence[int],
    time_field: str | None,
    id_fields: Sequence[str],
) -> Plan | None:
    """The plan for events written with ``writer`` (logical types stripped) and read as
    ``reader`` (None: the same schema), into ``columns``; None where fastavro fails on
    every such event. Raises ``Unsupported`` where only the Python path is exact."""
    if writer.get("type") != "record" or (reader is not None and reader.get("type") != "record"):
        raise Unsupported("not a record")
    r_fields = {f["name"]: f for f in (reader or writer)["fields"]}
    if any(f.get("aliases") for f in r_fields.values()):
        raise Unsupported("field aliases")
    slots: dict[str, int] = {}
    codes: list[int] = []
    ops: list[tuple[int, int, int]] = []
    try:
        for wf in writer["fields"]:
            rf = r_fields.get(wf["name"]) if reader is not None else wf
            slot = -1
            if rf is not None:
                slot = slots.setdefault(rf["name"], len(slots))
            ops += _ops(wf["type"], rf["type"] if rf is not None and reader is not None else None, slot)
    except _NeverDecodes:
        return None
    defaults: dict[str, Any] = {}
    for name, rf in r_fields.items():
        if name not in slots:
            if "default" not in rf:
                return None  # fastavro: "No default value for field ..." on every event
            defaults[name] = rf["default"]
    consts: list[bytes] = []
    cols: list[int] = []
    for name, oid in zip(columns, type_oids, strict=True):
        if name in slots:
            if oid not in ENCODINGS:
                raise Unsupported(f"column {name}: type {oid}")
            cols += [slots[name], ENCODINGS[oid], -1]
        elif name in defaults:
            cols += [-1, E_CONST, len(consts)]
            consts.append(encode_constant(defaults[name], oid))
        else:
            raise Unsupported(f"column {name} is not a field")
    # plausibility: the time is checked per event; a defaulted time or identifier is the same for every event
    if time_field is not None and time_field in defaults and isinstance(defaults[time_field], int):
        raise Unsupported("a defaulted event time")
    for name in id_fields:
        v = defaults.get(name)
        if isinstance(v, int) and v <= 0:
            return None  # every event implausible: the Python path dead-letters each
    time_slot = slots.get(time_field, -1) if time_field is not None else -1
    ids = [slots[n] for n in id_fields if n in slots]
    for op in ops:
        codes += op
    top = sum(1 for op in ops if op[2] != -1 or op[0] != RT_UNION)
    return Plan(
        (len(slots), top, len(ops), *codes, len(columns), *cols, time_slot, len(ids), *ids),
        tuple(consts),
    )
