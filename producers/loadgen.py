"""Synthetic gateway events, for demos, tests and benchmarks: realistic ones for the
shipped event types, and plausible records built from the schema for any other type the
catalog declares (so a new type can be demonstrated before anyone writes a generator)."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gatestream.producers.event_ids import uuid7_at
from gatestream.producers.events import (
    ActiveWindow,
    CatalogEvent,
    Event,
    GatewayStatusSnapshot,
    Screenshot,
    UserSession,
    VisitedSite,
)
from gatestream.schemas import EventType, SchemaCatalog

PROCESSES = [
    ("chrome.exe", "Inbox - Mail"),
    ("code.exe", "main.py - Visual Studio Code"),
    ("excel.exe", "Q3 budget.xlsx"),
    ("winword.exe", "Contract draft.docx"),
    ("slack.exe", "Slack | #general"),
    ("explorer.exe", "Downloads"),
    ("teams.exe", "Daily stand-up"),
    ("outlook.exe", "Calendar"),
    ("firefox.exe", "Jira board"),
    ("notepad.exe", "notes.txt"),
    ("1c.exe", "1C:Enterprise"),
    ("telegram.exe", "Telegram"),
]
SITES = [
    "https://mail.example.com/inbox",
    "https://docs.example.org/guide/start",
    "https://news.example.net/world",
    "https://shop.example.com/cart",
    "https://video.example.com/watch?v=",
    "https://wiki.example.org/Kafka",
    "https://git.example.com/org/repo/pulls",
    "https://bank.example.com/login",
]
BROWSERS = ["chrome", "firefox", "edge", "yandex"]
SESSION_EVENTS = ["logon", "lock", "unlock", "idle", "active", "logoff"]


@dataclass(frozen=True)
class Fleet:
    """Organizations, their desktop seats (users_on_computers_id) and gateways."""

    orgs: int = 3
    devices_per_org: int = 20
    gateways_per_org: int = 2
    seed: int = 7

    def devices(self) -> list[tuple[int, int]]:
        return [(org, org * 100_000 + d) for org in range(1, self.orgs + 1) for d in range(1, self.devices_per_org + 1)]

    def gateways(self) -> list[tuple[int, uuid.UUID]]:
        rnd = random.Random(self.seed)
        return [
            (org, uuid.UUID(int=rnd.getrandbits(128), version=4))
            for org in range(1, self.orgs + 1)
            for _ in range(self.gateways_per_org)
        ]


def make_event(
    event_type: EventType,
    rnd: random.Random,
    fleet_devices: list[tuple[int, int]],
    fleet_gateways: list[tuple[int, uuid.UUID]],
    when: datetime,
) -> Event:
    eid = uuid7_at(_unix_ms(when), rnd)  # made when the event happens, as a gateway would
    if event_type is EventType.GATEWAY_STATUS_SNAPSHOTS:
        org, gw = rnd.choice(fleet_gateways)
        return GatewayStatusSnapshot(
            event_id=eid,
            organization_id=org,
            gateway_id=gw,
            timestamp=when,
            cpu_usage=round(rnd.uniform(1, 95), 2),
            disk_usage=round(rnd.uniform(10, 90), 2),
            memory_usage=round(rnd.uniform(20, 90), 2),
            queue_depth=rnd.randint(0, 5000),
            connected_agents=rnd.randint(0, 200),
        )
    org, device = rnd.choice(fleet_devices)
    if event_type is EventType.ACTIVE_WINDOWS:
        proc, title = rnd.choice(PROCESSES)
        return ActiveWindow(
            event_id=eid,
            organization_id=org,
            users_on_computers_id=device,
            datetime=when,
            title=title,
            process_name=proc,
            icon=f"icons/{proc}.png",
            active_time=rnd.randint(1, 900),
        )
    if event_type is EventType.VISITED_SITES:
        url = rnd.choice(SITES)
        return VisitedSite(
            event_id=eid,
            organization_id=org,
            users_on_computers_id=device,
            datetime=when,
            url=url + (str(rnd.randint(1, 10**6)) if url.endswith("=") else ""),
            title=url.split("/")[2],
            browser=rnd.choice(BROWSERS),
            duration=rnd.randint(1, 1800),
        )
    if event_type is EventType.SCREENSHOTS:
        digest = hashlib.sha256(eid.bytes).hexdigest()
        return Screenshot(
            event_id=eid,
            organization_id=org,
            users_on_computers_id=device,
            datetime=when,
            storage_url=f"s3://screenshots/{org}/{device}/{digest[:16]}.webp",
            size_bytes=rnd.randint(40_000, 900_000),
            sha256=digest,
            width=1920,
            height=1080,
            mime_type="image/webp",
        )
    return UserSession(
        event_id=eid,
        organization_id=org,
        users_on_computers_id=device,
        datetime=when,
        session_event=rnd.choice(SESSION_EVENTS),
        username=f"user{device % 1000}",
        session_id=str(rnd.randint(1, 20)),
        duration_seconds=rnd.randint(0, 28_800),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _unix_ms(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(milliseconds=1)


WORDS = ["north", "main", "lab", "front", "archive", "server", "east", "lobby", "dock", "office"]


def _value(ftype: Any, name: str, rnd: random.Random, ids: dict[str, Any], when: datetime) -> Any:
    """A plausible value of an Avro field type (ids: values for the fleet's identifier fields)."""
    if name in ids:
        return ids[name]
    if name == "event_id":
        return uuid7_at(_unix_ms(when), rnd)
    if isinstance(ftype, list):  # a union: the first non-null branch
        return _value(next((t for t in ftype if t != "null"), "null"), name, rnd, ids, when)
    if isinstance(ftype, dict):
        logical = ftype.get("logicalType")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return when
        if logical == "uuid":
            return uuid.UUID(int=rnd.getrandbits(128), version=4)
        if ftype.get("type") == "enum":
            return rnd.choice(ftype["symbols"])
        return _value(ftype.get("type"), name, rnd, ids, when)
    simple: dict[str, Any] = {
        "null": lambda: None,
        "boolean": lambda: rnd.random() < 0.5,
        "int": lambda: rnd.randint(1, 10_000),
        "long": lambda: rnd.randint(1, 10_000_000),
        "float": lambda: round(rnd.uniform(0, 100), 2),
        "double": lambda: round(rnd.uniform(0, 100), 2),
        "string": lambda: f"{rnd.choice(WORDS)}-{rnd.randint(1, 99)}",
        "bytes": lambda: rnd.randbytes(8),
    }
    if ftype not in simple:
        raise ValueError(f"cannot generate values of Avro type {ftype!r} (field {name})")
    return simple[ftype]()


def make_record(
    schema: dict[str, Any],
    rnd: random.Random,
    fleet_devices: list[tuple[int, int]],
    fleet_gateways: list[tuple[int, uuid.UUID]],
    when: datetime,
) -> dict[str, Any]:
    """A record of ``schema``: the fleet's identifiers where the field names say so
    (organization_id, users_on_computers_id, gateway_id), plausible values elsewhere."""
    org, device = rnd.choice(fleet_devices)
    gateways = [g for o, g in fleet_gateways if o == org] or [uuid.UUID(int=rnd.getrandbits(128), version=4)]
    ids = {"organization_id": org, "users_on_computers_id": device, "gateway_id": rnd.choice(gateways)}
    return {f["name"]: _value(f["type"], f["name"], rnd, ids, when) for f in schema["fields"]}


def generate(
    count: int,
    fleet: Fleet,
    types: Sequence[str],
    *,
    seed: int = 1,
    start: datetime | None = None,
    spread: timedelta = timedelta(hours=1),
    catalog: SchemaCatalog | None = None,
) -> Iterator[Event | CatalogEvent]:
    """``count`` events, types round-robin, event times spread over ``spread`` before
    ``start``. A type without a typed class is generated from ``catalog``'s schema
    (default: the shipped catalog)."""
    rnd = random.Random(seed)
    devices, gateways = fleet.devices(), fleet.gateways()
    end = start or datetime.now(UTC)
    span_ms = max(int(spread.total_seconds() * 1000), 1)
    shipped = {t.value: t for t in EventType}
    generic = [t for t in types if t not in shipped]
    if generic:
        catalog = catalog or SchemaCatalog()
        schemas = {t: (catalog.latest(t).schema, catalog.info(t).key_field) for t in generic}
    for i in range(count):
        when = end - timedelta(milliseconds=rnd.randrange(span_ms))
        when = when.replace(microsecond=(when.microsecond // 1000) * 1000)  # Avro carries milliseconds
        et = types[i % len(types)]
        if et in shipped:
            yield make_event(shipped[et], rnd, devices, gateways, when)
        else:
            schema, key = schemas[et]
            yield CatalogEvent(et, make_record(schema, rnd, devices, gateways, when), key)
