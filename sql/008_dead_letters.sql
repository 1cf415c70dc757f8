-- Which source events were dead-lettered, once per topic/partition/offset. Written in
-- the batch's transaction before its dead letters are published: a later read of the
-- same offset (a replay, a redelivery) finds the record and does not publish the event
-- to the dead-letter topic again.
CREATE TABLE IF NOT EXISTS gatestream.dead_letters (
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL CHECK (source_partition >= 0),
    source_offset    bigint      NOT NULL CHECK (source_offset >= 0),
    reason           text        NOT NULL,
    consumer_group   text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
COMMENT ON TABLE gatestream.dead_letters IS
    'Source events sent to the dead-letter topic (once each): reason, group, when';
