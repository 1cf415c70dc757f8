"""gatestream: monitoring-gateway events into TimescaleDB, exactly once."""
