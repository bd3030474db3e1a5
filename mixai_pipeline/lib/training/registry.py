"""Registering a trained model: the ONNX file in the object store, a ``model_registry`` row and an MLflow run
(parameters, metrics per fold, the ONNX file and a model card, a registered model version).

A version is named by the training week and the model's own hash, so re-materializing the same week with
the same data and code rewrites the same row and file instead of adding a new version.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, text

from mixai_pipeline import settings
from mixai_pipeline.lib.features.extract import FEATURE_VERSION
from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.training.models import TrainingResult
from mixai_pipeline.lib.training.onnx_export import ParityReport, model_signature, sha256

EXPERIMENT = "mixai-weekly-training"
MAX_MODEL_FILE_BYTES = 256 * 2**20   # far above any model trained here (< 5 MB): a wrong file fails before parsing


def model_object_key(task: str, version: str) -> str:
    """Where a registered model's ONNX file lives in the object store."""
    return f"models/{task}/{version}/model.onnx"


def git_commit() -> str | None:
    """The checkout's commit (None outside a git checkout, e.g. in a built image without .git)."""
    try:
        out = subprocess.run(["git", "-C", str(settings.PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def model_version(week: str, onnx_bytes: bytes) -> str:
    return f"{week}-{sha256(onnx_bytes)[:12]}"


def model_card(result: TrainingResult, parity: ParityReport, training_set_digest: str, version: str) -> str:
    """The human-readable summary logged with the run."""
    metrics = list(result.candidates[result.chosen].metrics)
    lines = [f"# {result.task} {version}", "",
             f"Chosen: **{result.chosen}** by {result.selection_metric}, {result.evaluation} "
             f"({result.n_samples} rows, {result.n_groups} groups).",
             f"Training set digest: `{training_set_digest}`.", "", "| model | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, scores in {**result.candidates, **result.baselines}.items():
        lines.append(f"| {name} | " + " | ".join(_cell(scores, m) for m in metrics) + " |")
    lines += ["", "Selection:", *[f"- {line}" for line in result.selection], "",
              f"ONNX parity: {'passed' if parity.passed else 'FAILED'} ({parity.reason}).", "",
              "Inputs: " + ", ".join(result.feature_names[:8]) + (" …" if result.input_dim > 8 else "")]
    return "\n".join(lines) + "\n"


def _cell(scores, metric: str) -> str:
    value = scores.metrics.get(metric, {}).get("mean")
    return "—" if value is None else f"{value:.4f}"


def log_mlflow_run(tracking, result: TrainingResult, onnx_bytes: bytes, card: str, *, version: str,
                   training_set_digest: str, tags: dict[str, str],
                   experiment: str = EXPERIMENT) -> tuple[str, str | None]:
    """An MLflow run with params, per-fold metrics (step = fold), the ONNX file and the model card; the
    model registered as ``mixai-<task>`` with the run's tags. Returns (run id, registered version)."""
    client = tracking.client()
    experiment_id = tracking.ensure_experiment(experiment)
    run = client.create_run(experiment_id, run_name=f"{result.task} {version}", tags=tags)
    run_id = run.info.run_id
    params = {"task": result.task, "chosen": result.chosen, "n_samples": result.n_samples,
              "n_groups": result.n_groups, "n_splits": result.n_splits, "random_state": result.random_state,
              "training_set_digest": training_set_digest, "version": version,
              **{f"chosen.{k}": v for k, v in (result.chosen_params or {}).items()}}
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:500])
    for name, scores in {**result.candidates, **result.baselines}.items():
        for metric, summary in scores.metrics.items():
            for step, value in enumerate(summary.get("folds") or []):
                if value is not None and np.isfinite(value):
                    client.log_metric(run_id, f"{name}.{metric}", float(value), step=step)
            if summary.get("mean") is not None and np.isfinite(summary["mean"]):
                client.log_metric(run_id, f"{name}.{metric}.mean", float(summary["mean"]))
    with tempfile.TemporaryDirectory(prefix="mixai-mlflow-") as tmp:
        (Path(tmp) / "model.onnx").write_bytes(onnx_bytes)
        (Path(tmp) / "model_card.md").write_text(card)
        (Path(tmp) / "metrics.json").write_text(json.dumps(result.metrics_json(), indent=2, default=str))
        for name in ("model.onnx", "model_card.md", "metrics.json"):
            client.log_artifact(run_id, str(Path(tmp) / name))
    client.set_terminated(run_id)
    registered = f"mixai-{result.task}"
    if not _exists(client, registered):
        client.create_registered_model(registered)
    model_version_ = client.create_model_version(registered, f"{run.info.artifact_uri}/model.onnx", run_id=run_id,
                                                 tags=tags)
    return run_id, model_version_.version


def _exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def record_model(conn: Connection, store, result: TrainingResult, onnx_bytes: bytes, *, version: str,
                 parity: ParityReport, training_set_digest: str, mlflow_run_id: str | None,
                 actor: str, output_reference: dict | None = None) -> dict:
    """The ONNX file under ``models/<task>/<version>/model.onnx`` and an upserted ``model_registry`` row
    (status ``candidate``: promotion is the rollout's business). Returns the row's id and where things are."""
    signature = model_signature(onnx_bytes)
    key = model_object_key(result.task, version)
    store.put_bytes(key, onnx_bytes, "application/octet-stream")
    metrics = {**result.metrics_json(), "parity": parity.as_dict()}
    model_id = conn.execute(text(
        """INSERT INTO model_registry (name, version, uri, sha256, framework, input_dim, output_dim, feature_version,
                                       metrics, training_set_digest, git_commit, mlflow_run_id, created_by,
                                       output_reference)
           VALUES (:name, :version, :uri, :sha, :framework, :input_dim, :output_dim, :fv, CAST(:metrics AS jsonb),
                   :digest, :commit, :run, :actor, CAST(:reference AS jsonb))
           ON CONFLICT (name, version) DO UPDATE SET uri = EXCLUDED.uri, sha256 = EXCLUDED.sha256,
               metrics = EXCLUDED.metrics, mlflow_run_id = EXCLUDED.mlflow_run_id, git_commit = EXCLUDED.git_commit,
               output_reference = coalesce(EXCLUDED.output_reference, model_registry.output_reference)
           RETURNING id"""),
        {"name": result.task, "version": version, "uri": store.uri(key), "sha": sha256(onnx_bytes),
         "framework": f"onnx/{result.chosen}", "input_dim": signature.input_dim, "output_dim": signature.output_dim,
         "fv": FEATURE_VERSION if result.task != "align_conf" else None, "metrics": json.dumps(metrics, default=str),
         "digest": training_set_digest, "commit": git_commit(), "run": mlflow_run_id, "actor": actor,
         "reference": json.dumps(output_reference) if output_reference else None}).scalar_one()
    write_audit(conn, actor=actor, action="model.registered", target_type="model", target_id=str(model_id),
                details={"name": result.task, "version": version, "mlflow_run_id": mlflow_run_id})
    return {"model_id": model_id, "version": version, "key": key, "sha256": sha256(onnx_bytes)}


@dataclass
class Registration:
    """What ``export_and_register`` did: the parity verdict always; the rest only when parity passed."""

    parity: ParityReport
    version: str | None = None
    model_id: int | None = None
    key: str | None = None
    sha256: str | None = None
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None
    card: str | None = None

    @property
    def registered(self) -> bool:
        return self.model_id is not None


def out_of_fold_reference(result: TrainingResult, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    """The output reference (``lib.serving.stats.output_reference``) from the chosen model's out-of-fold
    predictions (grouped 5-fold, as in CV): what it answers on rows it has not seen, which is what serving
    sees. In-sample answers would not do: a model fitted to its rows' noise (Ridge on 160 features and a few
    hundred rows, LightGBM anywhere) answers them with a wider spread or another class mix than new rows,
    and every healthy candidate would then look drifted."""
    from sklearn.base import clone
    from sklearn.model_selection import GroupKFold, cross_val_predict

    from mixai_pipeline.lib.serving.stats import output_reference

    n_splits = min(5, len(set(groups)))
    oof = cross_val_predict(clone(result.estimator), X, y, groups=groups, cv=GroupKFold(n_splits))
    return output_reference(oof, result.output_names if result.kind == "regression" else None)


def export_and_register(result: TrainingResult, X_check: np.ndarray, *, store, engine, tracking, version_label: str,
                        training_set_digest: str, tags: dict[str, str], actor: str,
                        parity_tolerance: float = 1e-4, experiment: str = EXPERIMENT,
                        output_reference: dict | None = None) -> Registration:
    """The chosen model of ``result`` to ONNX, checked for parity on ``X_check`` (its training rows); when it
    holds, logged to MLflow and recorded (object store + ``model_registry`` + audit) as a candidate named
    ``<version_label>-<sha12>``, with ``output_reference`` (``out_of_fold_reference``) for drift. A parity failure
    registers nothing (``Registration.registered`` is False)."""
    from mixai_pipeline.lib.training.onnx_export import parity, to_onnx

    if result.estimator is None:
        raise ValueError(f"{result.task}: no model was chosen ({result.skipped_reason or 'see selection'})")
    target_names = result.output_names if result.kind == "regression" else None
    onnx_bytes = to_onnx(result.estimator, result.input_dim, task=result.task, target_names=target_names)
    report = parity(result.estimator, onnx_bytes, X_check, task=result.task, tolerance=parity_tolerance)
    if not report.passed:
        return Registration(parity=report)
    version = model_version(version_label, onnx_bytes)
    card = model_card(result, report, training_set_digest, version)
    run_id, registered = log_mlflow_run(tracking, result, onnx_bytes, card, version=version,
                                        training_set_digest=training_set_digest, tags=tags, experiment=experiment)
    with engine.begin() as conn:
        row = record_model(conn, store, result, onnx_bytes, version=version, parity=report,
                           training_set_digest=training_set_digest, mlflow_run_id=run_id, actor=actor,
                           output_reference=output_reference)
    return Registration(parity=report, version=version, model_id=row["model_id"], key=row["key"],
                        sha256=row["sha256"], mlflow_run_id=run_id, mlflow_model_version=registered, card=card)


def record_training_job(conn: Connection, result: TrainingResult, *, status: str, reason: str | None,
                        training_set_digest: str | None, model_id: int | None, dagster_run_id: str | None,
                        started_at) -> int:
    """One ``training_jobs`` row per training attempt: succeeded (a model registered), skipped (too few rows,
    or nothing beat the baselines) or failed (e.g. parity)."""
    return conn.execute(text(
        """INSERT INTO training_jobs (task, status, reason, n_samples, training_set_digest, model_id, dagster_run_id,
                                      started_at, finished_at)
           VALUES (:task, :status, :reason, :n, :digest, :model_id, :run, :started, greatest(now(), :started))
           RETURNING id"""),
        {"task": result.task, "status": status, "reason": reason, "n": result.n_samples,
         "digest": training_set_digest, "model_id": model_id, "run": dagster_run_id,
         "started": started_at}).scalar_one()


def list_models(conn: Connection, task: str | None = None) -> list[dict]:
    """Registered models, newest first, with their headline metric (the chosen candidate's mean)."""
    rows = conn.execute(text(
        """SELECT id, name, version, status, rollout_percent, framework, created_at, created_by, mlflow_run_id,
                  training_set_digest, metrics
           FROM model_registry WHERE (CAST(:task AS text) IS NULL OR name = :task)
           ORDER BY created_at DESC, id DESC"""), {"task": task}).mappings().all()
    return [{**{k: v for k, v in r.items() if k != "metrics"}, **headline(r["metrics"] or {})} for r in rows]


def headline(metrics: dict) -> dict:
    """The selection metric of the chosen candidate and of the best baseline, from ``model_registry.metrics``."""
    metric, chosen = metrics.get("selection_metric"), metrics.get("chosen")
    scores = (metrics.get("candidates") or {}).get(chosen or "", {}).get("metrics", {})
    value = scores.get(metric, {}).get("mean") if metric else None
    baseline_values = [b.get("metrics", {}).get(metric, {}).get("mean") for b in
                       (metrics.get("baselines") or {}).values()]
    baseline_values = [v for v in baseline_values if v is not None]
    best_baseline = (min(baseline_values) if metric == "mae" else max(baseline_values)) if baseline_values else None
    return {"metric": metric, "value": value, "baseline": best_baseline, "n_samples": metrics.get("n_samples"),
            "evaluation": metrics.get("evaluation")}


class ModelFileError(ValueError):
    """An operator-supplied model file that cannot be registered, with the reason."""


def check_model_file(task: str, onnx_bytes: bytes) -> dict:
    """Prove an operator's ONNX file can serve ``task`` before it is registered: not empty or huge, parses,
    loads in onnxruntime as served, runs on a zero row, and its input width and output layout are the task's
    (regression of the four master values, or a classifier over the task's classes). Returns its signature
    facts; raises ``ModelFileError`` saying what is wrong."""
    from mixai_pipeline.lib.training import dataset
    from mixai_pipeline.lib.training.inference import ModelLoadError, OnnxModelCache
    from mixai_pipeline.lib.training.onnx_export import task_kind

    if task not in dataset.TASKS:
        raise ModelFileError(f"unknown task {task!r} (expected one of {', '.join(dataset.TASKS)})")
    if not onnx_bytes:
        raise ModelFileError("the model file is empty")
    if len(onnx_bytes) > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(f"the model file has {len(onnx_bytes) / 2**20:.0f} MiB, more than the "
                             f"{MAX_MODEL_FILE_BYTES // 2**20} MiB a model here may have")
    try:
        signature = model_signature(onnx_bytes)
        loaded = OnnxModelCache(max_models=1).load((task, "upload"), onnx_bytes)
    except (ValueError, ModelLoadError) as exc:
        raise ModelFileError(f"not a servable ONNX model: {exc}") from exc
    expected_dim, kind = len(dataset.FEATURE_NAMES[task]), task_kind(task)
    if loaded.input_dim != expected_dim:
        raise ModelFileError(f"{task} models take {expected_dim} inputs per row (feature layout "
                             f"{dataset.FEATURE_VERSION}); this file takes {loaded.input_dim}")
    if loaded.kind != kind:
        raise ModelFileError(f"{task} needs a {kind} model; this file is a {loaded.kind}")
    if kind == "regression" and loaded.output_dim != len(dataset.MASTER_PARAMS):
        raise ModelFileError(f"{task} predicts {len(dataset.MASTER_PARAMS)} values "
                             f"({', '.join(dataset.MASTER_PARAMS)}); this file predicts {loaded.output_dim}")
    if kind == "classification":
        known = set(dataset.CLASS_LABELS[task])
        classes = loaded.classes
        if classes is None:
            raise ModelFileError(f"{task}: the file does not name its classes (metadata 'mixai.classes'), so its "
                                 "labels cannot be checked against the task's")
        unknown = sorted(set(map(str, classes)) - known)
        if unknown:
            raise ModelFileError(f"{task}: the file predicts classes that do not exist here: {unknown}")
    return {"input_dim": loaded.input_dim, "output_dim": loaded.output_dim or 1, "kind": loaded.kind,
            "opset": signature.opset}


def file_output_reference(task: str, onnx_bytes: bytes, X) -> dict:
    """The output reference (``lib.serving.stats.output_reference``) of an ONNX model run on rows ``X``."""
    import onnxruntime as ort

    from mixai_pipeline.lib.serving.stats import output_reference
    from mixai_pipeline.lib.training import dataset

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: np.asarray(X, dtype=np.float32)})[0]
    return output_reference(output, dataset.MASTER_PARAMS if task == "master_reg" else None)


def register_file(conn: Connection, store, task: str, onnx_bytes: bytes, *, version_label: str, actor: str,
                  note: str | None = None, reference_inputs=None) -> dict:
    """An operator's model file, checked (``check_model_file``), stored and recorded as a ``candidate`` like a
    trained one (framework ``onnx/operator-upload``; metrics say it was not trained here). With
    ``reference_inputs`` (rows of the task's training data), its outputs on them become the output reference
    drift is measured against; without, the rollout controller will not promote it (drift unmeasurable)."""
    from mixai_pipeline.lib.features.extract import DIM_NAMES
    from mixai_pipeline.lib.pipeline.records import ensure_feature_layout

    facts = check_model_file(task, onnx_bytes)
    feature_version = FEATURE_VERSION if task != "align_conf" else None  # align_conf reads alignment statistics
    if feature_version:
        ensure_feature_layout(conn, feature_version, DIM_NAMES)
    version = model_version(version_label, onnx_bytes)
    key = model_object_key(task, version)
    store.put_bytes(key, onnx_bytes, "application/octet-stream")
    metrics = {"task": task, "source": "operator upload", "note": note, "evaluation": "none: not trained here",
               "signature": facts}
    reference = None
    if reference_inputs is not None:
        try:
            reference = file_output_reference(task, onnx_bytes, reference_inputs)
        except ValueError as exc:  # registered all the same; without a reference it is never promoted
            metrics["output_reference"] = f"none: {exc}"
    model_id = conn.execute(text(
        """INSERT INTO model_registry (name, version, uri, sha256, framework, input_dim, output_dim, feature_version,
                                       metrics, git_commit, created_by, output_reference)
           VALUES (:name, :version, :uri, :sha, 'onnx/operator-upload', :input_dim, :output_dim, :fv,
                   CAST(:metrics AS jsonb), NULL, :actor, CAST(:reference AS jsonb))
           ON CONFLICT (name, version) DO UPDATE SET metrics = EXCLUDED.metrics,
               output_reference = coalesce(EXCLUDED.output_reference, model_registry.output_reference)
           RETURNING id"""),
        {"name": task, "version": version, "uri": store.uri(key), "sha": sha256(onnx_bytes),
         "input_dim": facts["input_dim"], "output_dim": facts["output_dim"],
         "fv": feature_version, "metrics": json.dumps(metrics, default=str), "actor": actor,
         "reference": json.dumps(reference) if reference else None}).scalar_one()
    write_audit(conn, actor=actor, action="model.registered", target_type="model", target_id=str(model_id),
                details={"name": task, "version": version, "source": "operator upload", "note": note})
    return {"model_id": model_id, "version": version, "key": key, "sha256": sha256(onnx_bytes)}


def models_table(models: list[dict]) -> list[str]:
    """``list_models`` as plain-text lines (CLI, job log)."""
    lines = [f"{'id':>4}  {'task':10}  {'version':36}  {'status':11}  {'rollout':>7}  {'framework':22}  "
             f"{'metric':8}  {'value':>8}  {'baseline':>8}  {'rows':>6}  created"]
    for m in models:
        def num(v):
            return f"{v:8.4f}" if isinstance(v, int | float) else f"{'—':>8}"
        lines.append(f"{m['id']:>4}  {m['name']:10}  {m['version']:36}  {m['status']:11}  {m['rollout_percent']:>6}%  "
                     f"{m['framework']:22}  {m['metric'] or '—':8}  {num(m['value'])}  {num(m['baseline'])}  "
                     f"{m['n_samples'] if m['n_samples'] is not None else '—':>6}  "
                     f"{m['created_at']:%Y-%m-%d %H:%M} by {m['created_by']}")
    if not models:
        lines.append("(no models registered)")
    return lines
