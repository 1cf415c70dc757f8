-- The Apache edition's policy consumer without the owner's powers (issue 25; why: sql/054).
-- pg_cron runs a job as the user who scheduled it, here the policy consumer's login: what its
-- jobs CALL runs as the owner (drop_expired_chunks, delete_expired_rows' batches and
-- presence_sweep: sql/054; the aggregates' refresh: here, which already takes only a source
-- that has aggregates). pg_cron itself lets a user see, alter and unschedule only its own jobs.
SELECT gatestream.pin_definer('gatestream.refresh_aggregates_incremental(regclass, integer)');
GRANT SELECT ON gatestream.aggregate_watermarks TO gatestream_policy;
