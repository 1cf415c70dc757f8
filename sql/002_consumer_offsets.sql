-- Kafka offsets of the ingest consumers. The database, not Kafka, is the source of
-- truth: a batch's rows and its offsets commit in one transaction, and a consumer
-- starts each assigned partition at next_offset.
CREATE TABLE IF NOT EXISTS gatestream.consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
COMMENT ON TABLE gatestream.consumer_offsets IS
    'Next Kafka offset to read per consumer group/topic/partition, written in the same transaction as the rows';
