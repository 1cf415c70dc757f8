"""The columnstore (compression) settings of our hypertables: one definition, applied by
the policy consumer and measured by ``gatestream bench storage``.

``segmentby organization_id``: every dashboard reads one organization. ``orderby <key>,
<time> DESC``, the key being the catalog's key field of the table (the device,
``users_on_computers_id``, or the gateway): one device's rows lie together in a segment,
so its id is a run of one value, its titles and applications repeat from row to row and
its event times and UUIDv7 ids rise in small steps, which is what the columnstore's
run-length, dictionary and delta encodings compress; a device's timeline and a
gateway's latest status read a few batches (min/max metadata on the key). Measured on
the generated dataset (README, Benchmarks): see ``bench storage``.
"""

from __future__ import annotations

from gatestream.schemas import SchemaCatalog

SEGMENTBY = "organization_id"


def key_columns(catalog: SchemaCatalog) -> dict[str, str]:
    """schema.table -> the column that keys its rows (the catalog's key field)."""
    out = {}
    for et in catalog.event_types():
        info = catalog.info(et)
        out[f"{info.schema}.{info.table}"] = info.key_field
    return out


def orderby(time_column: str, key_column: str | None) -> str:
    """The columnstore orderby of a hypertable (a table the catalog does not know: time only)."""
    return f"{key_column}, {time_column} DESC" if key_column else f"{time_column} DESC"
