"""Prometheus metrics of the ingest consumers (names gatestream_*, units in the name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("gatestream_ingest_events_consumed_total", "Events read from Kafka by ingest.", ["topic"])
ROWS_INSERTED = Counter("gatestream_ingest_rows_inserted_total", "Rows committed into hypertables.", ["hypertable"])
DUPLICATES = Counter(
    "gatestream_ingest_duplicate_events_total",
    "Events skipped because their event_id was already stored.",
    ["hypertable"],
)
DEAD_LETTERED = Counter(
    "gatestream_ingest_dead_lettered_total", "Events sent to the dead-letter topic.", ["topic", "reason"]
)
BATCH_ROWS = Histogram(
    "gatestream_ingest_batch_rows",
    "Rows per committed micro-batch.",
    buckets=(10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
)
BATCH_COMMIT_SECONDS = Histogram(
    "gatestream_ingest_batch_commit_seconds",
    "Time to write and commit one micro-batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FENCED_BATCHES = Counter(
    "gatestream_ingest_fenced_batches_total", "Batches rolled back because another member moved the offsets."
)
REBALANCES = Counter("gatestream_ingest_rebalances_total", "Partition assignment changes.", ["kind"])
ASSIGNED_PARTITIONS = Gauge("gatestream_ingest_assigned_partitions", "Partitions this process owns now.")
DECODE_ERRORS = Counter(
    "gatestream_ingest_decode_errors_total",
    "Events that could not be decoded or mapped, by reason.",
    ["topic", "reason"],
)
LAG_MESSAGES = Gauge(
    "gatestream_ingest_lag_messages",
    "High watermark minus the offset stored in the database (the source of truth).",
    ["group", "topic", "partition"],
)
LAG_SECONDS = Gauge(
    "gatestream_ingest_lag_seconds",
    "Age of the oldest event not yet committed (0 when caught up).",
    ["group", "topic", "partition"],
)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)
EVENT_TO_COMMIT_SECONDS = Histogram(
    "gatestream_ingest_event_to_commit_seconds",
    "Event time (on the device) to row committed; sampled, one event in 16.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
)
BROKER_TO_COMMIT_SECONDS = Histogram(
    "gatestream_ingest_broker_to_commit_seconds",
    "Broker timestamp to row committed; sampled, one event in 16.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
)
LAST_COMMIT_TIMESTAMP = Gauge(
    "gatestream_ingest_last_commit_timestamp_seconds", "Unix time of the last committed batch.", ["group"]
)
BATCH_FAILURES = Counter(
    "gatestream_ingest_batch_failures_total",
    "Batches rolled back (and retried): fenced, database or dead-letter topic errors.",
    ["reason"],
)
SCHEMA_REGISTRY_UP = Gauge(
    "gatestream_schema_registry_up",
    "0 while ingest is paused because the schema registry cannot answer (refused, timed out, 5xx), else 1.",
)
SCHEMA_REGISTRY_ERRORS = Counter(
    "gatestream_schema_registry_errors_total",
    "Schema lookups that failed for the registry's sake (each pauses ingest and is retried).",
)
