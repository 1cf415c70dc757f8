-- The exporter's fleet metrics (gatestream_gateways{state}, gatestream_agents{state},
-- gatestream_gateways_silent; gatestream.fleet.state_counts) were missing from its scrape as its
-- own login (issue 25): it could not read the presence tables. It gets the columns the counts
-- read and nothing else: no gateway's id, organization or api_key.
GRANT SELECT (status, last_seen_at) ON monitoring.gateway_instances TO gatestream_exporter;
GRANT SELECT (status) ON monitoring.agent_instances TO gatestream_exporter;
