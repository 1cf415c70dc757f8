"""Prometheus metrics of the policy consumer (names gatestream_*, units in the name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_RUNS = Counter(
    "gatestream_policy_reconcile_runs_total",
    "Reconciles, by trigger (event, periodic) and outcome.",
    ["trigger", "outcome"],
)
DRIFT_FOUND = Counter(
    "gatestream_policy_drift_found_total", "Job changes found by periodic reconciles (drift repaired)."
)
JOBS_CHANGED = Counter("gatestream_policy_jobs_changed_total", "Jobs added, altered or deleted.", ["action"])
RECONCILE_SECONDS = Histogram(
    "gatestream_policy_reconcile_seconds",
    "Time to plan and apply one reconcile.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS = Gauge("gatestream_policy_jobs", "Jobs the reconciler manages, after the last reconcile.")
POLICY_EVENTS = Counter(
    "gatestream_policy_events_total", "Policy change events read, by outcome (ok, invalid).", ["outcome"]
)
