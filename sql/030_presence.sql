-- Gateway and agent presence, kept by ingest from the event streams (issue 24 §1).
--
-- The seed's columns (003_registry.sql) stay as the product's Prisma models know them;
-- what presence adds is nullable, so rows the product inserts need nothing new:
--   reported_at       the event time of the status snapshot the status and figures are from
--                     (a snapshot older than it never flips them back);
--   reported_figures  that snapshot's figures (the fields its catalog entry names).
-- last_seen_at is the newest event time seen from the gateway/agent: it only moves forward.
ALTER TABLE monitoring.gateway_instances ADD COLUMN IF NOT EXISTS reported_at timestamptz;
ALTER TABLE monitoring.gateway_instances ADD COLUMN IF NOT EXISTS reported_figures jsonb;

-- The sweep and the fleet listing read by status and age.
CREATE INDEX IF NOT EXISTS gateway_instances_last_seen_idx ON monitoring.gateway_instances (last_seen_at);
CREATE INDEX IF NOT EXISTS agent_instances_last_seen_idx ON monitoring.agent_instances (last_seen_at);

-- Marks gateways and agents OFFLINE that sent nothing for `silence`; returns how many
-- it marked. Idempotent (an OFFLINE row is not touched again), and it never touches
-- last_seen_at: the next newer event brings the row back ONLINE.
CREATE OR REPLACE FUNCTION gatestream.sweep_presence(silence interval)
RETURNS TABLE (gateways bigint, agents bigint)
LANGUAGE sql AS $$
    WITH g AS (
        UPDATE monitoring.gateway_instances SET status = 'OFFLINE'
         WHERE status IS DISTINCT FROM 'OFFLINE' AND last_seen_at < now() - silence
        RETURNING 1
    ), a AS (
        UPDATE monitoring.agent_instances SET status = 'OFFLINE'
         WHERE status IS DISTINCT FROM 'OFFLINE' AND last_seen_at < now() - silence
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM g), (SELECT count(*) FROM a)
$$;

-- One batch's presence, coalesced by ingest (gatestream/consumers/presence.py): one
-- element per gateway (ids sorted), event times in Unix milliseconds. `report_ms`,
-- `report_status` and `figures` are those of the batch's newest status report from the
-- gateway (NULL where it sent none). Only rows that change are locked, in id order (no
-- deadlock between members); the conditions are written where they are used so they are
-- re-evaluated on the newest version of a row another member changed meanwhile:
--   a newer report: report_at > reported_at   -> figures, and the status where the report
--                                                is also at least as new as last_seen_at;
--   a newer event:  seen > last_seen_at       -> last_seen_at, and ONLINE unless ERROR.
-- A replayed or out-of-order batch is neither: it changes nothing.
CREATE OR REPLACE FUNCTION gatestream.track_gateways(
    ids uuid[], seen_ms bigint[], report_ms bigint[], report_status text[], figures jsonb[])
RETURNS void LANGUAGE sql AS $$
    WITH u AS (
        SELECT id, timestamptz 'epoch' + seen * interval '1 millisecond' AS seen,
               timestamptz 'epoch' + rep * interval '1 millisecond' AS report_at, status, figures
          FROM unnest(ids, seen_ms, report_ms, report_status, figures) AS v(id, seen, rep, status, figures)
    ), locked AS (
        SELECT g.id FROM monitoring.gateway_instances g JOIN u ON u.id = g.id
         WHERE (u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL))
            OR (u.seen > g.last_seen_at OR g.last_seen_at IS NULL)
         ORDER BY g.id FOR NO KEY UPDATE OF g
    )
    UPDATE monitoring.gateway_instances AS g SET
        last_seen_at = GREATEST(g.last_seen_at, u.seen),
        status = CASE
            WHEN (u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL))
             AND (u.report_at >= g.last_seen_at OR g.last_seen_at IS NULL) THEN u.status
            WHEN (u.seen > g.last_seen_at OR g.last_seen_at IS NULL) AND g.status IS DISTINCT FROM 'ERROR'
                THEN 'ONLINE'
            ELSE g.status END,
        reported_at = CASE WHEN u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL)
                           THEN u.report_at ELSE g.reported_at END,
        reported_figures = CASE WHEN u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL)
                                THEN u.figures ELSE g.reported_figures END
      FROM u
     WHERE g.id = u.id AND g.id IN (SELECT id FROM locked)
       AND ((u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL))
            OR (u.seen > g.last_seen_at OR g.last_seen_at IS NULL))
$$;

-- The batch's agents (uids sorted): new ones inserted ONLINE under their gateway, known
-- ones moved forward (last_seen_at, ONLINE, their gateway and host name) only by a newer event.
CREATE OR REPLACE FUNCTION gatestream.track_agents(uids text[], gateways uuid[], hostnames text[], seen_ms bigint[])
RETURNS void LANGUAGE sql AS $$
    WITH u AS (
        SELECT uid, gw, host, timestamptz 'epoch' + seen * interval '1 millisecond' AS seen
          FROM unnest(uids, gateways, hostnames, seen_ms) AS v(uid, gw, host, seen)
    ), ins AS (
        INSERT INTO monitoring.agent_instances (id, agent_uid, gateway_id, hostname, status, last_seen_at)
        SELECT gen_random_uuid(), uid, gw, host, 'ONLINE', seen FROM u ORDER BY uid
        ON CONFLICT (agent_uid) DO NOTHING
        RETURNING agent_uid
    ), locked AS (
        SELECT a.agent_uid FROM monitoring.agent_instances a JOIN u ON u.uid = a.agent_uid
         WHERE a.last_seen_at IS NULL OR u.seen > a.last_seen_at
         ORDER BY a.agent_uid FOR NO KEY UPDATE OF a
    )
    UPDATE monitoring.agent_instances AS a SET
        last_seen_at = u.seen, status = 'ONLINE', gateway_id = u.gw, hostname = coalesce(u.host, a.hostname)
      FROM u
     WHERE a.agent_uid = u.uid AND a.agent_uid IN (SELECT agent_uid FROM locked)
       AND (a.last_seen_at IS NULL OR u.seen > a.last_seen_at)
$$;
