"""The catalog of shipped schemas: event type -> versions, each with a stable id.

Ids are stable across processes and machines because they are written in
``catalog.json`` (append-only), not assigned at run time. A process that meets an id it
does not know re-reads the catalog folder once, so a schema version added while
consumers run is picked up without a restart.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent


class EventType(StrEnum):
    ACTIVE_WINDOWS = "active_windows"
    VISITED_SITES = "visited_sites"
    SCREENSHOTS = "screenshots"
    USER_SESSIONS = "user_sessions"
    GATEWAY_STATUS_SNAPSHOTS = "gateway_status_snapshots"


class SchemaCatalogError(Exception):
    """The catalog folder is inconsistent (bad JSON, a missing file, a changed id)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    schema_id: int
    event_type: EventType
    version: int
    schema: dict[str, Any]
    schema_str: str


def normalized(schema: dict[str, Any] | str) -> str:
    """A stable text form of a schema, used to recognise a schema by its content."""
    obj = json.loads(schema) if isinstance(schema, str) else schema
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class SchemaCatalog:
    """Schemas shipped in a folder (``catalog.json`` plus ``.avsc`` files)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else DEFAULT_DIR
        self._lock = threading.Lock()
        self._by_id: dict[int, CatalogEntry] = {}
        self._by_content: dict[str, CatalogEntry] = {}
        self._load()

    def _load(self) -> None:
        index_path = self.directory / "catalog.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise SchemaCatalogError(f"cannot read schema catalog {index_path}: {exc}") from exc
        by_id: dict[int, CatalogEntry] = {}
        for item in index.get("schemas", []):
            try:
                path = self.directory / item["file"]
                text = path.read_text()
                entry = CatalogEntry(
                    schema_id=int(item["id"]),
                    event_type=EventType(item["event_type"]),
                    version=int(item["version"]),
                    schema=json.loads(text),
                    schema_str=text,
                )
            except (KeyError, OSError, ValueError) as exc:
                raise SchemaCatalogError(f"bad catalog entry {item!r} in {index_path}: {exc}") from exc
            if entry.schema_id in by_id:
                raise SchemaCatalogError(f"schema id {entry.schema_id} is listed twice in {index_path}")
            old = self._by_id.get(entry.schema_id)
            if old is not None and normalized(old.schema) != normalized(entry.schema):
                raise SchemaCatalogError(
                    f"schema id {entry.schema_id} changed content; ids are append-only, add a new id instead"
                )
            by_id[entry.schema_id] = entry
        self._by_id = by_id
        self._by_content = {normalized(e.schema): e for e in by_id.values()}

    def reload(self) -> None:
        with self._lock:
            self._load()

    def by_id(self, schema_id: int, *, reload_if_missing: bool = True) -> CatalogEntry | None:
        entry = self._by_id.get(schema_id)
        if entry is None and reload_if_missing:
            self.reload()
            entry = self._by_id.get(schema_id)
        return entry

    def by_content(self, schema: dict[str, Any] | str) -> CatalogEntry | None:
        key = normalized(schema)
        entry = self._by_content.get(key)
        if entry is None:
            self.reload()
            entry = self._by_content.get(key)
        return entry

    def latest(self, event_type: EventType) -> CatalogEntry:
        versions = [e for e in self._by_id.values() if e.event_type == event_type]
        if not versions:
            raise SchemaCatalogError(f"no schema for event type {event_type} in {self.directory}")
        return max(versions, key=lambda e: e.version)

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_id.values(), key=lambda e: e.schema_id)
