"""Gateway-side publishing: events -> Avro -> one Kafka topic per event type.

``Publisher`` writes every event to a durable SQLite spool first, then to Kafka
(idempotent, keyed by device), and forgets it only when the broker acknowledged it.
"""

from gatestream.producers.events import (
    ActiveWindow,
    CatalogEvent,
    Event,
    GatewayStatusSnapshot,
    Screenshot,
    UserSession,
    VisitedSite,
)
from gatestream.producers.publisher import Publisher

__all__ = [
    "ActiveWindow",
    "CatalogEvent",
    "Event",
    "GatewayStatusSnapshot",
    "Publisher",
    "Screenshot",
    "UserSession",
    "VisitedSite",
]
