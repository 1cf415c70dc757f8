"""Gateway events: a typed class per shipped event type (field names are the Avro
schema's), and ``CatalogEvent`` for any type the schema catalog declares, typed or not.
The publisher takes either (``Publishable``)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from gatestream.producers.event_ids import uuid7
from gatestream.schemas import EventType


class Publishable(Protocol):
    """What the publisher needs of an event."""

    @property
    def event_type(self) -> str: ...

    def key(self) -> bytes: ...

    def to_record(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    """An event of any type the catalog declares, as a record of its schema's fields;
    ``key_field`` is the catalog's key of the type (``Publisher.event`` fills it in)."""

    event_type: str
    record: dict[str, Any]
    key_field: str

    def key(self) -> bytes:
        return str(self.record[self.key_field]).encode()

    def to_record(self) -> dict[str, Any]:
        return self.record


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Common to all events. ``event_id`` identifies an event across resends and replays: a
    UUIDv7 fixed when the event object is made (before the spool), so every resend and
    replay carries the same id and the primary key drops the copies."""

    event_type: ClassVar[EventType]
    key_field: ClassVar[str] = "users_on_computers_id"

    organization_id: int
    event_id: uuid.UUID = field(default_factory=uuid7)

    def key(self) -> bytes:
        """Kafka key: the device, so one device's events stay in order on one partition."""
        return str(getattr(self, self.key_field)).encode()

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveWindow(Event):
    event_type: ClassVar[EventType] = EventType.ACTIVE_WINDOWS
    users_on_computers_id: int
    datetime: datetime
    title: str | None = None
    process_name: str | None = None
    icon: str | None = None
    active_time: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitedSite(Event):
    event_type: ClassVar[EventType] = EventType.VISITED_SITES
    users_on_computers_id: int
    datetime: datetime
    url: str
    title: str | None = None
    browser: str | None = None
    duration: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Screenshot(Event):
    event_type: ClassVar[EventType] = EventType.SCREENSHOTS
    users_on_computers_id: int
    datetime: datetime
    storage_url: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSession(Event):
    event_type: ClassVar[EventType] = EventType.USER_SESSIONS
    users_on_computers_id: int
    datetime: datetime
    session_event: str
    username: str | None = None
    session_id: str | None = None
    duration_seconds: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayStatusSnapshot(Event):
    event_type: ClassVar[EventType] = EventType.GATEWAY_STATUS_SNAPSHOTS
    key_field: ClassVar[str] = "gateway_id"
    gateway_id: uuid.UUID
    timestamp: datetime
    cpu_usage: float
    disk_usage: float
    memory_usage: float
    queue_depth: int
    connected_agents: int


EVENT_CLASSES: dict[EventType, type[Event]] = {
    cls.event_type: cls for cls in (ActiveWindow, VisitedSite, Screenshot, UserSession, GatewayStatusSnapshot)
}
