"""What to import: a legacy table, the hypertable it goes to, and which column fills which.

Read from a small TOML file (``--mapping``) and/or flags; flags win. Example::

    [source]
    table = "public.active_windows"  # [schema.]table in the legacy database (schema: public)
    primary_key = "id"               # the integer key the import pages on (default id)
    timezone = "UTC"                 # zone of timestamp-without-time-zone columns (Prisma's DateTime)
    # id_scope = "public.active_windows"  # names the rows in their event_id (default: the table)

    [target]
    table = "active_windows"         # monitoring.<name>, or schema.table

    [columns]                        # target column = source column
    users_on_computers_id = "user_on_computer_id"

Target columns not listed take the source column of the same name where the source has
one, else their default (``created_at``: now()). ``event_id`` is never mapped: it is
derived from the legacy primary key (``event_id_of``). Only the file's shape is checked
here; whether the tables and columns exist is checked against both databases (``plan``).
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Fixed for ever: changing it changes every imported row's event_id (a re-import would then add them again).
EVENT_ID_NAMESPACE = uuid.UUID("5c3a8f0e-6f2b-5b8e-9d57-2a1f0c6b7e41")


class MappingError(Exception):
    """The mapping cannot work (one line for the operator)."""


@dataclass(frozen=True)
class Mapping:
    source_table: tuple[str, str]  # (schema, table)
    target_table: tuple[str, str]
    primary_key: str = "id"
    columns: dict[str, str] = field(default_factory=dict)  # target column -> source column, as given
    source_timezone: str = "UTC"
    id_scope: str | None = None

    @property
    def scope(self) -> str:
        """What names a legacy row in its event_id, beside its primary key."""
        return self.id_scope or ".".join(self.source_table)


def event_id_of(scope: str, pk: int) -> uuid.UUID:
    """The row's event_id: UUIDv5 of the scope and the legacy primary key (RFC 9562 §5.5), the
    same on every run, so a re-import finds its rows already there. (Gateways' ids are UUIDv7:
    the version nibble tells an imported row from a streamed one.)"""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{scope}/{pk}")


def split_name(name: str, default_schema: str, what: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` -> (schema, table)."""
    parts = name.strip().split(".")
    if not all(parts) or len(parts) > 2:
        raise MappingError(f"{what} {name!r} is not [schema.]table")
    return (parts[0], parts[1]) if len(parts) == 2 else (default_schema, parts[0])


_SECTIONS: dict[str, set[str]] = {
    "source": {"table", "primary_key", "timezone", "id_scope"},
    "target": {"table"},
    "columns": set(),  # any target column name
}


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_mapping(text: str, origin: str = "mapping") -> dict[str, Any]:
    """The settings a mapping file gives (keys as ``build_mapping`` takes them)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{origin}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for section, body in doc.items():
        if section not in _SECTIONS:
            raise MappingError(
                f"{origin}: unknown section [{section}]; expected {', '.join(f'[{s}]' for s in _SECTIONS)}"
            )
        if not isinstance(body, dict):
            raise MappingError(f"{origin}: {section} must be a [{section}] table")
        allowed = _SECTIONS[section]
        for key, value in body.items():
            where = f"{origin}: {section}.{key}"
            if section == "columns":
                out.setdefault("columns", {})[key] = _string(value, where)
            elif key not in allowed:
                raise MappingError(
                    f"{origin}: unknown key {key!r} in [{section}]; expected {', '.join(sorted(allowed))}"
                )
            else:
                out[f"{section}_{key}"] = _string(value, where)
    return out


def load_mapping_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read the mapping file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MappingError(f"the mapping file {path} is not UTF-8 text") from None
    return parse_mapping(text, str(path))


def parse_column_flag(value: str) -> tuple[str, str]:
    """``--column target=source``."""
    target, sep, source = value.partition("=")
    if not sep or not target.strip() or not source.strip():
        raise MappingError(f"--column {value!r}: expected target_column=source_column")
    return target.strip(), source.strip()


def build_mapping(values: dict[str, Any]) -> Mapping:
    """A Mapping from a file's values and flags merged (keys: source_table, source_primary_key,
    source_timezone, source_id_scope, target_table, columns)."""
    if not values.get("source_table"):
        raise MappingError("no source table: give --source-table or [source] table in --mapping")
    if not values.get("target_table"):
        raise MappingError("no target table: give --target or [target] table in --mapping")
    columns = dict(values.get("columns") or {})
    if "event_id" in columns:
        raise MappingError("event_id cannot be mapped: it is derived from the legacy primary key")
    mapping = Mapping(
        source_table=split_name(values["source_table"], "public", "source table"),
        target_table=split_name(values["target_table"], "monitoring", "target table"),
        columns=columns,
    )
    if values.get("source_primary_key"):
        mapping = replace(mapping, primary_key=values["source_primary_key"])
    if values.get("source_timezone"):
        mapping = replace(mapping, source_timezone=values["source_timezone"])
    if values.get("source_id_scope"):
        mapping = replace(mapping, id_scope=values["source_id_scope"])
    return mapping
