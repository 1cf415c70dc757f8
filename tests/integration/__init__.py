"""Integration tests: the real Apache Kafka broker, schema registry and TimescaleDB (ops/stack)."""
