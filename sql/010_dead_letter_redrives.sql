-- What `gatestream dlq redrive` published back to its source topic, and when: a redrive
-- skips events already redriven (unless --again), and `dlq summary` tells pending from
-- redriven. Marked after the broker acknowledged the publish, so a crash in between
-- resends a few events (deduplicated by event_id), never loses one.
ALTER TABLE gatestream.dead_letters ADD COLUMN IF NOT EXISTS redriven_at timestamptz;
ALTER TABLE gatestream.dead_letters ADD COLUMN IF NOT EXISTS redrives integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN gatestream.dead_letters.redriven_at IS
    'When gatestream dlq redrive last published the event back to its source topic (NULL: pending)';
COMMENT ON COLUMN gatestream.dead_letters.redrives IS 'How often the event was redriven';
