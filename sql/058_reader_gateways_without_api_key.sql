-- A reader never sees a gateway's API key (issue 25). sql/051 made reader.gateway_instances as
-- SELECT * of monitoring.gateway_instances, api_key included: any dashboard login could read
-- every key of its organization and act as its gateways. The view now names the columns a
-- dashboard shows (an allow-list: a column added to the table later, a secret or not, reaches
-- readers only when a migration adds it here). A view cannot lose a column through CREATE OR
-- REPLACE, so it is dropped and made again in this migration's one transaction (nobody sees it
-- missing); the grants it had are given again (the reader's, and any a DBA added), and nothing
-- depends on it (reader.gateways_latest reads monitoring's table). Idempotent: it ends the same
-- way each time. gatestream.reader_view() must not be called for gateway_instances again.
DO $$
DECLARE
    v_grants record;
    v_acl    aclitem[] := (SELECT c.relacl FROM pg_class c WHERE c.oid = to_regclass('reader.gateway_instances'));
BEGIN
    DROP VIEW IF EXISTS reader.gateway_instances;
    CREATE VIEW reader.gateway_instances WITH (security_barrier) AS
    SELECT id, organization_id, name, status, last_seen_at, config, created_at, reported_at, reported_figures
      FROM monitoring.gateway_instances
     WHERE organization_id = (SELECT gatestream.reader_organization());
    ALTER VIEW reader.gateway_instances OWNER TO gatestream_owner;
    GRANT SELECT ON reader.gateway_instances TO gatestream_reader;
    FOR v_grants IN SELECT a.grantee, a.privilege_type FROM aclexplode(coalesce(v_acl, '{}')) a
                     WHERE a.grantee <> to_regrole('gatestream_owner')
    LOOP
        EXECUTE format('GRANT %s ON reader.gateway_instances TO %s', v_grants.privilege_type,
                       CASE WHEN v_grants.grantee = 0 THEN 'PUBLIC' ELSE v_grants.grantee::regrole::text END);  -- regrole's text is quoted as needed
    END LOOP;
END $$;
COMMENT ON VIEW reader.gateway_instances IS
    'The reader''s organization''s gateways, without api_key (a reader never sees a gateway''s key)';
