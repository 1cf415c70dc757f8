"""Schema registry access: a real Confluent-compatible registry when a URL is set,
otherwise the shipped catalog, behind one small interface.

``AvroSerializer`` (producers) needs ``register_schema_full_response`` /
``lookup_schema``; the consumers' decoder needs ``get_schema``. ``CatalogRegistry``
provides those from ``SchemaCatalog`` so the wire format (magic 0 + 4-byte id + Avro
body) is identical whether or not a registry runs.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from gatestream.schemas.catalog import CatalogEntry, SchemaCatalog


class CatalogRegistry:
    """Duck-typed stand-in for ``SchemaRegistryClient`` backed by ``SchemaCatalog``."""

    def __init__(self, catalog: SchemaCatalog) -> None:
        self.catalog = catalog

    # --- what AvroSerializer calls -------------------------------------------------
    def _entry(self, subject_name: str, schema: Schema) -> CatalogEntry:
        entry = self.catalog.by_content(schema.schema_str or "")
        if entry is None:
            raise SchemaRegistryError(
                404,
                40403,
                f"schema for subject {subject_name!r} is not in the catalog {self.catalog.directory}; "
                "add it to catalog.json with a new id",
            )
        return entry

    def _registered(self, subject_name: str, schema: Schema) -> RegisteredSchema:
        entry = self._entry(subject_name, schema)
        return RegisteredSchema(
            schema_id=entry.schema_id,
            guid=None,
            schema=Schema(entry.schema_str, "AVRO"),
            subject=subject_name,
            version=entry.version,
        )

    def register_schema_full_response(
        self, subject_name: str, schema: Schema, normalize_schemas: bool = False
    ) -> RegisteredSchema:
        return self._registered(subject_name, schema)

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        return self._entry(subject_name, schema).schema_id

    def lookup_schema(
        self, subject_name: str, schema: Schema, normalize_schemas: bool = False, deleted: bool = False
    ) -> RegisteredSchema:
        return self._registered(subject_name, schema)

    def config(self) -> dict[str, Any]:
        return {}

    # --- what the consumers' decoder calls -----------------------------------------
    def get_schema(self, schema_id: int, subject_name: str | None = None, fmt: str | None = None) -> Schema:
        entry = self.catalog.by_id(schema_id)
        if entry is None:
            raise SchemaRegistryError(404, 40403, f"schema id {schema_id} is not in the catalog")
        return Schema(entry.schema_str, "AVRO")


# Confluent's error code for "schema not found" (Apicurio, Karapace and Redpanda use it too).
SCHEMA_NOT_FOUND = 40403

DEFAULT_TIMEOUT_S = 10.0


def no_such_schema(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by ``get_schema``) is the registry's definitive answer that
    the id does not exist: HTTP 404 with error code 40403. Anything else (refused, timed
    out, 5xx, a 404 of a wrong URL path, ...) says nothing about the id."""
    return isinstance(exc, SchemaRegistryError) and exc.http_status_code == 404 and exc.error_code == SCHEMA_NOT_FOUND


def registry_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the registry did not answer, or answered 5xx: worth waiting for
    (at start-up, where any other answer is a setting to fix)."""
    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code >= 500
    return type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "httpx2")


def make_registry(
    url: str | None, catalog: SchemaCatalog, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int | None = None
) -> Any:
    """A registry client: the real one for ``url``, else the catalog stand-in.

    ``timeout_s``: each HTTP request's time-out (the client has none by default: a
    frozen registry would hang its caller for ever). ``max_retries``: the client's own
    retries of refused connections, time-outs and 5xx, with blocking sleeps between them
    (its default: 3); a caller that retries on its own terms passes 0."""
    if url:
        conf: dict[str, Any] = {"url": url, "timeout": timeout_s}
        if max_retries is not None:
            conf["max.retries"] = max_retries
        return SchemaRegistryClient(conf)
    return CatalogRegistry(catalog)


def reader_schema(registry: Any, catalog: SchemaCatalog, event_type: str, subject: str) -> dict[str, Any]:
    """The schema a consumer reads with: the registry's latest for the subject, else the catalog's."""
    if isinstance(registry, CatalogRegistry):
        return catalog.latest(event_type).schema
    try:
        latest = registry.get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
        # nothing published to this topic yet: read with the contract this code ships
        return catalog.latest(event_type).schema
    parsed: dict[str, Any] = json.loads(latest.schema.schema_str)
    return parsed
