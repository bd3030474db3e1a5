-- 0006: the serving loop (lib/serving/): which model answered each job, the online metrics per model and
-- window, and the rollout state the controller walks 5 → 25 → 100 % → active (or rolls back).

-- Rollout state on the registry row. rollout_updated_at: when the current stage began (the controller's
-- window starts there); activated_at: when the model last became active, so that a rollback of an active
-- model restores the one active before it; output_reference: the distribution of the model's outputs on its
-- training set (lib/serving/stats.py), what the output drift (PSI) is measured against.
ALTER TABLE model_registry
    ADD COLUMN rollout_updated_at timestamptz,
    ADD COLUMN activated_at       timestamptz,
    ADD COLUMN output_reference   jsonb;
-- One model per task in rollout at a time: the controller and the operators move that one.
CREATE UNIQUE INDEX model_registry_one_in_rollout ON model_registry (name)
    WHERE status = 'candidate' AND rollout_percent > 0;

-- What each call answered, per row (numbers for master_reg, labels for the classifiers): output drift.
ALTER TABLE model_predictions ADD COLUMN output jsonb;

-- Outcome metrics per window (re-process rate of treatment and control, the test's p-value).
ALTER TABLE model_metrics ADD COLUMN outcomes jsonb;

-- A/B assignments: the bucket is the persisted truth (a salt or hash change never reshuffles a user within
-- an experiment); the variant follows bucket < rollout and is kept current for joins.
ALTER TABLE ab_test_assignments
    ADD CONSTRAINT ab_test_assignments_variant CHECK (variant IN ('treatment', 'control')),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX ab_test_metrics_recorded_idx ON ab_test_metrics (experiment, recorded_at);
-- One outcome per job, experiment and metric: an app that reports twice (a retry) must not count twice.
CREATE UNIQUE INDEX ab_test_metrics_one_per_job ON ab_test_metrics (experiment, job_id, metric)
    WHERE job_id IS NOT NULL;

-- The master chain's own (rule-based) estimate, kept beside what was applied: the master_reg pseudo-label
-- must stay the rule's answer, or a served model would be trained on its own output.
ALTER TABLE masters ADD COLUMN rule_params real[] CHECK (rule_params IS NULL OR cardinality(rule_params) = 4);
UPDATE masters SET rule_params = params WHERE params_source = 'rules';

-- Per job and task: where the answer came from (the served model, or the rules and why), the model and
-- variant, the call's latency and fallback, and the answer: {"params": [4 floats]} for master_reg,
-- {"top_k": [{"preset", "p"}...]} for preset_cls. masters applies the master_reg row's params when the
-- source is the model; with the rules, masters estimates the parameters from the audio itself.
CREATE TABLE master_params (
    job_id        uuid NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    task          text NOT NULL CHECK (task IN ('master_reg', 'preset_cls')),
    source        text NOT NULL CHECK (source IN ('model', 'rules')),
    reason        text NOT NULL,        -- model | flag_off | no_model | fallback:<code>
    model_id      bigint REFERENCES model_registry(id) ON DELETE SET NULL,
    model_version text,
    experiment    text,
    bucket        integer CHECK (bucket IS NULL OR bucket BETWEEN 0 AND 99),
    variant       text CHECK (variant IS NULL OR variant IN ('treatment', 'control')),
    latency_ms    double precision CHECK (latency_ms IS NULL OR latency_ms >= 0),
    fallback_code text,
    answer        jsonb NOT NULL,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, task),
    CONSTRAINT master_params_model_named CHECK (source = 'rules' OR model_version IS NOT NULL)
);
CREATE INDEX master_params_model_idx ON master_params (model_id);
