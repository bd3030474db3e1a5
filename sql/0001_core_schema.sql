-- 0001: core schema of seeds 000/001 and the admin tables they rely on.
-- Valid PostgreSQL 15+: indexes are separate statements; "window" is quoted (reserved word).

-- Plans and their retention policy (seed 000 §4; freetrial is shorter).
CREATE TABLE plans (
    plan        text PRIMARY KEY CHECK (plan ~ '^[a-z][a-z0-9_]*$'),
    description text NOT NULL
);
INSERT INTO plans (plan, description) VALUES
    ('freetrial', 'Free trial: shortest retention'),
    ('lite',      'Lite plan'),
    ('standard',  'Standard plan'),
    ('creator',   'Creator plan');

CREATE TABLE retention_policies (
    plan       text NOT NULL REFERENCES plans(plan),
    kind       text NOT NULL CHECK (kind IN ('inst', 'vocal', 'mix', 'master', 'preview', 'waveform')),
    days       integer NOT NULL CHECK (days > 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan, kind)
);
-- mix follows master (full-length derived audio); waveform follows preview.
INSERT INTO retention_policies (plan, kind, days)
SELECT p.plan, k.kind, CASE WHEN p.plan = 'freetrial' THEN k.trial_days ELSE k.days END
FROM plans p
CROSS JOIN (VALUES ('inst', 7, 3), ('vocal', 7, 3), ('mix', 15, 7), ('master', 15, 7),
                   ('preview', 30, 14), ('waveform', 30, 14)) AS k(kind, days, trial_days);

-- One row per upload, accepted or rejected.
CREATE TABLE jobs (
    job_id          uuid PRIMARY KEY,
    upload_prefix   text NOT NULL UNIQUE,          -- uploads/<job_id>/ in the object store
    user_id         uuid,                          -- NULL only when the manifest could not be read
    plan            text REFERENCES plans(plan),
    status          text NOT NULL CHECK (status IN ('registered', 'processing', 'done', 'failed', 'rejected')),
    reject_code     text,
    reject_reason   text,
    partition_date  date NOT NULL,                 -- Asia/Tokyo day the upload arrived
    received_at     timestamptz NOT NULL,          -- when the upload became complete (manifest written)
    uploaded_at     timestamptz,                   -- created_at from the manifest
    consent_qa      boolean,
    consent_training boolean,
    bpm             double precision CHECK (bpm IS NULL OR (bpm > 0 AND bpm < 1000)),
    musical_key     text,
    preset          text,
    manifest        jsonb,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_reject_reason_iff_rejected
        CHECK ((status = 'rejected') = (reject_reason IS NOT NULL AND reject_code IS NOT NULL)),
    CONSTRAINT jobs_accepted_have_owner
        CHECK (status = 'rejected' OR (user_id IS NOT NULL AND plan IS NOT NULL
                                       AND consent_qa IS NOT NULL AND consent_training IS NOT NULL))
);
CREATE INDEX jobs_partition_date_idx ON jobs (partition_date);
CREATE INDEX jobs_user_id_idx ON jobs (user_id);

-- Every stored object: raw stems and everything derived from them.
CREATE TABLE vault_items (
    id               bigserial PRIMARY KEY,
    job_id           uuid NOT NULL REFERENCES jobs(job_id),
    user_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('inst', 'vocal', 'mix', 'master', 'preview', 'waveform')),
    clip_kind        text CHECK (clip_kind IN ('inst', 'vocal', 'mix')),
    path             text NOT NULL UNIQUE,
    sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes            bigint NOT NULL CHECK (bytes >= 0),
    content_type     text,
    codec            text,
    duration_s       double precision CHECK (duration_s IS NULL OR duration_s > 0),
    sample_rate      integer CHECK (sample_rate IS NULL OR sample_rate > 0),
    channels         integer CHECK (channels IS NULL OR channels > 0),
    consent_qa       boolean NOT NULL,
    consent_training boolean NOT NULL,
    expires_at       timestamptz,
    legal_hold       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CONSTRAINT vault_items_previews_name_their_clip
        CHECK (kind NOT IN ('preview', 'waveform') OR clip_kind IS NOT NULL)
);
CREATE INDEX vault_items_job_id_idx ON vault_items (job_id);
CREATE INDEX vault_items_user_id_idx ON vault_items (user_id);
CREATE INDEX vault_items_live_expiry_idx ON vault_items (expires_at) WHERE deleted_at IS NULL;

-- Consent per user, QA and training separately, with the time each was last set (seed 000 §4).
CREATE TABLE ml_consent (
    user_id               uuid PRIMARY KEY,
    qa                    boolean NOT NULL DEFAULT false,
    training              boolean NOT NULL DEFAULT false,
    qa_updated_at         timestamptz NOT NULL,
    training_updated_at   timestamptz NOT NULL,
    qa_granted_at         timestamptz,
    qa_withdrawn_at       timestamptz,
    training_granted_at   timestamptz,
    training_withdrawn_at timestamptz,
    source                text NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ml_exclusions (
    id         bigserial PRIMARY KEY,
    user_id    uuid,
    job_id     uuid REFERENCES jobs(job_id),
    reason     text NOT NULL CHECK (reason IN ('withdrawal', 'quality', 'legal_hold', 'manual')),
    note       text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ml_exclusions_target CHECK (user_id IS NOT NULL OR job_id IS NOT NULL)
);
CREATE INDEX ml_exclusions_user_id_idx ON ml_exclusions (user_id);
CREATE INDEX ml_exclusions_job_id_idx ON ml_exclusions (job_id);

-- Named, versioned feature layouts; the dimension names live with the data.
CREATE TABLE feature_layouts (
    feature_version text PRIMARY KEY,
    n_dim           integer NOT NULL CHECK (n_dim > 0),
    dim_names       text[] NOT NULL,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feature_layouts_names_match CHECK (cardinality(dim_names) = n_dim)
);

CREATE TABLE features_store (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs(job_id),
    user_id         uuid NOT NULL,
    clip_kind       text NOT NULL CHECK (clip_kind IN ('inst', 'vocal', 'mix')),
    feature_version text NOT NULL REFERENCES feature_layouts(feature_version),
    n_dim           integer NOT NULL CHECK (n_dim > 0),
    vec             real[] NOT NULL,
    stats           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT features_store_dims CHECK (cardinality(vec) = n_dim),
    CONSTRAINT features_store_natural_key UNIQUE (job_id, clip_kind, feature_version)
);
CREATE INDEX features_store_user_id_idx ON features_store (user_id);

CREATE TABLE labels (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES jobs(job_id),
    task       text NOT NULL CHECK (task IN ('master_reg', 'preset_cls', 'align_conf')),
    y_reg      real[],
    y_cls      text,
    quality    text NOT NULL DEFAULT 'auto' CHECK (quality IN ('auto', 'human', 'low')),
    details    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT labels_natural_key UNIQUE (job_id, task),
    CONSTRAINT labels_target_matches_task CHECK (
        (task = 'master_reg' AND cardinality(y_reg) = 4 AND y_cls IS NULL)
        OR (task = 'preset_cls' AND y_cls IS NOT NULL AND y_reg IS NULL)
        OR (task = 'align_conf' AND y_cls IN ('ok', 'warn', 'fail') AND y_reg IS NULL))
);

CREATE TABLE model_registry (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL CHECK (name IN ('master_reg', 'preset_cls', 'align_conf')),
    version             text NOT NULL,
    uri                 text NOT NULL,
    sha256              text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    framework           text NOT NULL,
    input_dim           integer NOT NULL CHECK (input_dim > 0),
    output_dim          integer NOT NULL CHECK (output_dim > 0),
    feature_version     text REFERENCES feature_layouts(feature_version),
    metrics             jsonb NOT NULL,
    training_set_digest text,
    git_commit          text,
    mlflow_run_id       text,
    status              text NOT NULL DEFAULT 'candidate'
                        CHECK (status IN ('candidate', 'active', 'retired', 'rolled_back')),
    rollout_percent     integer NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text,
    CONSTRAINT model_registry_natural_key UNIQUE (name, version)
);
-- At most one active model per task.
CREATE UNIQUE INDEX model_registry_one_active ON model_registry (name) WHERE status = 'active';

CREATE TABLE model_metrics (
    id            bigserial PRIMARY KEY,
    model_id      bigint NOT NULL REFERENCES model_registry(id) ON DELETE CASCADE,
    "window"      text NOT NULL CHECK ("window" IN ('1h', '1d', '7d', '30d')),
    window_end    timestamptz NOT NULL,
    n             integer NOT NULL CHECK (n >= 0),
    latency_ms    double precision,
    latency_p95_ms double precision,
    latency_p99_ms double precision,
    err_rate      double precision CHECK (err_rate IS NULL OR err_rate BETWEEN 0 AND 1),
    fallback_rate double precision CHECK (fallback_rate IS NULL OR fallback_rate BETWEEN 0 AND 1),
    drift         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_metrics_natural_key UNIQUE (model_id, "window", window_end)
);

CREATE TABLE training_jobs (
    id                  bigserial PRIMARY KEY,
    task                text NOT NULL CHECK (task IN ('master_reg', 'preset_cls', 'align_conf')),
    status              text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    reason              text,
    n_samples           integer CHECK (n_samples IS NULL OR n_samples >= 0),
    training_set_digest text,
    model_id            bigint REFERENCES model_registry(id),
    dagster_run_id      text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    CONSTRAINT training_jobs_finished_after_start CHECK (finished_at IS NULL OR finished_at >= started_at)
);

CREATE TABLE feature_flags (
    key             text PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_]*$'),
    enabled         boolean NOT NULL DEFAULT false,
    rollout_percent integer NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
    description     text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL DEFAULT 'migration'
);
INSERT INTO feature_flags (key, description) VALUES
    ('enable_cpu_ml', 'Master switch for every CPU model'),
    ('enable_hq_master', 'HQ master chain'),
    ('enable_align', 'Automatic alignment of vocal against instrumental'),
    ('enable_master_regression', 'Model-estimated master parameters'),
    ('enable_preset_recommendation', 'Model-recommended presets'),
    ('enable_align_confidence', 'Model-estimated alignment confidence');

CREATE TABLE ab_test_assignments (
    experiment  text NOT NULL,
    user_id     uuid NOT NULL,
    bucket      integer NOT NULL CHECK (bucket BETWEEN 0 AND 99),
    variant     text NOT NULL,
    model_id    bigint REFERENCES model_registry(id),
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment, user_id)
);

CREATE TABLE ab_test_metrics (
    id          bigserial PRIMARY KEY,
    experiment  text NOT NULL,
    variant     text NOT NULL,
    user_id     uuid NOT NULL,
    job_id      uuid REFERENCES jobs(job_id),
    metric      text NOT NULL,
    value       double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_test_metrics_experiment_idx ON ab_test_metrics (experiment, variant, metric);

-- Operators of the admin side and their roles (seed 000 §15).
CREATE TABLE operators (
    actor      text PRIMARY KEY,
    role       text NOT NULL CHECK (role IN ('admin', 'ops', 'support', 'read_only')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- 4-eyes approvals: the approver must differ from the requester.
CREATE TABLE approval_requests (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('legal_hold', 'original_access', 'rollout_full', 'other')),
    target       jsonb NOT NULL,
    reason       text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    decided_by   text,
    decided_at   timestamptz,
    CONSTRAINT approval_requests_four_eyes CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CONSTRAINT approval_requests_decision CHECK ((status IN ('approved', 'rejected')) = (decided_by IS NOT NULL)),
    CONSTRAINT approval_requests_expiry CHECK (expires_at > requested_at)
);

-- Append-only audit log: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE TABLE audit_logs (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_logs_target_idx ON audit_logs (target_type, target_id);
CREATE INDEX audit_logs_at_idx ON audit_logs (at);

CREATE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_logs_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_change();
CREATE TRIGGER audit_logs_no_truncate
    BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change();
