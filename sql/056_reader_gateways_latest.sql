-- The reader's form of the dashboards' "latest status of every gateway" (issue 25; the
-- reader's views: sql/051). Through reader.gateway_status_snapshots, a security_barrier view,
-- each gateway's newest snapshot is no longer TimescaleDB's ordered ChunkAppend with LIMIT 1:
-- the per-gateway condition stays outside the barrier, so every chunk's rows of the
-- organization are read and sorted per gateway (p99 6.8 s under load for the largest
-- organization, README). Here the lateral join runs inside the view, on monitoring's tables
-- (the owner's), one newest snapshot per gateway through the (gateway_id, timestamp DESC)
-- index, and the organization filter is the reader's, as in every reader view.
CREATE OR REPLACE VIEW reader.gateways_latest WITH (security_barrier) AS
SELECT g.id, g.organization_id, g.name, g.status, g.last_seen_at,
       s."timestamp", s.cpu_usage, s.disk_usage, s.memory_usage, s.queue_depth, s.connected_agents
  FROM monitoring.gateway_instances g
  LEFT JOIN LATERAL (
        SELECT s."timestamp", s.cpu_usage, s.disk_usage, s.memory_usage, s.queue_depth, s.connected_agents
          FROM monitoring.gateway_status_snapshots s
         WHERE s.gateway_id = g.id AND s.organization_id = g.organization_id
         ORDER BY s."timestamp" DESC
         LIMIT 1) s ON true
 WHERE g.organization_id = (SELECT gatestream.reader_organization());
ALTER VIEW reader.gateways_latest OWNER TO gatestream_owner;
GRANT SELECT ON reader.gateways_latest TO gatestream_reader;
