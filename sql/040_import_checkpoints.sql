-- Legacy import (gatestream import, seed 000 §8): where each import of a plain-PostgreSQL
-- table stands, and the legacy rows the hypertable refused.
--
-- A checkpoint row is written in the same transaction as the batch it follows, so after a
-- kill the next run resumes right after the last committed batch (keyset on the legacy
-- primary key). Keyed by the source's identity (host:port/dbname, or --source-name) and
-- its table, plus the target hypertable.

CREATE TABLE IF NOT EXISTS gatestream.import_checkpoints (
    source          text        NOT NULL,
    source_table    text        NOT NULL,
    target_table    text        NOT NULL,
    last_pk         bigint,                -- NULL: nothing committed yet
    time_from       timestamptz,           -- the run's --since/--until window, if any
    time_to         timestamptz,
    rows_read       bigint      NOT NULL DEFAULT 0,
    rows_inserted   bigint      NOT NULL DEFAULT 0,
    rows_duplicate  bigint      NOT NULL DEFAULT 0,
    rows_rejected   bigint      NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,           -- the last run that read to the end
    PRIMARY KEY (source, source_table, target_table)
);

-- A legacy row the hypertable refused (a CHECK, a NOT NULL): kept with the reason, never
-- silently lost; `gatestream import verify` shows its day as differing.
CREATE TABLE IF NOT EXISTS gatestream.import_rejects (
    source        text        NOT NULL,
    source_table  text        NOT NULL,
    target_table  text        NOT NULL,
    pk            bigint      NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, source_table, target_table, pk)
);
