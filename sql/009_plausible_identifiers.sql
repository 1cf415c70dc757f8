-- Identifiers that cannot be real (organization and device ids of 0 or below) are refused
-- by the database as well as by the consumers (which dead-letter them as
-- invalid-identifier before they reach a COPY). NOT VALID: rows stored before this
-- migration are not re-checked (a failed check there would block the migration); every
-- new row is.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['active_windows', 'visited_sites', 'screenshots', 'user_sessions', 'gateway_status_snapshots']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                        WHERE conname = t || '_organization_id_positive' AND conrelid = ('monitoring.' || t)::regclass) THEN
            EXECUTE format('ALTER TABLE monitoring.%I ADD CONSTRAINT %I CHECK (organization_id > 0) NOT VALID',
                           t, t || '_organization_id_positive');
        END IF;
        IF t <> 'gateway_status_snapshots' AND NOT EXISTS (
                SELECT 1 FROM pg_constraint
                 WHERE conname = t || '_users_on_computers_id_positive' AND conrelid = ('monitoring.' || t)::regclass) THEN
            EXECUTE format('ALTER TABLE monitoring.%I ADD CONSTRAINT %I CHECK (users_on_computers_id > 0) NOT VALID',
                           t, t || '_users_on_computers_id_positive');
        END IF;
    END LOOP;
END $$;
