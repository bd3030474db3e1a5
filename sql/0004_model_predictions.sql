-- 0004: one row per inference call (lib/training/serving.py), what model_metrics is computed from:
-- latency, fallback rate and error rate per model and window.

CREATE TABLE model_predictions (
    id            bigserial PRIMARY KEY,
    -- The model that was asked: NULL when the task had no serving model. SET NULL, not CASCADE: deleting a
    -- registry row must not erase the history of the calls made while it served.
    model_id      bigint REFERENCES model_registry(id) ON DELETE SET NULL,
    task          text NOT NULL CHECK (task IN ('master_reg', 'preset_cls', 'align_conf')),
    model_version text,                            -- kept next to model_id: it outlives the registry row
    -- No foreign key to jobs: a call can come before its jobs row exists (the app asks for a preset while
    -- the upload is still arriving; the ingestion registers the job later) and calls are logged in batches
    -- that must not fail because of one job. NULL for calls outside a job (benchmarks, warm-up, admin).
    job_id        uuid,
    n_rows        integer NOT NULL CHECK (n_rows > 0),
    latency_ms    double precision NOT NULL CHECK (latency_ms >= 0),  -- the whole call, fallback included
    source        text NOT NULL CHECK (source IN ('model', 'fallback')),
    -- Why the rule-based fallback answered (lib/training/inference.py's codes), and the model problem in
    -- words (the load error, the sha256 mismatch ...).
    fallback_code text CHECK (fallback_code IN ('missing', 'load_failed', 'timeout', 'run_failed', 'bad_output')),
    error         text,
    -- When the call was made (the client sets it: rows are written in batches, later than the call).
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_predictions_fallback_has_code CHECK ((source = 'fallback') = (fallback_code IS NOT NULL)),
    CONSTRAINT model_predictions_model_answers_named CHECK (source = 'fallback' OR model_version IS NOT NULL),
    CONSTRAINT model_predictions_model_has_version CHECK (model_id IS NULL OR model_version IS NOT NULL)
);
-- model_metrics windows: per model (latency, fallback and error rates), and per task (which also counts
-- the calls that had no model to ask).
CREATE INDEX model_predictions_model_created_idx ON model_predictions (model_id, created_at);
CREATE INDEX model_predictions_task_created_idx ON model_predictions (task, created_at);
