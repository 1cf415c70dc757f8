"""Routes: which decoder reads a topic and which hypertable its events land in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from gatestream.consumers.decoder import Decoder
from gatestream.consumers.tables import TableSpec, describe_table
from gatestream.schemas import catalog_of
from gatestream.schemas.presence import Presence
from gatestream.schemas.registry import make_registry, reader_schema
from gatestream.settings import CommonSettings


@dataclass(frozen=True)
class Route:
    topic: str
    decoder: Decoder
    spec: TableSpec
    time_field: str  # the event-time field of the records (wire value: Unix milliseconds)
    presence: Presence | None = None  # which fields name its gateway and agent (consumers.presence)


def event_time_field(schema: dict[str, Any]) -> str:
    """The record's event-time field: the first ``timestamp-millis`` field."""
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("logicalType") == "timestamp-millis":
            return str(f["name"])
    raise ValueError(f"schema {schema.get('name')} has no timestamp-millis field")


def build_routes(
    conn: psycopg.Connection[Any],
    settings: CommonSettings,
    topics: Mapping[str, str],
    tables: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Route]:
    """Topic -> (decoder, hypertable) for ``topics`` (topic -> event type); the table is
    the catalog's, unless ``tables`` overrides it for a topic."""
    catalog = catalog_of(settings)
    # No retries in the client: its retries sleep in the loop's thread; the pipeline
    # pauses and retries on its own (stop-aware) terms (see consumers.registry_outage).
    registry = make_registry(
        settings.schema_registry_url, catalog, timeout_s=settings.schema_registry_timeout_s, max_retries=0
    )
    routes: dict[str, Route] = {}
    for topic, et in topics.items():
        reader = reader_schema(registry, catalog, et, f"{topic}-value")
        info = catalog.info(et)
        schema, table = (tables or {}).get(topic, (info.schema, info.table))
        spec = describe_table(conn, schema, table, [f["name"] for f in reader["fields"]])
        routes[topic] = Route(topic, Decoder(registry, reader), spec, event_time_field(reader), info.presence)
    return routes
