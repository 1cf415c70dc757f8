-- Role settings reach the logins (issue 25). PostgreSQL applies at login the settings of the
-- user that logs in, never those of the roles it is a member of: sql/053's
-- `ALTER ROLE gatestream_reader SET plan_cache_mode = force_custom_plan` reached nobody, since
-- every process logs in as a user that is a member of its group role (gs_reader ...), and a
-- dashboard login ran its prepared queries with generic plans after all.
-- gatestream.copy_role_settings() gives every login that is a direct member of a gatestream_*
-- group role that role's cluster-wide settings (ALTER ROLE <login> SET ...), unless the login has
-- a value of its own for that setting (a DBA's choice stays). Run here for the logins that exist;
-- a login made later gets them where it is made (ops/postgres/secure login,
-- gatestream.roles.create_login); a migration that sets a group role's setting later calls it
-- again. Altering another role takes a superuser: run by anyone else (migrations as
-- gatestream_owner) it does nothing but say so, and a DBA runs `CALL gatestream.copy_role_settings()`.
-- Roles are cluster-wide and databases migrate in parallel: a login altered meanwhile by
-- another database's migration, or dropped meanwhile, is not an error. A setting's value is
-- given again as one literal: right for the settings gatestream sets (plan_cache_mode), not for
-- a list setting such as search_path, which a group role should not carry.
CREATE OR REPLACE PROCEDURE gatestream.copy_role_settings()
LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    IF NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) THEN
        RAISE NOTICE 'gatestream.copy_role_settings: % is not a superuser; the gatestream_* roles'' settings were not copied to their logins (a superuser runs CALL gatestream.copy_role_settings())', current_user;
        RETURN;
    END IF;
    FOR s IN
        SELECT m.rolname AS login, split_part(cfg, '=', 1) AS setting, substr(cfg, strpos(cfg, '=') + 1) AS value
          FROM pg_roles g
          JOIN pg_db_role_setting d ON d.setrole = g.oid AND d.setdatabase = 0
          CROSS JOIN LATERAL unnest(d.setconfig) AS cfg
          JOIN pg_auth_members a ON a.roleid = g.oid
          JOIN pg_roles m ON m.oid = a.member AND m.rolcanlogin AND NOT m.rolsuper
         WHERE g.rolname IN ('gatestream_ingest', 'gatestream_replay', 'gatestream_policy', 'gatestream_exporter',
                             'gatestream_reader')
           AND m.rolname <> 'gatestream_owner'
           AND NOT EXISTS (SELECT 1 FROM pg_db_role_setting l CROSS JOIN LATERAL unnest(l.setconfig) AS own
                            WHERE l.setrole = m.oid AND l.setdatabase = 0
                              AND split_part(own, '=', 1) = split_part(cfg, '=', 1))
         ORDER BY 1, 2
    LOOP
        BEGIN
            EXECUTE format('ALTER ROLE %I SET %I = %L', s.login, s.setting, s.value);
        EXCEPTION WHEN internal_error OR unique_violation OR undefined_object THEN
            NULL;  -- "tuple concurrently updated": another database's migration did it; or the login
                   -- was dropped meanwhile (tests drop theirs)
        END;
    END LOOP;
END
$$;
ALTER PROCEDURE gatestream.copy_role_settings() OWNER TO gatestream_owner;
REVOKE ALL ON PROCEDURE gatestream.copy_role_settings() FROM PUBLIC;
CALL gatestream.copy_role_settings();
