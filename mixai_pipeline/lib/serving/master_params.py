"""Per job, the master parameters and the preset recommendation: from the served model or from the rules
(``master_params`` rows; the asset between ``features_store`` and ``masters``).

For each task (``master_reg``, ``preset_cls``) and job:

1. the task's flags (``flags.Flags.task_on``: its own flag and ``enable_cpu_ml``) must be on for the user,
   else the rules answer (reason ``flag_off``);
2. with a candidate in rollout, the user's sticky bucket in its experiment (``bucketing.assign``) decides:
   treatment (bucket < rollout %) asks the candidate, control the active model;
3. with neither model, the rules answer (``no_model``);
4. a model that cannot answer (``ServingClient``'s fallback codes) leaves the job to the rules
   (``fallback:<code>``), with the call recorded against the model: that is what the controller sees.

The rules: for ``master_reg`` the master chain's estimator on the audio, which ``masters`` runs (the row holds
no params then); for ``preset_cls`` ``labels.preset_label`` — the documented preset rules on the job's
instrumental, vocal and tempo (as one entry, no probability). A model's preset answer is its top ``TOP_K``
classes with their probabilities.

Rows are upserted per (job, task): a re-run re-decides the day with the models and flags of its time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.features.extract import FEATURE_VERSION
from mixai_pipeline.lib.pipeline.labels import preset_label
from mixai_pipeline.lib.serving import bucketing, rollout
from mixai_pipeline.lib.serving.flags import Flags, read_flags
from mixai_pipeline.lib.serving.online_metrics import experiment_name
from mixai_pipeline.lib.training.dataset import MASTER_PARAM_RANGES, MASTER_PARAMS, master_input, preset_input

SERVED_TASKS = ("master_reg", "preset_cls")
TOP_K = 3


@dataclass
class DaySummary:
    jobs: int = 0
    sources: Counter = field(default_factory=Counter)        # (task, source/reason) -> jobs
    models: Counter = field(default_factory=Counter)         # (task, version, variant) -> jobs
    latencies_ms: list[float] = field(default_factory=list)

    def table(self) -> dict:
        return {"jobs": self.jobs, "answers": {f"{t} {s}": n for (t, s), n in sorted(self.sources.items())},
                "models": {f"{t} {v} ({var or 'no experiment'})": n for (t, v, var), n in sorted(self.models.items())}}


@dataclass(frozen=True)
class _Route:
    model: dict | None
    reason: str                          # model | flag_off | no_model
    experiment: str | None = None
    bucket: int | None = None
    variant: str | None = None


_INPUTS_SQL = """SELECT j.job_id::text AS job_id, j.user_id::text AS user_id, j.plan, j.bpm,
                         fi.vec AS inst_vec, fv.vec AS vocal_vec, fm.vec AS mix_vec
    FROM jobs j
    JOIN features_store fi ON fi.job_id = j.job_id AND fi.clip_kind = 'inst' AND fi.feature_version = :v
    JOIN features_store fv ON fv.job_id = j.job_id AND fv.clip_kind = 'vocal' AND fv.feature_version = :v
    JOIN features_store fm ON fm.job_id = j.job_id AND fm.clip_kind = 'mix' AND fm.feature_version = :v
    WHERE j.status IN ('registered', 'processing', 'done') AND {where}
    ORDER BY j.job_id"""


def day_inputs(conn: Connection, day: str, feature_version: str = FEATURE_VERSION) -> list[dict]:
    """The day's live jobs with their inst, vocal and mix feature vectors."""
    return [dict(r) for r in conn.execute(text(_INPUTS_SQL.format(where="j.partition_date = CAST(:day AS date)")),
                                          {"day": day, "v": feature_version}).mappings()]


def job_inputs(conn: Connection, job_ids: list[str], feature_version: str = FEATURE_VERSION) -> list[dict]:
    """``day_inputs`` for the given jobs."""
    return [dict(r) for r in conn.execute(text(_INPUTS_SQL.format(where="j.job_id = ANY(CAST(:ids AS uuid[]))")),
                                          {"ids": list(job_ids), "v": feature_version}).mappings()]


def _routes(conn: Connection, task: str, jobs: list[dict], flags: Flags) -> dict[str, _Route]:
    active, candidate = rollout.active_model(conn, task), rollout.model_in_rollout(conn, task)
    assignments, experiment = {}, None
    flagged = [j for j in jobs if flags.task_on(task, j["user_id"])]
    flagged_ids = {j["job_id"] for j in flagged}
    if candidate is not None and flagged:
        experiment = experiment_name(task, candidate["version"])
        assignments = bucketing.assign(conn, experiment, [j["user_id"] for j in flagged],
                                       rollout_percent=candidate["rollout_percent"], model_id=candidate["id"],
                                       salt=flags.salt)
    routes = {}
    for job in jobs:
        if job["job_id"] not in flagged_ids:
            routes[job["job_id"]] = _Route(None, "flag_off")
            continue
        seat = assignments.get(job["user_id"])
        model = candidate if seat is not None and seat.variant == "treatment" else active
        routes[job["job_id"]] = _Route(model, "model" if model else "no_model", experiment,
                                       seat and seat.bucket, seat and seat.variant)
    return routes


def _model_input(task: str, job: dict) -> np.ndarray:
    if task == "master_reg":
        return master_input(job["mix_vec"])[None, :]
    return preset_input(job["vocal_vec"], job["mix_vec"], bpm=job["bpm"], plan=job["plan"])[None, :]


def _rule_answer(task: str, job: dict) -> dict:
    if task == "master_reg":
        return {"params": None, "estimator": "master chain rules on the audio (applied by masters)"}
    preset, why = preset_label(job["plan"], job["inst_vec"], job["vocal_vec"], job["bpm"])
    return {"top_k": [{"preset": preset, "p": None}], "why": why}


def _model_answer(task: str, prediction) -> dict:
    if task == "master_reg":
        # Within the master chain's limits (the training labels' ranges): a model's extrapolation must not
        # reach the audio unbounded. What the model said stays in the call log.
        raw = np.asarray(prediction.output, dtype=np.float64).reshape(-1)[:len(MASTER_PARAMS)]
        low, high = zip(*(MASTER_PARAM_RANGES[name] for name in MASTER_PARAMS), strict=True)
        params = np.clip(raw, low, high)
        return {"params": [round(float(v), 4) for v in params], "clipped": bool(np.any(params != raw))}
    probabilities = np.asarray(prediction.probabilities, dtype=np.float64)[0]
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return {"top_k": [{"preset": str(prediction.classes[i]), "p": round(float(probabilities[i]), 4)} for i in order]}


_UPSERT = text(
    """INSERT INTO master_params (job_id, task, source, reason, model_id, model_version, experiment, bucket, variant,
                                  latency_ms, fallback_code, answer, decided_at)
       VALUES (CAST(:job_id AS uuid), :task, :source, :reason, :model_id, :model_version, :experiment, :bucket,
               :variant, :latency_ms, :fallback_code, CAST(:answer AS jsonb), now())
       ON CONFLICT (job_id, task) DO UPDATE SET source = EXCLUDED.source, reason = EXCLUDED.reason,
           model_id = EXCLUDED.model_id, model_version = EXCLUDED.model_version, experiment = EXCLUDED.experiment,
           bucket = EXCLUDED.bucket, variant = EXCLUDED.variant, latency_ms = EXCLUDED.latency_ms,
           fallback_code = EXCLUDED.fallback_code, answer = EXCLUDED.answer, decided_at = now()""")


def decide_jobs(engine: Engine, client, jobs: list[dict], *, salt: str = bucketing.DEFAULT_SALT,
                log: Callable[[str], None] | None = None) -> DaySummary:
    """Decide and store both tasks' answers for ``jobs`` (``day_inputs`` rows); ``client`` is a
    ``ServingClient``. Model calls happen outside any transaction; the rows are written per task."""
    summary = DaySummary(jobs=len(jobs))
    with engine.begin() as conn:
        flags = read_flags(conn, salt)
        routes = {task: _routes(conn, task, jobs, flags) for task in SERVED_TASKS}
    for task in SERVED_TASKS:
        rows = []
        for done, job in enumerate(jobs, start=1):
            route = routes[task][job["job_id"]]
            row = {"job_id": job["job_id"], "task": task, "source": "rules", "reason": route.reason,
                   "model_id": None, "model_version": None, "experiment": route.experiment, "bucket": route.bucket,
                   "variant": route.variant, "latency_ms": None, "fallback_code": None}
            answer = None
            if route.model is not None:
                prediction = client.predict(task, _model_input(task, job), model_id=route.model["id"],
                                            job_id=job["job_id"])
                row.update(model_id=route.model["id"], model_version=route.model["version"],
                           latency_ms=prediction.latency_ms)
                summary.latencies_ms.append(prediction.latency_ms)
                if prediction.source == "model":
                    row["source"] = "model"
                    answer = _model_answer(task, prediction)
                else:
                    row.update(reason=f"fallback:{prediction.fallback_code}", fallback_code=prediction.fallback_code)
                summary.models[(task, route.model["version"], route.variant)] += 1
            row["answer"] = json.dumps(answer or _rule_answer(task, job))
            summary.sources[(task, row["source"] if row["source"] == "model" else row["reason"])] += 1
            rows.append(row)
            if log and (done % 50 == 0 or done == len(jobs)):
                log(f"{task}: {done}/{len(jobs)} jobs decided")
        if rows:
            with engine.begin() as conn:
                conn.execute(_UPSERT, rows)
    return summary


def decide_day(engine: Engine, client, day: str, *, salt: str = bucketing.DEFAULT_SALT,
               log: Callable[[str], None] | None = None) -> DaySummary:
    with engine.connect() as conn:
        jobs = day_inputs(conn, day)
    return decide_jobs(engine, client, jobs, salt=salt, log=log)


def applied_master_params(conn: Connection, job_id: str) -> list[float] | None:
    """The model's master parameters for the job, when a model answered (``masters`` applies them)."""
    return conn.execute(text(
        """SELECT answer -> 'params' FROM master_params
           WHERE job_id = CAST(:job AS uuid) AND task = 'master_reg' AND source = 'model'"""),
        {"job": job_id}).scalar()
