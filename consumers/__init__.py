"""Consumers: decode gatestream topics and write them into TimescaleDB, exactly once."""
