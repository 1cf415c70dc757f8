-- The roles of the commands that connect besides the long-running processes (issue 25):
-- `gatestream import` and `gatestream dlq redrive` run as gatestream_replay, the principal that
-- re-processes events (a replay, a backfill from the legacy database, a dead letter published
-- back): it already inserts and reads the events as ingest does (sql/050). Each checks these
-- at start (gatestream/roles.py IMPORT_NEEDS, REDRIVE_NEEDS) and exits 2 naming what is missing.

-- import: where each import stands, and the legacy rows the hypertable refused (sql/040;
-- a reject seen again is updated in place)
GRANT SELECT, INSERT, UPDATE ON gatestream.import_checkpoints TO gatestream_replay;
GRANT SELECT, INSERT, UPDATE ON gatestream.import_rejects TO gatestream_replay;
-- dlq redrive: marks what it published back (sql/010) on the dead letters ingest records
GRANT SELECT, INSERT ON gatestream.dead_letters TO gatestream_replay;
GRANT UPDATE (redriven_at, redrives) ON gatestream.dead_letters TO gatestream_replay;
ALTER TABLE gatestream.import_checkpoints OWNER TO gatestream_owner;
ALTER TABLE gatestream.import_rejects OWNER TO gatestream_owner;
