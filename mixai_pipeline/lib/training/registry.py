"""Registering a trained model: the ONNX file in the object store, a ``model_registry`` row and an MLflow run
(parameters, metrics per fold, the ONNX file and a model card, a registered model version).

A version is named by the training week and the model's own hash, so re-materializing the same week with
the same data and code rewrites the same row and file instead of adding a new version.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, text

from mixai_pipeline import settings
from mixai_pipeline.lib.training.models import TrainingResult
from mixai_pipeline.lib.training.onnx_export import ParityReport, model_signature, sha256
from mixai_pipeline.resources.database import write_audit

EXPERIMENT = "mixai-weekly-training"


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
             f"Chosen: **{result.chosen}** by cross-validated {result.selection_metric} "
             f"({result.n_splits}-fold, grouped by user/song; {result.n_samples} rows, {result.n_groups} groups).",
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
                   training_set_digest: str, tags: dict[str, str]) -> tuple[str, str | None]:
    """An MLflow run with params, per-fold metrics (step = fold), the ONNX file and the model card; the
    model registered as ``mixai-<task>`` with the run's tags. Returns (run id, registered version)."""
    client = tracking.client()
    experiment_id = tracking.ensure_experiment(EXPERIMENT)
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
                 actor: str) -> dict:
    """The ONNX file under ``models/<task>/<version>/model.onnx`` and an upserted ``model_registry`` row
    (status ``candidate``: promotion is the rollout's business). Returns the row's id and where things are."""
    signature = model_signature(onnx_bytes)
    key = f"models/{result.task}/{version}/model.onnx"
    store.put_bytes(key, onnx_bytes, "application/octet-stream")
    metrics = {**result.metrics_json(), "parity": parity.as_dict()}
    model_id = conn.execute(text(
        """INSERT INTO model_registry (name, version, uri, sha256, framework, input_dim, output_dim, feature_version,
                                       metrics, training_set_digest, git_commit, mlflow_run_id, created_by)
           VALUES (:name, :version, :uri, :sha, :framework, :input_dim, :output_dim, :fv, CAST(:metrics AS jsonb),
                   :digest, :commit, :run, :actor)
           ON CONFLICT (name, version) DO UPDATE SET uri = EXCLUDED.uri, sha256 = EXCLUDED.sha256,
               metrics = EXCLUDED.metrics, mlflow_run_id = EXCLUDED.mlflow_run_id, git_commit = EXCLUDED.git_commit
           RETURNING id"""),
        {"name": result.task, "version": version, "uri": store.uri(key), "sha": sha256(onnx_bytes),
         "framework": f"onnx/{result.chosen}", "input_dim": signature.input_dim, "output_dim": signature.output_dim,
         "fv": "v1" if result.task != "align_conf" else None, "metrics": json.dumps(metrics, default=str),
         "digest": training_set_digest, "commit": git_commit(), "run": mlflow_run_id, "actor": actor}).scalar_one()
    write_audit(conn, actor=actor, action="model.registered", target_type="model", target_id=str(model_id),
                details={"name": result.task, "version": version, "mlflow_run_id": mlflow_run_id})
    return {"model_id": model_id, "version": version, "key": key, "sha256": sha256(onnx_bytes)}
