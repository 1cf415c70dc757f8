-- Dashboards run with custom plans (issue 23 §4). A prepared dashboard query (psycopg prepares
-- a statement from its fifth run; Prisma and most drivers prepare too) switches to a generic plan,
-- and a generic plan cannot see which organization it is for: it estimates every organization
-- at the average size and, for a page of users over 30 days, reads the whole organization's
-- rows from the (organization, day) index and filters the users — 3 ms for a small one, 50 ms
-- at 2M rows and 134 ms p99 at 10M for the largest (measured by gatestream bench queries).
-- Organizations are Zipf-sized, so the plan must be made for the parameters at hand: planning
-- each time costs a few milliseconds, far less than a wrong plan for a large tenant.
-- Set for the dashboards' role (applies at login); bench queries sets it on its session.
ALTER ROLE gatestream_reader SET plan_cache_mode = force_custom_plan;
