-- A coarser grain for last_seen_at (issue 24 §1): at 100M events/day with 50k agents nearly
-- every batch names most agents again, and an exact last_seen_at rewrites each one's row
-- each time (a new row version, WAL, vacuum work) for a value only the OFFLINE sweep
-- and people read. So ingest (consumers/presence.py) passes GATESTREAM_PRESENCE_GRAIN_S
-- and a row is updated only when:
--   - its last_seen_at moves forward by at least `grain` (or it has none yet), or
--   - something else changes with a newer event: its status (an OFFLINE or never-seen
--     gateway/agent is back ONLINE at once), an agent's gateway or host name, or
--   - a newer status report arrives (a gateway's reports always apply: status, figures).
-- last_seen_at therefore lags the newest event by less than `grain`, never more; it still
-- never moves backwards, and a replayed batch still changes nothing (grain 0 is exact).
-- The grain must stay well under the OFFLINE threshold (the settings refuse
-- grain >= offline_after / 4), so a gateway that keeps talking is never swept.

-- The old signatures (030) are replaced, not overloaded: a call without a grain (an
-- ingest process of the previous version, still running while this migrates) gets the
-- new function with grain 0, which is exactly the old behaviour.
DROP FUNCTION IF EXISTS gatestream.track_gateways(uuid[], bigint[], bigint[], text[], jsonb[]);
DROP FUNCTION IF EXISTS gatestream.track_agents(text[], uuid[], text[], bigint[]);

-- The conditions are written where they are used so they are re-evaluated on the newest
-- version of a row another member changed meanwhile:
--   a newer report: report_at > reported_at   -> figures, and the status where the report
--                                                is also at least as new as last_seen_at;
--   a newer event past the grain, or one that brings it back (status not ONLINE/ERROR)
--                                             -> last_seen_at, and ONLINE unless ERROR.
CREATE OR REPLACE FUNCTION gatestream.track_gateways(
    ids uuid[], seen_ms bigint[], report_ms bigint[], report_status text[], figures jsonb[],
    grain interval DEFAULT interval '0')
RETURNS void LANGUAGE sql AS $$
    WITH u AS (
        SELECT id, timestamptz 'epoch' + seen * interval '1 millisecond' AS seen,
               timestamptz 'epoch' + rep * interval '1 millisecond' AS report_at, status, figures
          FROM unnest(ids, seen_ms, report_ms, report_status, figures) AS v(id, seen, rep, status, figures)
    ), locked AS (
        SELECT g.id FROM monitoring.gateway_instances g JOIN u ON u.id = g.id
         WHERE (u.report_at > g.reported_at OR (u.report_at IS NOT NULL AND g.reported_at IS NULL))
            OR g.last_seen_at IS NULL
            OR (u.seen > g.last_seen_at AND (u.seen >= g.last_seen_at + grain
                                             OR coalesce(g.status, '') NOT IN ('ONLINE', 'ERROR')))
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
            OR g.last_seen_at IS NULL
            OR (u.seen > g.last_seen_at AND (u.seen >= g.last_seen_at + grain
                                             OR coalesce(g.status, '') NOT IN ('ONLINE', 'ERROR'))))
$$;

-- The batch's agents (uids sorted): new ones inserted ONLINE under their gateway; known
-- ones moved forward (last_seen_at, ONLINE, their gateway and host name) by a newer event
-- past the grain, or at once by a newer one that changes their status, gateway or host name.
CREATE OR REPLACE FUNCTION gatestream.track_agents(
    uids text[], gateways uuid[], hostnames text[], seen_ms bigint[], grain interval DEFAULT interval '0')
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
         WHERE a.last_seen_at IS NULL
            OR (u.seen > a.last_seen_at AND (u.seen >= a.last_seen_at + grain OR a.status IS DISTINCT FROM 'ONLINE'
                OR a.gateway_id IS DISTINCT FROM u.gw OR (u.host IS NOT NULL AND u.host IS DISTINCT FROM a.hostname)))
         ORDER BY a.agent_uid FOR NO KEY UPDATE OF a
    )
    UPDATE monitoring.agent_instances AS a SET
        last_seen_at = u.seen, status = 'ONLINE', gateway_id = u.gw, hostname = coalesce(u.host, a.hostname)
      FROM u
     WHERE a.agent_uid = u.uid AND a.agent_uid IN (SELECT agent_uid FROM locked)
       AND (a.last_seen_at IS NULL
            OR (u.seen > a.last_seen_at AND (u.seen >= a.last_seen_at + grain OR a.status IS DISTINCT FROM 'ONLINE'
                OR a.gateway_id IS DISTINCT FROM u.gw OR (u.host IS NOT NULL AND u.host IS DISTINCT FROM a.hostname))))
$$;
