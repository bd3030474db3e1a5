-- 0002: results of the audio pipeline stages, one row per job each (upserted by job_id).

-- A job that a later stage cannot process (silent vocal, undecodable after all…) is 'failed' with the
-- stage and a reason a person understands; 'rejected' stays the ingestion's verdict on the upload.
ALTER TABLE jobs ADD COLUMN failed_stage text;
ALTER TABLE jobs ADD COLUMN failure_reason text;
ALTER TABLE jobs ADD CONSTRAINT jobs_failure_reason_iff_failed
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL AND failed_stage IS NOT NULL));

CREATE TABLE alignments (
    job_id      uuid PRIMARY KEY REFERENCES jobs(job_id),
    offset_ms   double precision NOT NULL,
    method      text NOT NULL CHECK (method IN ('gcc_phat', 'onset_xcorr', 'assume_shared_start')),
    confidence  real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    dtw_cost    double precision,
    tempo_ratio double precision CHECK (tempo_ratio IS NULL OR tempo_ratio > 0),
    stats       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mixes (
    job_id        uuid PRIMARY KEY REFERENCES jobs(job_id),
    preset        text NOT NULL,
    preset_source text NOT NULL CHECK (preset_source IN ('manifest', 'plan_default')),
    path          text NOT NULL,
    stats         jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE masters (
    job_id         uuid PRIMARY KEY REFERENCES jobs(job_id),
    params         real[] NOT NULL CHECK (cardinality(params) = 4),  -- low_shelf_db, high_shelf_db, comp_db, target_lufs
    params_source  text NOT NULL CHECK (params_source IN ('rules', 'model')),
    lufs_in        double precision,
    lufs_out       double precision,
    true_peak_dbtp double precision,
    path           text NOT NULL,
    report         jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
