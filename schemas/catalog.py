"""The catalog: the event types, and their schema versions, each with a stable id.

``catalog.json`` declares each event type (its hypertable and the record field that is
its Kafka key) and lists the schema files. Everything downstream follows from it: the
topic (``<prefix><type>``), the table mapping, the metrics' labels and the commands'
``--types`` choices. A new event type is an entry here, its ``.avsc`` file and a
migration that creates its table (see README, "Adding an event type").

Ids are stable across processes and machines because they are written in
``catalog.json`` (append-only), not assigned at run time. A process that meets an id it
does not know re-reads the catalog folder if ``catalog.json`` changed since it was read
(a stat, not a read, per miss), so a schema version added while consumers run is picked
up without a restart, and events with an unknown id do not re-read the folder each.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatestream.schemas.presence import Presence, PresenceDeclarationError, parse_presence

if TYPE_CHECKING:
    from gatestream.settings import CommonSettings

DEFAULT_DIR = Path(__file__).resolve().parent


class EventType(StrEnum):
    """The event types gatestream ships (its catalog declares them), for the typed producer
    events and for tests. The pipeline takes event types from the catalog
    (``SchemaCatalog.event_types``), never from this list."""

    ACTIVE_WINDOWS = "active_windows"
    VISITED_SITES = "visited_sites"
    SCREENSHOTS = "screenshots"
    USER_SESSIONS = "user_sessions"
    GATEWAY_STATUS_SNAPSHOTS = "gateway_status_snapshots"


class SchemaCatalogError(Exception):
    """The catalog folder is inconsistent (bad JSON, a missing file, a changed id)."""


_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a topic suffix and a table name without quoting


@dataclass(frozen=True, slots=True)
class EventTypeInfo:
    name: str
    schema: str  # where its rows go: schema.table
    table: str
    key_field: str  # the record field whose value is the Kafka key
    presence: Presence | None = None  # which fields name its gateway and agent (schemas.presence)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    schema_id: int
    event_type: str
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
        self._types: dict[str, EventTypeInfo] = {}
        self._read_as: tuple[int, int, int] | None = None  # catalog.json's stat when last read
        self._load()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = (self.directory / "catalog.json").stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _load(self) -> None:
        index_path = self.directory / "catalog.json"
        signature = self._signature()  # taken first: a change while reading is seen next time
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise SchemaCatalogError(f"cannot read schema catalog {index_path}: {exc}") from exc
        types = self._read_types(index, index_path)
        by_id: dict[int, CatalogEntry] = {}
        for item in index.get("schemas", []):
            try:
                path = self.directory / item["file"]
                text = path.read_text()
                entry = CatalogEntry(
                    schema_id=int(item["id"]),
                    event_type=str(item["event_type"]),
                    version=int(item["version"]),
                    schema=json.loads(text),
                    schema_str=text,
                )
            except (KeyError, OSError, ValueError) as exc:
                raise SchemaCatalogError(f"bad catalog entry {item!r} in {index_path}: {exc}") from exc
            info = types.get(entry.event_type)
            if info is None:
                raise SchemaCatalogError(
                    f"{item['file']}: event type {entry.event_type!r} is not declared in event_types of {index_path}"
                )
            names = {f.get("name") for f in entry.schema.get("fields", [])}
            if info.key_field not in names:
                raise SchemaCatalogError(f"{item['file']}: no field {info.key_field!r}, the key of {info.name}")
            missing = [f for f in (info.presence.fields() if info.presence else []) if f not in names]
            if missing:
                raise SchemaCatalogError(f"{item['file']}: no field {missing[0]!r}, named by presence of {info.name}")
            if entry.schema_id in by_id:
                raise SchemaCatalogError(f"schema id {entry.schema_id} is listed twice in {index_path}")
            old = self._by_id.get(entry.schema_id)
            if old is not None and normalized(old.schema) != normalized(entry.schema):
                raise SchemaCatalogError(
                    f"schema id {entry.schema_id} changed content; ids are append-only, add a new id instead"
                )
            by_id[entry.schema_id] = entry
        unused = sorted(set(types) - {e.event_type for e in by_id.values()})
        if unused:
            raise SchemaCatalogError(f"event types without a schema in {index_path}: {', '.join(unused)}")
        self._types = types
        self._by_id = by_id
        self._by_content = {normalized(e.schema): e for e in by_id.values()}
        self._read_as = signature

    @staticmethod
    def _read_types(index: dict[str, Any], index_path: Path) -> dict[str, EventTypeInfo]:
        types: dict[str, EventTypeInfo] = {}
        for name, decl in (index.get("event_types") or {}).items():
            table = str(decl.get("table", "")) if isinstance(decl, dict) else ""
            schema, _, tname = table.partition(".")
            if not (_NAME.fullmatch(name) and _NAME.fullmatch(schema) and _NAME.fullmatch(tname)):
                raise SchemaCatalogError(
                    f"event type {name!r} in {index_path}: names are lower-case letters, digits and '_', "
                    f"and 'table' is schema.table (got {table!r})"
                )
            try:
                presence = parse_presence(decl.get("presence"), f"event type {name!r} in {index_path}")
            except PresenceDeclarationError as exc:
                raise SchemaCatalogError(str(exc)) from exc
            types[name] = EventTypeInfo(name, schema, tname, str(decl.get("key", "users_on_computers_id")), presence)
        if not types:
            raise SchemaCatalogError(f"{index_path} declares no event_types")
        return types

    def reload(self) -> None:
        with self._lock:
            self._load()

    def _reload_if_changed(self) -> bool:
        """Re-read the folder if ``catalog.json`` changed since it was read; whether it did.
        A miss is thereby cached for as long as the catalog stays as it is."""
        with self._lock:
            if self._signature() == self._read_as:
                return False
            self._load()
            return True

    def by_id(self, schema_id: int, *, reload_if_missing: bool = True) -> CatalogEntry | None:
        entry = self._by_id.get(schema_id)
        if entry is None and reload_if_missing and self._reload_if_changed():
            entry = self._by_id.get(schema_id)
        return entry

    def by_content(self, schema: dict[str, Any] | str) -> CatalogEntry | None:
        key = normalized(schema)
        entry = self._by_content.get(key)
        if entry is None and self._reload_if_changed():
            entry = self._by_content.get(key)
        return entry

    def event_types(self) -> list[str]:
        """The declared event types, in the catalog's order."""
        return list(self._types)

    def info(self, event_type: str) -> EventTypeInfo:
        found = self._types.get(event_type)
        if found is None:
            raise SchemaCatalogError(
                f"unknown event type {event_type!r}; the catalog {self.directory} has: {', '.join(self._types)}"
            )
        return found

    def latest(self, event_type: str) -> CatalogEntry:
        versions = [e for e in self._by_id.values() if e.event_type == event_type]
        if not versions:
            raise SchemaCatalogError(f"no schema for event type {event_type} in {self.directory}")
        return max(versions, key=lambda e: e.version)

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_id.values(), key=lambda e: e.schema_id)


def catalog_of(settings: CommonSettings) -> SchemaCatalog:
    """The schema catalog the settings name (``schema_dir``, else the shipped one)."""
    return SchemaCatalog(settings.schema_dir)


def event_topics(settings: CommonSettings) -> dict[str, str]:
    """Topic -> event type, for every event type of the catalog the settings name."""
    return {settings.topic_for(et): et for et in catalog_of(settings).event_types()}
