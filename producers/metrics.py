"""Prometheus metrics of publishers (names gatestream_*, units in the name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_ACCEPTED = Counter("gatestream_producer_events_accepted_total", "Events accepted into the spool.", ["topic"])
EVENTS_DELIVERED = Counter(
    "gatestream_producer_events_delivered_total", "Events acknowledged by the broker.", ["topic"]
)
DELIVERY_FAILURES = Counter(
    "gatestream_producer_delivery_failures_total",
    "Delivery reports with an error (the event stays spooled).",
    ["topic"],
)
SPOOL_DEPTH = Gauge("gatestream_producer_spool_depth_events", "Events accepted and not yet acknowledged by the broker.")
