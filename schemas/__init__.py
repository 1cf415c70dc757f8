"""Avro schemas of gatestream's events, their catalog of stable ids, and registry access.

The ``.avsc`` files in this folder are the contract between gateways (producers) and
the ingest consumers. ``catalog.json`` gives each file a stable schema id, used in the
Confluent wire format when no Schema Registry is configured.
"""

from gatestream.schemas.catalog import (
    CatalogEntry,
    EventType,
    EventTypeInfo,
    SchemaCatalog,
    SchemaCatalogError,
    catalog_of,
    event_topics,
)

__all__ = [
    "CatalogEntry",
    "EventType",
    "EventTypeInfo",
    "SchemaCatalog",
    "SchemaCatalogError",
    "catalog_of",
    "event_topics",
]
