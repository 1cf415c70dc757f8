-- A database migrated under the Apache edition and updated to this one has the reader's views
-- (apache/050) on the Apache edition's aggregate tables, which tsl/011 and tsl/021 drop and
-- replace with continuous aggregates: those views go first; tsl/050 makes them again on the
-- continuous aggregates. Only views over a table go (on this edition the aggregates are
-- views: a database already here keeps its reader's views, whenever this runs).
DO $$
DECLARE
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY ARRAY['active_windows_hourly', 'active_windows_daily', 'visited_sites_hourly',
                                  'visited_sites_daily', 'active_windows_user_daily', 'active_windows_app_daily',
                                  'visited_sites_site_daily']
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'monitoring' AND c.relname = v_name AND c.relkind = 'r') THEN
            EXECUTE format('DROP VIEW IF EXISTS reader.%I', v_name);
        END IF;
    END LOOP;
END $$;
