"""Harnesses of the checkout, beside the product and never inside its wheel.

``python -m bench.faults``: the real pipeline under faults, every topic message
accounted for (it drives the checkout's ``ops/`` scripts and the local stack).
``bench.brokers.PrivateBroker``: a Kafka node of one's own to kill, used by the fault
bench and the tests. The product's own benches (``gatestream bench ingest|replay|metrics``)
need nothing from the checkout and stay in the package.
"""
