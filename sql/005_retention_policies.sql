-- Per-organization retention (seed 001 shape), the source of truth for the policy
-- consumer. A row without organization_id is the default for its resource type; with
-- no such row the policy consumer's setting applies (365 days, seed 000).

-- The resource types a policy may name: one per hypertable. A foreign key to this
-- table, not free text, so a policy can never name something that is not ours.
CREATE TABLE IF NOT EXISTS gatestream.retention_resources (
    resource_type varchar(100) PRIMARY KEY,
    hypertable    regclass     NOT NULL UNIQUE
);
INSERT INTO gatestream.retention_resources (resource_type, hypertable) VALUES
    ('active_windows', 'monitoring.active_windows'),
    ('visited_sites', 'monitoring.visited_sites'),
    ('screenshots', 'monitoring.screenshots'),
    ('user_sessions', 'monitoring.user_sessions'),
    ('gateway_status_snapshots', 'monitoring.gateway_status_snapshots')
ON CONFLICT (resource_type) DO NOTHING;

CREATE TABLE IF NOT EXISTS monitoring.retention_policies (
    id              uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id integer      CHECK (organization_id > 0),
    resource_type   varchar(100) NOT NULL REFERENCES gatestream.retention_resources (resource_type),
    retention_days  integer      NOT NULL CHECK (retention_days BETWEEN 1 AND 36500),
    action          varchar(50)  NOT NULL DEFAULT 'delete' CHECK (action IN ('delete')),
    updated_at      timestamptz  NOT NULL DEFAULT now()
);
-- One policy per organization and resource type; one default (NULL organization) per type.
CREATE UNIQUE INDEX IF NOT EXISTS retention_policies_resource_org_key
    ON monitoring.retention_policies (resource_type, organization_id) NULLS NOT DISTINCT;
COMMENT ON TABLE monitoring.retention_policies IS
    'Retention per organization and resource type; organization_id NULL = the default of the type. '
    'Reconciled into TimescaleDB (or pg_cron) jobs by gatestream policy-consumer.';
