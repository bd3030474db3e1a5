"""One training attempt for one task, start to finish, shared by the weekly assets, the operator's "train now"
(job and CLI), the demo and the benchmark: grouped 5-fold CV and selection (``models``), then ONNX export
behind the parity gate, MLflow and the registry (``registry.export_and_register``), and a ``training_jobs``
row whatever happened (succeeded, skipped with the reason, or failed parity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from mixai_pipeline.lib.training import dataset, models, registry


@dataclass
class TaskOutcome:
    task: str
    status: str                                   # succeeded | skipped | failed
    reason: str | None
    result: models.TrainingResult
    registration: registry.Registration | None
    training_job_id: int
    seconds: dict[str, float] = field(default_factory=dict)   # train (CV + refit), register (ONNX .. registry)

    @property
    def registered(self) -> bool:
        return self.registration is not None and self.registration.registered

    def alert(self):
        """The alert this attempt sends: a registered model (``training_succeeded``), a failure
        (``training_failed``, critical); a skip says why (too few rows, nothing beat the baselines)."""
        from mixai_pipeline.lib.serving.alerts import Alert

        s = self.summary()
        fields = {"task": self.task, "rows": str(s["rows"]), "metric": f"{s['metric']} {s.get('cv', '—')}",
                  "baselines": ", ".join(f"{n} {v}" for n, v in s["baselines"].items()) or "—"}
        if self.registered:
            fields.update(version=s["version"], **{"mlflow run": s["mlflow_run_id"]})
            return Alert(kind="training_succeeded", title=f"{self.task}: {s['version']} trained and registered",
                         text="a candidate: the rollout controller starts it at 5 %", fields=fields)
        if self.status == "failed":
            return Alert(kind="training_failed", title=f"{self.task}: training failed", text=self.reason or "",
                         fields=fields, severity="critical")
        return Alert(kind="training_failed", title=f"{self.task}: not trained", text=self.reason or "",
                     fields=fields, severity="warning")

    def summary(self) -> dict:
        """The headline numbers (asset metadata, CLI and demo tables)."""
        r, reg = self.result, self.registration
        out: dict = {"task": self.task, "status": self.status, "reason": self.reason, "rows": r.n_samples,
                     "groups": r.n_groups, "chosen": r.chosen, "metric": r.selection_metric,
                     "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}
        if r.chosen:
            out["cv"] = round(r.candidates[r.chosen].mean(r.selection_metric), 4)
        out["candidates"] = {n: round(s.mean(r.selection_metric), 4) for n, s in r.candidates.items()}
        out["baselines"] = {n: round(s.mean(r.selection_metric), 4) for n, s in r.baselines.items()}
        if reg is not None and reg.registered:
            out.update(version=reg.version, model_id=reg.model_id, mlflow_run_id=reg.mlflow_run_id,
                       mlflow_model_version=reg.mlflow_model_version, object_key=reg.key)
        return out


def train_and_register(frame: pd.DataFrame, task: str, *, store, engine, tracking, version_label: str,
                       training_set_digest: str, actor: str, tags: dict[str, str] | None = None,
                       min_samples: int = dataset.MIN_SAMPLES, parity_tolerance: float = 1e-4, n_jobs: int = 1,
                       dagster_run_id: str | None = None) -> TaskOutcome:
    """Train ``task`` on the training-set ``frame`` and, if a candidate beat the baselines and its ONNX export
    passes parity, register it. Never raises for "too few rows", "nothing beat the baseline" or a parity
    failure: the outcome says which, and ``training_jobs`` records it."""
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    result = models.train_from_frame(frame, task, min_samples=min_samples, n_jobs=n_jobs)
    seconds = {"train": time.perf_counter() - t0}
    registration, status, reason = None, "skipped", None
    if result.estimator is None:
        reason = result.skipped_reason or "no candidate beat the baselines: " + "; ".join(result.selection)
    else:
        t1 = time.perf_counter()
        data = dataset.task_data(frame, task)
        registration = registry.export_and_register(
            result, data.X, store=store, engine=engine, tracking=tracking,
            version_label=version_label, training_set_digest=training_set_digest, actor=actor,
            tags=tags or {}, parity_tolerance=parity_tolerance,
            output_reference=registry.out_of_fold_reference(result, data.X, data.y, data.groups))
        seconds["register"] = time.perf_counter() - t1
        if registration.registered:
            status = "succeeded"
        else:
            status, reason = "failed", f"ONNX parity failed ({registration.parity.reason}); nothing registered"
    with engine.begin() as conn:
        job_id = registry.record_training_job(
            conn, result, status=status, reason=reason, training_set_digest=training_set_digest,
            model_id=registration.model_id if registration else None, dagster_run_id=dagster_run_id,
            started_at=started_at)
    return TaskOutcome(task, status, reason, result, registration, job_id, seconds)


def outcome_table(outcomes: Sequence[TaskOutcome]) -> list[str]:
    """Plain-text lines: per task the chosen model's CV score beside each baseline's, and where it went."""
    lines = [f"  {'task':11} {'rows':>6} {'metric':8} {'chosen':>16} {'baselines':32} {'status':10} "
             "version / MLflow run"]
    for o in outcomes:
        s = o.summary()
        chosen = f"{s['chosen']} {s['cv']:.4f}" if s.get("cv") is not None else "—"
        baselines = ", ".join(f"{n} {v:.4f}" for n, v in s["baselines"].items()) or "—"
        where = f"{s['version']} / {s['mlflow_run_id']}" if o.registered else (o.reason or "")
        lines.append(f"  {o.task:11} {s['rows']:>6} {s['metric']:8} {chosen:>16} {baselines:32} {o.status:10} {where}")
    return lines


def train_all(frame: pd.DataFrame, tasks: Sequence[str] = dataset.TASKS, *, log: Callable[[str], None] = print,
              **kwargs) -> list[TaskOutcome]:
    """``train_and_register`` for each task in turn, logging one line per task as it finishes."""
    outcomes = []
    for task in tasks:
        outcome = train_and_register(frame, task, **kwargs)
        s = outcome.summary()
        log(f"{task}: {outcome.status} in {sum(outcome.seconds.values()):.1f} s"
            + (f" ({s['chosen']} {s['metric']} {s['cv']:.4f})" if s.get("cv") is not None else "")
            + (f": {outcome.reason}" if outcome.reason else ""))
        outcomes.append(outcome)
    return outcomes


INCREMENTAL_EXPERIMENT = "mixai-incremental-training"


def incremental_watermark_key(task: str) -> str:
    return f"models/{task}/incremental/watermark.json"


def read_incremental_watermark(store, task: str) -> int:
    """The greatest ``labels.id`` an incremental update of ``task`` has consumed (0: none yet)."""
    import json

    key = incremental_watermark_key(task)
    return int(json.loads(store.get_bytes(key))["label_id"]) if store.exists(key) else 0


def update_incrementally(frame: pd.DataFrame, task: str, *, label_id_upto: int, store, engine, tracking, actor: str,
                         tags: dict[str, str] | None = None, dagster_run_id: str | None = None) -> TaskOutcome:
    """Seed 000 §10: the task's ``partial_fit`` model learns the new rows (``frame``, consent-filtered); when
    its prequential score clearly beats the baselines, it is registered as a candidate (version
    ``inc<NNNN>-<sha12>``, MLflow experiment ``mixai-incremental-training``). The state and the watermark
    (``label_id_upto``) are saved once the update is through, so a failed run is redone by the next one.
    Raises ``incremental.BatchTooSmall`` when fewer than 100 of the rows are new."""
    import json

    from mixai_pipeline.lib.training import incremental

    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    update = incremental.update(incremental.load_state(store, task), frame, task)
    result = update.training_result()
    seconds = {"train": time.perf_counter() - t0}
    registration, status = None, "skipped"
    reason = result.skipped_reason or ("; ".join(result.selection) if result.estimator is None else None)
    if result.estimator is not None:
        t1 = time.perf_counter()
        registration = registry.export_and_register(
            result, update.rows.X, store=store, engine=engine, tracking=tracking,
            version_label=f"inc{update.state.version:04d}", training_set_digest=update.state.training_set_digest,
            actor=actor, tags=tags or {}, experiment=INCREMENTAL_EXPERIMENT)
        seconds["register"] = time.perf_counter() - t1
        status = "succeeded" if registration.registered else "failed"
        if not registration.registered:
            reason = f"ONNX parity failed ({registration.parity.reason}); nothing registered"
    incremental.save_state(store, task, update.state)
    store.put_bytes(incremental_watermark_key(task), json.dumps({"label_id": int(label_id_upto)}).encode(),
                    "application/json")
    with engine.begin() as conn:
        job_id = registry.record_training_job(
            conn, result, status=status, reason=reason, training_set_digest=update.state.training_set_digest,
            model_id=registration.model_id if registration else None, dagster_run_id=dagster_run_id,
            started_at=started_at)
    return TaskOutcome(task, status, reason, result, registration, job_id, seconds)
