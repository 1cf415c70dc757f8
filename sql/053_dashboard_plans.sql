-- Dashboards run with custom plans (issue 23 §4). A prepared dashboard query (psycopg prepares
-- a statement from its fifth run; Prisma and most drivers prepare too) switches to a generic plan,
-- and a generic plan cannot see which organization it is for: it estimates every organization
-- at the average size and, for a page of users over 30 days, reads the whole organization's
-- rows from the (organization, day) index and filters the users — 3 ms for a small one, 50 ms
-- at 2M rows and 134 ms p99 at 10M for the largest (measured by gatestream bench queries).
-- Organizations are Zipf-sized, so the plan must be made for the parameters at hand: planning
-- each time costs a few milliseconds, far less than a wrong plan for a large tenant.
-- Set for the dashboards' role (applies at login); bench queries sets it on its session.
-- Roles are cluster-wide and databases migrate in parallel (each test's template): another
-- database's migration may set it at the same moment ("tuple concurrently updated").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                    WHERE r.rolname = 'gatestream_reader' AND s.setdatabase = 0
                      AND 'plan_cache_mode=force_custom_plan' = ANY (s.setconfig)) THEN
        BEGIN
            ALTER ROLE gatestream_reader SET plan_cache_mode = force_custom_plan;
        EXCEPTION WHEN internal_error OR unique_violation THEN
            NULL;  -- set by the other migration
        END;
    END IF;
END $$;
