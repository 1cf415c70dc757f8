-- What the retention jobs run. Both job engines (TimescaleDB's jobs, pg_cron) call these.
--
-- drop_expired_chunks: whole chunks older than the longest retention any organization
--   has on the hypertable (so no organization ever loses rows early).
-- delete_expired_rows: every organization's rows older than its own retention, in
--   batches with a COMMIT between them (no long locks, bounded WAL per transaction).
--   Organizations are grouped by effective retention (their override, else the default);
--   each group remembers up to where it is clean (org_retention_progress), so a run
--   only scans what expired since the last one. A change of an organization's policy
--   changes its group's key and so starts that group from the full window again.

CREATE TABLE IF NOT EXISTS gatestream.org_retention_progress (
    hypertable     regclass    NOT NULL,
    group_key      text        NOT NULL,  -- 'org:<id>:<days>' or 'default:<days>:<md5 of exceptions>'
    cleaned_before timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hypertable, group_key)
);

CREATE OR REPLACE FUNCTION gatestream.time_column(p_hypertable regclass) RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT d.column_name::name
      FROM timescaledb_information.dimensions d
      JOIN pg_class c ON c.relname = d.hypertable_name
      JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = d.hypertable_schema
     WHERE c.oid = p_hypertable AND d.dimension_number = 1
$$;

CREATE OR REPLACE PROCEDURE gatestream.drop_expired_chunks(p_hypertable regclass, p_keep_days integer)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_keep_days IS NULL OR p_keep_days < 1 THEN
        RAISE EXCEPTION 'keep_days must be >= 1, got %', p_keep_days;
    END IF;
    PERFORM drop_chunks(p_hypertable, older_than => now() - make_interval(days => p_keep_days));
END
$$;

CREATE OR REPLACE PROCEDURE gatestream.delete_expired_rows(
    p_hypertable regclass, p_default_days integer, p_batch integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    v_resource  text;
    v_time      name;
    v_max_days  integer;
    v_except    integer[];
    v_key       text;
    v_from      timestamptz;
    v_cutoff    timestamptz;
    v_deleted   bigint;
    v_group     record;
BEGIN
    SELECT resource_type INTO v_resource FROM gatestream.retention_resources WHERE hypertable = p_hypertable;
    IF v_resource IS NULL THEN
        RAISE EXCEPTION '% is not a retention resource', p_hypertable;
    END IF;
    v_time := gatestream.time_column(p_hypertable);
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
            IF v_group.org IS NULL THEN
                EXECUTE format(
                    'DELETE FROM %1$s t USING (SELECT event_id, %2$I FROM %1$s
                        WHERE %2$I >= $1 AND %2$I < $2 AND organization_id <> ALL ($3) LIMIT $4) d
                      WHERE t.event_id = d.event_id AND t.%2$I = d.%2$I',
                    p_hypertable, v_time) USING v_from, v_cutoff, v_except, p_batch;
            ELSE
                EXECUTE format(
                    'DELETE FROM %1$s t USING (SELECT event_id, %2$I FROM %1$s
                        WHERE organization_id = $3 AND %2$I >= $1 AND %2$I < $2 LIMIT $4) d
                      WHERE t.event_id = d.event_id AND t.%2$I = d.%2$I',
                    p_hypertable, v_time) USING v_from, v_cutoff, v_group.org, p_batch;
            END IF;
            GET DIAGNOSTICS v_deleted = ROW_COUNT;
            EXIT WHEN v_deleted < p_batch;
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

-- The form TimescaleDB's job scheduler calls (add_job): config carries the arguments.
CREATE OR REPLACE PROCEDURE gatestream.delete_expired_rows_job(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    CALL gatestream.delete_expired_rows((config ->> 'hypertable')::regclass, (config ->> 'default_days')::integer,
                                        coalesce((config ->> 'batch')::integer, 10000));
END
$$;
