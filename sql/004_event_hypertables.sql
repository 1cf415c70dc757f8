-- One hypertable per event type, 1-day chunks on the event-time column (seed 000 §4).
--
-- Identity: the seeds' `id SERIAL PRIMARY KEY` cannot be a hypertable key (a unique
-- index must include the time column) and would make a resent event a second row.
-- The key is (event_id, <time column>): event_id is assigned by the gateway and kept
-- on every resend, so a replayed or resent event can never become a second row.
-- Default TimescaleDB indexes are off; the (organization_id, time DESC) index serves
-- the product's per-organization queries and the primary key serves identity.

CREATE TABLE IF NOT EXISTS monitoring.active_windows (
    event_id              uuid        NOT NULL,
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    datetime              timestamptz NOT NULL,
    title                 text,
    process_name          text,
    icon                  text,
    active_time           integer CHECK (active_time >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, datetime)
);
SELECT create_hypertable('monitoring.active_windows', 'datetime',
    chunk_time_interval => interval '1 day', create_default_indexes => false, if_not_exists => true);
CREATE INDEX IF NOT EXISTS active_windows_org_time_idx ON monitoring.active_windows (organization_id, datetime DESC);

CREATE TABLE IF NOT EXISTS monitoring.visited_sites (
    event_id              uuid        NOT NULL,
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    datetime              timestamptz NOT NULL,
    url                   text        NOT NULL,
    title                 text,
    browser               text,
    duration              integer CHECK (duration >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, datetime)
);
SELECT create_hypertable('monitoring.visited_sites', 'datetime',
    chunk_time_interval => interval '1 day', create_default_indexes => false, if_not_exists => true);
CREATE INDEX IF NOT EXISTS visited_sites_org_time_idx ON monitoring.visited_sites (organization_id, datetime DESC);

CREATE TABLE IF NOT EXISTS monitoring.screenshots (
    event_id              uuid        NOT NULL,
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    datetime              timestamptz NOT NULL,
    storage_url           text        NOT NULL,
    size_bytes            bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256                text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    width                 integer CHECK (width > 0),
    height                integer CHECK (height > 0),
    mime_type             text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, datetime)
);
SELECT create_hypertable('monitoring.screenshots', 'datetime',
    chunk_time_interval => interval '1 day', create_default_indexes => false, if_not_exists => true);
CREATE INDEX IF NOT EXISTS screenshots_org_time_idx ON monitoring.screenshots (organization_id, datetime DESC);

CREATE TABLE IF NOT EXISTS monitoring.user_sessions (
    event_id              uuid        NOT NULL,
    organization_id       integer     NOT NULL,
    users_on_computers_id integer     NOT NULL,
    datetime              timestamptz NOT NULL,
    session_event         text        NOT NULL
        CHECK (session_event IN ('logon', 'logoff', 'lock', 'unlock', 'idle', 'active')),
    username              text,
    session_id            text,
    duration_seconds      integer CHECK (duration_seconds >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, datetime)
);
SELECT create_hypertable('monitoring.user_sessions', 'datetime',
    chunk_time_interval => interval '1 day', create_default_indexes => false, if_not_exists => true);
CREATE INDEX IF NOT EXISTS user_sessions_org_time_idx ON monitoring.user_sessions (organization_id, datetime DESC);

-- Seed 001's gateway_status_snapshots, as a hypertable on its `timestamp` column.
-- No foreign key to gateway_instances: a snapshot from a gateway not yet registered
-- must still land (the registry is filled by the product, not by this pipeline).
CREATE TABLE IF NOT EXISTS monitoring.gateway_status_snapshots (
    event_id         uuid        NOT NULL,
    organization_id  integer     NOT NULL,
    gateway_id       uuid        NOT NULL,
    "timestamp"      timestamptz NOT NULL,
    cpu_usage        double precision NOT NULL CHECK (cpu_usage BETWEEN 0 AND 100),
    disk_usage       double precision NOT NULL CHECK (disk_usage BETWEEN 0 AND 100),
    memory_usage     double precision NOT NULL CHECK (memory_usage BETWEEN 0 AND 100),
    queue_depth      integer     NOT NULL CHECK (queue_depth >= 0),
    connected_agents integer     NOT NULL CHECK (connected_agents >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, "timestamp")
);
SELECT create_hypertable('monitoring.gateway_status_snapshots', 'timestamp',
    chunk_time_interval => interval '1 day', create_default_indexes => false, if_not_exists => true);
CREATE INDEX IF NOT EXISTS gateway_status_snapshots_org_time_idx
    ON monitoring.gateway_status_snapshots (organization_id, "timestamp" DESC);
CREATE INDEX IF NOT EXISTS gateway_status_snapshots_gateway_time_idx
    ON monitoring.gateway_status_snapshots (gateway_id, "timestamp" DESC);
