-- Gateway and agent registry (seed 001). Not hypertables: small, updated in place.
CREATE TABLE IF NOT EXISTS monitoring.gateway_instances (
    id              uuid PRIMARY KEY,
    organization_id integer      NOT NULL,
    name            varchar(255),
    api_key         varchar(255) UNIQUE,
    status          varchar(50)  CHECK (status IN ('ONLINE', 'OFFLINE', 'ERROR')),
    last_seen_at    timestamptz,
    config          jsonb,
    created_at      timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_instances_org_idx ON monitoring.gateway_instances (organization_id);

CREATE TABLE IF NOT EXISTS monitoring.agent_instances (
    id           uuid PRIMARY KEY,
    gateway_id   uuid REFERENCES monitoring.gateway_instances (id),
    agent_uid    varchar(255) UNIQUE,
    hostname     varchar(255),
    status       varchar(50) CHECK (status IN ('ONLINE', 'OFFLINE')),
    last_seen_at timestamptz,
    policy_id    integer,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_instances_gateway_idx ON monitoring.agent_instances (gateway_id);
