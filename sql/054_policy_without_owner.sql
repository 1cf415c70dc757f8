-- The policy consumer without the owner's powers (issue 25). Until now gatestream_policy was a
-- member of gatestream_owner (TimescaleDB's jobs API wants the caller to own the hypertable and
-- the job), so it could also drop the tables and delete every row. Now it is not: what it needs
-- of the owner goes through SECURITY DEFINER routines owned by gatestream_owner, each with its
-- search_path pinned and its inputs checked (only gatestream's relations, only gatestream's jobs),
-- EXECUTE for gatestream_policy only:
--   - the Community edition's jobs API: gatestream.policy_* (sql/tsl/054);
--   - the Apache edition: pg_cron runs a job as the user who scheduled it (the policy consumer's
--     login), so what its jobs CALL runs as the owner: drop_expired_chunks, presence_sweep (here),
--     refresh_aggregates_incremental (sql/apache/054), and delete_expired_rows' DELETE, one batch
--     at a time (gatestream.delete_expired_batch: a SECURITY DEFINER routine cannot COMMIT, the
--     procedure between its batches does).
-- A later migration that replaces one of these with CREATE OR REPLACE must say SECURITY DEFINER
-- and SET search_path again (CREATE OR REPLACE resets both) and keep the owner
-- (tests/integration/test_roles.py runs the jobs as the policy role and would fail).

-- The owner's routines run here with TimescaleDB's functions found in the extension's schema
-- (public, usually) and nothing a caller could put first: search_path = pg_catalog, <that>, pg_temp.
CREATE OR REPLACE FUNCTION gatestream.pin_definer(p_routine regprocedure)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_ext name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'timescaledb');
BEGIN
    EXECUTE format('ALTER ROUTINE %s OWNER TO gatestream_owner', p_routine);
    EXECUTE format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
                   p_routine, coalesce(v_ext, 'public'));
    EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', p_routine);
    EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO gatestream_policy', p_routine);
END
$$;
REVOKE ALL ON FUNCTION gatestream.pin_definer(regprocedure) FROM PUBLIC;

-- gatestream's own relations: the hypertables and aggregates in schema monitoring (another
-- application's hypertables in the same database are not, nor any table that is neither).
-- Raises insufficient_privilege (42501) naming the relation otherwise.
CREATE OR REPLACE FUNCTION gatestream.policy_target(p_relation regclass)
RETURNS regclass LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_schema name;
    v_name   name;
BEGIN
    SELECT n.nspname, c.relname INTO v_schema, v_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_relation;
    IF v_schema = 'monitoring' AND (
           EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                    WHERE h.hypertable_schema = v_schema AND h.hypertable_name = v_name)
        OR (to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL
            AND EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates a
                         WHERE a.view_schema = v_schema AND a.view_name = v_name))) THEN
        RETURN p_relation;
    END IF;
    RAISE EXCEPTION 'gatestream_policy may manage only gatestream''s hypertables and aggregates, not %', p_relation
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Whole chunks past the longest retention (sql/006), of gatestream's hypertables only.
CREATE OR REPLACE PROCEDURE gatestream.drop_expired_chunks(p_hypertable regclass, p_keep_days integer)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_keep_days IS NULL OR p_keep_days < 1 THEN
        RAISE EXCEPTION 'keep_days must be >= 1, got %', p_keep_days;
    END IF;
    PERFORM drop_chunks(gatestream.policy_target(p_hypertable), older_than => now() - make_interval(days => p_keep_days));
END
$$;

-- One batch of delete_expired_rows: at most p_batch rows of a retention resource older than
-- p_cutoff (at least a day ago) and not before p_from; of every organization but p_except, or
-- of p_organization alone. The number deleted.
CREATE OR REPLACE FUNCTION gatestream.delete_expired_batch(
    p_hypertable regclass, p_from timestamptz, p_cutoff timestamptz, p_except integer[], p_organization integer,
    p_batch integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_time    name;
    v_deleted bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gatestream.retention_resources WHERE hypertable = p_hypertable) THEN
        RAISE EXCEPTION '% is not a retention resource', p_hypertable USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_cutoff IS NULL OR p_cutoff > now() - interval '1 day' THEN
        RAISE EXCEPTION 'a retention cutoff is at least a day ago, got %', p_cutoff;
    END IF;
    v_time := gatestream.time_column(p_hypertable);
    IF p_organization IS NULL THEN
        EXECUTE format(
            'DELETE FROM %1$s t USING (SELECT event_id, %2$I FROM %1$s
                WHERE %2$I >= $1 AND %2$I < $2 AND organization_id <> ALL ($3) LIMIT $4) d
              WHERE t.event_id = d.event_id AND t.%2$I = d.%2$I',
            p_hypertable, v_time) USING p_from, p_cutoff, p_except, p_batch;
    ELSE
        EXECUTE format(
            'DELETE FROM %1$s t USING (SELECT event_id, %2$I FROM %1$s
                WHERE organization_id = $3 AND %2$I >= $1 AND %2$I < $2 LIMIT $4) d
              WHERE t.event_id = d.event_id AND t.%2$I = d.%2$I',
            p_hypertable, v_time) USING p_from, p_cutoff, p_organization, p_batch;
    END IF;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- sql/006's procedure, its DELETE through delete_expired_batch (it stays the caller's: it
-- commits between batches); the same groups and progress as before.
CREATE OR REPLACE PROCEDURE gatestream.delete_expired_rows(
    p_hypertable regclass, p_default_days integer, p_batch integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    v_resource  text;
    v_max_days  integer;
    v_except    integer[];
    v_from      timestamptz;
    v_cutoff    timestamptz;
    v_group     record;
BEGIN
    SELECT resource_type INTO v_resource FROM gatestream.retention_resources WHERE hypertable = p_hypertable;
    IF v_resource IS NULL THEN
        RAISE EXCEPTION '% is not a retention resource', p_hypertable;
    END IF;
    SELECT coalesce((SELECT retention_days FROM monitoring.retention_policies
                      WHERE resource_type = v_resource AND organization_id IS NULL), p_default_days)
      INTO p_default_days;
    SELECT greatest(p_default_days, coalesce(max(retention_days), 0)) INTO v_max_days
      FROM monitoring.retention_policies WHERE resource_type = v_resource AND organization_id IS NOT NULL;

    -- organizations whose retention differs from the default form groups of their own
    SELECT coalesce(array_agg(organization_id ORDER BY organization_id), '{}') INTO v_except
      FROM monitoring.retention_policies
     WHERE resource_type = v_resource AND organization_id IS NOT NULL AND retention_days <> p_default_days;

    FOR v_group IN
        SELECT 'default:' || p_default_days || ':' || md5(v_except::text) AS key, p_default_days AS days, NULL::integer AS org
        UNION ALL
        SELECT 'org:' || organization_id || ':' || retention_days, retention_days, organization_id
          FROM monitoring.retention_policies
         WHERE resource_type = v_resource AND organization_id IS NOT NULL AND retention_days <> p_default_days
    LOOP
        v_cutoff := now() - make_interval(days => v_group.days);
        -- rows older than the longest retention are in chunks about to be dropped; a day of
        -- margin covers the chunk that straddles that line
        SELECT cleaned_before - interval '1 hour' INTO v_from FROM gatestream.org_retention_progress
         WHERE hypertable = p_hypertable AND group_key = v_group.key;
        v_from := coalesce(v_from, now() - make_interval(days => v_max_days + 1));
        LOOP
            EXIT WHEN gatestream.delete_expired_batch(p_hypertable, v_from, v_cutoff, v_except, v_group.org, p_batch)
                      < p_batch;
            COMMIT;
        END LOOP;
        INSERT INTO gatestream.org_retention_progress (hypertable, group_key, cleaned_before)
        VALUES (p_hypertable, v_group.key, v_cutoff)
        ON CONFLICT (hypertable, group_key) DO UPDATE SET cleaned_before = excluded.cleaned_before, updated_at = now();
        COMMIT;
    END LOOP;
    -- forget groups that no longer exist
    DELETE FROM gatestream.org_retention_progress p
     WHERE p.hypertable = p_hypertable AND p.updated_at < now() - interval '30 days';
    COMMIT;
END
$$;

-- What the retention jobs would delete now (consumers/policy/reconcile.py impact, logged with
-- each job change): counts only, per organization, and the chunks past the longest retention;
-- the policy consumer reads no event row itself.
CREATE OR REPLACE FUNCTION gatestream.retention_impact(p_hypertable regclass, p_default_days integer, p_max_days integer)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_resource text;
    v_chunks   bigint;
    v_rows     jsonb;
BEGIN
    SELECT resource_type INTO v_resource FROM gatestream.retention_resources WHERE hypertable = p_hypertable;
    IF v_resource IS NULL THEN
        RAISE EXCEPTION '% is not a retention resource', p_hypertable USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT count(*) INTO v_chunks FROM show_chunks(p_hypertable, older_than => now() - make_interval(days => p_max_days));
    EXECUTE format(
        'SELECT coalesce(jsonb_object_agg(organization_id, n), ''{}'') FROM (
           SELECT t.organization_id, count(*) AS n FROM %s t
             LEFT JOIN monitoring.retention_policies p ON p.resource_type = $1 AND p.organization_id = t.organization_id
            WHERE t.%I < now() - make_interval(days => coalesce(p.retention_days, $2))
            GROUP BY 1) c',
        p_hypertable, gatestream.time_column(p_hypertable)) INTO v_rows USING v_resource, p_default_days;
    RETURN jsonb_build_object('chunks_to_drop', v_chunks, 'rows_to_delete', v_rows);
END
$$;

SELECT gatestream.pin_definer('gatestream.drop_expired_chunks(regclass, integer)');
SELECT gatestream.pin_definer('gatestream.retention_impact(regclass, integer, integer)');
SELECT gatestream.pin_definer('gatestream.delete_expired_batch(regclass, timestamptz, timestamptz, integer[], integer, integer)');
SELECT gatestream.pin_definer('gatestream.presence_sweep(integer)');
ALTER FUNCTION gatestream.policy_target(regclass) OWNER TO gatestream_owner;
ALTER TABLE gatestream.org_retention_progress OWNER TO gatestream_owner;

-- The owner's routines read pg_stat_activity (apache/011's refresh waits for open transactions);
-- the policy consumer reads cron.database_name (a superuser's setting, readable with
-- pg_read_all_settings) to find pg_cron.
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT * FROM (VALUES ('pg_read_all_stats', 'gatestream_owner'), ('pg_read_all_settings', 'gatestream_policy'))
                           AS v (grp, member)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_auth_members a
                        WHERE a.roleid = to_regrole(m.grp) AND a.member = to_regrole(m.member)) THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', m.grp, m.member);
            EXCEPTION WHEN duplicate_object OR unique_violation OR internal_error THEN
                NULL;  -- granted by another database's migration meanwhile
            END;
        END IF;
    END LOOP;
END $$;

-- The policy consumer is no longer the owner.
DO $$
BEGIN
    IF pg_has_role('gatestream_policy', 'gatestream_owner', 'MEMBER')
       AND EXISTS (SELECT 1 FROM pg_auth_members WHERE roleid = to_regrole('gatestream_owner')
                                                   AND member = to_regrole('gatestream_policy')) THEN
        REVOKE gatestream_owner FROM gatestream_policy;
    END IF;
EXCEPTION WHEN internal_error THEN
    NULL;  -- "tuple concurrently updated": revoked by another database's migration meanwhile
END $$;

-- What it reads (the policies, the resources, which migrations ran: engines.py's check) and the row retention's
-- bookkeeping, which delete_expired_rows keeps as its caller.
GRANT USAGE ON SCHEMA monitoring, gatestream TO gatestream_policy;
GRANT SELECT ON monitoring.retention_policies, gatestream.retention_resources, gatestream.schema_migrations
    TO gatestream_policy;
GRANT SELECT, INSERT, UPDATE, DELETE ON gatestream.org_retention_progress TO gatestream_policy;
-- its consumer group's offsets (the policy topic, consumers/offsets.py) and the invalid change
-- events it dead-letters (consumers/checkpoint.py records each once)
GRANT SELECT, INSERT, UPDATE ON gatestream.consumer_offsets TO gatestream_policy;
GRANT SELECT, INSERT ON gatestream.dead_letters TO gatestream_policy;
