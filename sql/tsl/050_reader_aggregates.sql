-- The reader's views of the continuous aggregates (issue 25; roles: sql/050, the reader's
-- function and views: sql/051). The continuous aggregates pass to gatestream_owner with the
-- rest of the schema (sql/050 leaves them to this edition's migration).
DO $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT view_schema, view_name FROM timescaledb_information.continuous_aggregates
              WHERE view_schema = 'monitoring' ORDER BY view_name
    LOOP
        EXECUTE format('ALTER MATERIALIZED VIEW %I.%I OWNER TO gatestream_owner', a.view_schema, a.view_name);
        CALL gatestream.reader_view(a.view_name);
    END LOOP;
END $$;
