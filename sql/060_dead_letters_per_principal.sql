-- Each principal reads and marks only its own rows of gatestream.dead_letters (issue 25: "its
-- rows of the dead-letter table"; the grants of sql/050, 054 and 055 were table-wide: ingest
-- could read the policy consumer's dead letters, replay mark them redriven). As for the offsets
-- (sql/057): a row carries the gatestream_* role of the login that recorded it (`principal`,
-- gatestream.offset_principal(): the most specific of policy, replay, ingest), and row security
-- lets only that role's members see or mark it (replay, a member of ingest, sees ingest's too:
-- it re-processes ingest's topics and `dlq redrive` marks what ingest dead-lettered). Rows from
-- before, or recorded by the owner or a superuser (to whom row security does not apply), belong
-- to nobody: every principal sees them, and marking one redriven leaves it nobody's (nobody
-- may UPDATE the column: replay's UPDATE is on redriven_at and redrives only, sql/055).
-- The key stays (source_topic, source_partition, source_offset): an event recorded by one
-- principal is not recorded again by another (ON CONFLICT DO NOTHING finds the row without
-- seeing it), so it is still published to the dead-letter topic once.
-- Cost: none on the batch path without rejects (consumers/deadletter.py first_time returns
-- before the statement); a membership check per recorded reject.
ALTER TABLE gatestream.dead_letters ADD COLUMN IF NOT EXISTS principal name DEFAULT gatestream.offset_principal();
COMMENT ON COLUMN gatestream.dead_letters.principal IS
    'The gatestream_* role whose dead letter this is (NULL: nobody''s, everyone''s); row security keeps the others out';

ALTER TABLE gatestream.dead_letters ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_dead_letters_read ON gatestream.dead_letters;
DROP POLICY IF EXISTS own_dead_letters_record ON gatestream.dead_letters;
DROP POLICY IF EXISTS own_dead_letters_mark ON gatestream.dead_letters;
CREATE POLICY own_dead_letters_read ON gatestream.dead_letters FOR SELECT
    USING (principal IS NULL OR pg_has_role(principal, 'MEMBER'));
-- a new row is the recording principal's (the default; naming another's is refused)
CREATE POLICY own_dead_letters_record ON gatestream.dead_letters FOR INSERT
    WITH CHECK (pg_has_role(principal, 'MEMBER'));
-- marking (dlq redrive): its own rows, or nobody's, which stay nobody's
CREATE POLICY own_dead_letters_mark ON gatestream.dead_letters FOR UPDATE
    USING (principal IS NULL OR pg_has_role(principal, 'MEMBER'))
    WITH CHECK (principal IS NULL OR pg_has_role(principal, 'MEMBER'));
