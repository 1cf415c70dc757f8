-- Replay runs. A run is one execution of a selection: what was asked (spec, as typed,
-- relative times unresolved), what that resolved to when the run started (times,
-- partition ranges), its state and when it started and ended. Its per-partition
-- progress is in gatestream.consumer_offsets under the run's own group
-- (gatestream-replay-run-<id>), written with the rows like any consumer's offsets.
-- Re-running a completed selection starts a new run; only an unfinished run (running,
-- or failed) resumes; --restart abandons it.
CREATE TABLE IF NOT EXISTS gatestream.replay_runs (
    run_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    spec        jsonb       NOT NULL,
    resolved    jsonb       NOT NULL,
    state       text        NOT NULL DEFAULT 'running'
                            CHECK (state IN ('running', 'complete', 'failed', 'abandoned')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    summary     jsonb
);
-- at most one unfinished run per name: that is the one a rerun resumes
CREATE UNIQUE INDEX IF NOT EXISTS replay_runs_one_unfinished
    ON gatestream.replay_runs (name) WHERE state IN ('running', 'failed');
CREATE INDEX IF NOT EXISTS replay_runs_by_name ON gatestream.replay_runs (name, run_id DESC);
COMMENT ON TABLE gatestream.replay_runs IS
    'gatestream replay runs: selection as typed and as resolved, state, times; progress in consumer_offsets';
