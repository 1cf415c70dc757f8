-- PostgreSQL roles of the pipeline's principals (issue 25) and their grants, least privilege.
-- Group roles, NOLOGIN: a process logs in as a user that is a member of one of them (made by
-- the stack with a password from its settings; tests make theirs with gatestream.roles).
--   gatestream_owner    migrations / admin: owns the schemas and every relation in them
--   gatestream_ingest   writes the events: INSERT/SELECT on the hypertables, its offsets and
--                       dead letters, the presence registry; no DDL, no DELETE/UPDATE of events
--   gatestream_replay   as ingest, plus its run tables (replay_runs; a run's progress rows)
--   gatestream_policy   the policy consumer: TimescaleDB's jobs API and pg_cron through the
--                       owner's SECURITY DEFINER routines (sql/054, sql/tsl/054, sql/apache/054);
--                       not a member of gatestream_owner (this file made it one until it was
--                       amended: 054 revokes that where an earlier form granted it)
--   gatestream_exporter the database metrics: pg_monitor and the bookkeeping tables it reports
--   gatestream_reader   dashboards / the product's API: the monitoring hypertables and
--                       aggregates, one organization at a time, through schema reader (sql/051)
-- gatestream_owner alone has LOGIN (and no password: where the server asks for one, nobody
-- logs in as it): TimescaleDB runs a hypertable's policies as a background task and refuses
-- to add one ("Hypertable owner must have LOGIN permission to run background tasks").
-- Roles are cluster-global and this runs in every database migrated on the server, sometimes
-- several at once (tests clone templates in parallel): creating a role or a membership that
-- another session made meanwhile is not an error.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['gatestream_owner', 'gatestream_ingest', 'gatestream_replay', 'gatestream_policy',
                             'gatestream_exporter', 'gatestream_reader']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I ' || CASE WHEN r = 'gatestream_owner' THEN 'LOGIN' ELSE 'NOLOGIN' END, r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- made by a migration of another database meanwhile
            END;
        END IF;
    END LOOP;
    IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gatestream_owner') THEN
        BEGIN
            ALTER ROLE gatestream_owner LOGIN;
        EXCEPTION WHEN internal_error THEN
            NULL;  -- "tuple concurrently updated": another database's migration did it
        END;
    END IF;
END $$;

-- Memberships: replay does what ingest does; the exporter reads the server's statistics views.
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT * FROM (VALUES ('gatestream_ingest', 'gatestream_replay'),
                                   ('pg_monitor', 'gatestream_exporter'), ('pg_read_all_stats', 'gatestream_policy'))
                           AS v (grp, member)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_auth_members a
                        WHERE a.roleid = to_regrole(m.grp) AND a.member = to_regrole(m.member)) THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', m.grp, m.member);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END $$;

-- The owner owns the schemas and every relation in them (hypertables pass it on to their
-- chunks). Migrations that follow and run as a superuser should end the same way (a later
-- migration can repeat this block).
ALTER SCHEMA monitoring OWNER TO gatestream_owner;
ALTER SCHEMA gatestream OWNER TO gatestream_owner;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('monitoring', 'gatestream') AND c.relkind IN ('r', 'p', 'v')  -- a sequence follows its table
                AND c.relowner <> to_regrole('gatestream_owner')
    LOOP
        IF t.relkind = 'v' THEN
            CONTINUE;  -- continuous aggregates: their edition's migration (tsl/050)
        END IF;
        EXECUTE format('ALTER TABLE %I.%I OWNER TO gatestream_owner', t.nspname, t.relname);
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA monitoring, gatestream TO gatestream_ingest, gatestream_exporter;

-- ingest (and so replay): the events, inserted and read back (ON CONFLICT, the staging path);
-- never updated or deleted.
GRANT SELECT, INSERT ON monitoring.active_windows, monitoring.visited_sites, monitoring.screenshots,
    monitoring.user_sessions, monitoring.gateway_status_snapshots TO gatestream_ingest;
-- offsets: read at assignment, inserted or moved with each batch (consumers/offsets.py)
GRANT SELECT, INSERT, UPDATE ON gatestream.consumer_offsets TO gatestream_ingest;
-- dead letters: recorded once per event (consumers/deadletter.py)
GRANT SELECT, INSERT ON gatestream.dead_letters TO gatestream_ingest;
-- presence (consumers/presence.py, sql/030): gateways registered on first sight, then moved
GRANT SELECT, INSERT, UPDATE ON monitoring.gateway_instances, monitoring.agent_instances TO gatestream_ingest;
-- the retention resources name the hypertables (read by the consumers' table checks)
GRANT SELECT ON gatestream.retention_resources TO gatestream_ingest;

-- replay: its runs, and a forgotten run's progress rows (consumers/replay_runs.py forget)
GRANT SELECT, INSERT, UPDATE, DELETE ON gatestream.replay_runs TO gatestream_replay;
GRANT DELETE ON gatestream.consumer_offsets TO gatestream_replay;

-- exporter: what gatestream.dbmetrics reports besides the catalog views (pg_monitor)
GRANT SELECT ON gatestream.retention_resources, monitoring.retention_policies TO gatestream_exporter;

-- reader: nothing in monitoring; its views in schema reader (sql/051)
