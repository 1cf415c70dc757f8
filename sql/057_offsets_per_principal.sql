-- Each principal touches only its own rows of gatestream.consumer_offsets (issue 25: "its rows of
-- the offset table"): ingest cannot move, read or delete replay's or the policy consumer's
-- offsets. A row belongs to the gatestream_* role of the login that wrote
-- it (gatestream.offset_principal(): the policy consumer, replay or ingest, the most specific
-- when a login is in several: replay is a member of ingest). Rows written before this, or by
-- the owner or a superuser (both see every row: RLS does not apply to them), belong to nobody
-- yet: the first principal that moves one takes it (consumers/offsets.py advance_offsets).
-- Cost: a membership check per offset row (a few per batch); the batch's COPY into the
-- hypertables is untouched (no row security there, sql/051).
CREATE OR REPLACE FUNCTION gatestream.offset_principal() RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN NULL
        WHEN pg_has_role(current_user, 'gatestream_policy', 'MEMBER') THEN 'gatestream_policy'
        WHEN pg_has_role(current_user, 'gatestream_replay', 'MEMBER') THEN 'gatestream_replay'
        WHEN pg_has_role(current_user, 'gatestream_ingest', 'MEMBER') THEN 'gatestream_ingest'
    END::name
$$;
ALTER FUNCTION gatestream.offset_principal() OWNER TO gatestream_owner;

ALTER TABLE gatestream.consumer_offsets ADD COLUMN IF NOT EXISTS principal name DEFAULT gatestream.offset_principal();
COMMENT ON COLUMN gatestream.consumer_offsets.principal IS
    'The gatestream_* role whose rows these are (NULL: nobody''s yet); row security keeps the others out';

ALTER TABLE gatestream.consumer_offsets ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_offsets ON gatestream.consumer_offsets;
-- A member of the row's role may touch it: a built-in check, nothing planned per statement
-- (a SQL function in the policy cost 1 ms per batch under load). Replay, a member of ingest,
-- may so touch ingest's rows too; ingest never replay's or the policy consumer's.
CREATE POLICY own_offsets ON gatestream.consumer_offsets
    USING (principal IS NULL OR pg_has_role(principal, 'MEMBER'))
    WITH CHECK (pg_has_role(principal, 'MEMBER'));
