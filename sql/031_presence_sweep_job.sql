-- The presence sweep as a scheduled job (issue 24 §1), reconciled by the policy consumer
-- like the retention jobs (consumers/policy: JobKind.PRESENCE_SWEEP): a TimescaleDB job
-- (add_job on gatestream.presence_sweep_job) on the Community edition, a pg_cron job
-- (CALL gatestream.presence_sweep) on the Apache edition; every minute, the silence
-- threshold (GATESTREAM_PRESENCE_OFFLINE_AFTER_S) in the job's config / command.

-- The sweep itself (030) locked the rows it marks in whatever order it scanned them, and
-- waited on rows ingest holds: ingest locks in id order, so the two could deadlock. Now it
-- locks in id order and skips rows another transaction holds: such a row is being
-- updated by a newer event (it is not silent), and if it is, the next run marks it.
CREATE OR REPLACE FUNCTION gatestream.sweep_presence(silence interval)
RETURNS TABLE (gateways bigint, agents bigint)
LANGUAGE sql AS $$
    WITH gl AS (
        SELECT id FROM monitoring.gateway_instances
         WHERE status IS DISTINCT FROM 'OFFLINE' AND last_seen_at < now() - silence
         ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
    ), g AS (
        UPDATE monitoring.gateway_instances SET status = 'OFFLINE'
         WHERE id IN (SELECT id FROM gl) AND status IS DISTINCT FROM 'OFFLINE' AND last_seen_at < now() - silence
        RETURNING 1
    ), al AS (
        SELECT agent_uid FROM monitoring.agent_instances
         WHERE status IS DISTINCT FROM 'OFFLINE' AND last_seen_at < now() - silence
         ORDER BY agent_uid FOR NO KEY UPDATE SKIP LOCKED
    ), a AS (
        UPDATE monitoring.agent_instances SET status = 'OFFLINE'
         WHERE agent_uid IN (SELECT agent_uid FROM al) AND status IS DISTINCT FROM 'OFFLINE'
           AND last_seen_at < now() - silence
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM g), (SELECT count(*) FROM a)
$$;

-- What the pg_cron job runs: one sweep with a threshold in seconds, logged when it marked any.
CREATE OR REPLACE PROCEDURE gatestream.presence_sweep(p_offline_after_s integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_gateways bigint;
    v_agents   bigint;
BEGIN
    IF p_offline_after_s IS NULL OR p_offline_after_s < 1 THEN
        RAISE EXCEPTION 'offline_after_s must be >= 1, got %', p_offline_after_s;
    END IF;
    SELECT s.gateways, s.agents INTO v_gateways, v_agents
      FROM gatestream.sweep_presence(make_interval(secs => p_offline_after_s)) s;
    IF v_gateways > 0 OR v_agents > 0 THEN
        RAISE LOG 'gatestream presence sweep: marked OFFLINE % gateways, % agents (silent for % s)',
            v_gateways, v_agents, p_offline_after_s;
    END IF;
END
$$;

-- The form TimescaleDB's job scheduler calls (add_job): config carries the threshold.
CREATE OR REPLACE PROCEDURE gatestream.presence_sweep_job(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    CALL gatestream.presence_sweep((config ->> 'offline_after_s')::integer);
END
$$;
