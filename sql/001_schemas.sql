-- Schemas and the TimescaleDB extension. `monitoring` holds the product's data,
-- `gatestream` the pipeline's own bookkeeping (offsets, migrations).
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE SCHEMA IF NOT EXISTS gatestream;
