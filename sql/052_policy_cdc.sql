-- Change data capture of monitoring.retention_policies (Debezium's PostgreSQL connector on
-- Kafka Connect, see ops/connect/ and gatestream/cdc.py): any writer of the table, not only
-- `gatestream policy set`, reaches the policy consumer within seconds.
--
-- The connector logs in as its own role, not the superuser: REPLICATION (a logical slot of
-- its own), SELECT on the one table (its first snapshot), nothing else. Its password is not
-- here: `gatestream cdc register` sets it from GATESTREAM_CDC_PASSWORD. Roles are global to
-- the server and databases are migrated in parallel (tests): a concurrent CREATE ROLE shows
-- up as duplicate_object or unique_violation, both meaning "already there".
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gatestream_cdc') THEN
        CREATE ROLE gatestream_cdc WITH LOGIN REPLICATION;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA monitoring TO gatestream_cdc;
GRANT SELECT ON monitoring.retention_policies TO gatestream_cdc;

-- Deletes and updates carry the whole old row (its resource_type for the consumer's log),
-- not only the key: the table is small and rarely written.
ALTER TABLE monitoring.retention_policies REPLICA IDENTITY FULL;

-- The publication the connector reads (publication.autocreate.mode = disabled): made here by
-- the table's owner, so the connector's role needs no ownership of anything.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'gatestream_policies') THEN
        CREATE PUBLICATION gatestream_policies FOR TABLE monitoring.retention_policies;
    END IF;
END
$$;
