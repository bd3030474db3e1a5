"""Operator actions on models (seed 000 §18), as jobs with typed config; ``mixai train`` and ``mixai models``
run the same jobs. Each writes ``audit_logs`` with the operator's name.

- ``train_now_job``: the consented training set as of now, and a model per chosen task, registered as a
  candidate exactly like the weekly run (its set lives under ``training/sets/manual-<UTC time>/``).
- ``register_model_file_job``: an ONNX file trained elsewhere, checked to serve its task, registered as a
  candidate (never active: promotion is the rollout's business).
- ``list_models_job``: the registry with each model's headline metric beside its best baseline.
"""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.training.assets import CONSENT_CHECK
from mixai_pipeline.lib.training.dataset import TASKS
from mixai_pipeline.resources import Alerts, Database, ObjectStoreResource, Tracking


def _known_tasks(tasks: list[str]) -> list[str]:
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise dg.Failure(f"tasks must be some of {', '.join(TASKS)}; got {tasks!r}")
    return [t for t in TASKS if t in tasks]


class TrainNowConfig(dg.Config):
    tasks: list[str] = Field(default=list(TASKS), description=f"which of {', '.join(TASKS)}")
    min_samples: int = Field(default=1000, ge=1, description="rows a task needs (the seed's 1,000)")
    parity_tolerance: float = Field(default=1e-4, gt=0, description="max |onnxruntime - estimator| (regression)")
    n_jobs: int = Field(default=2, ge=1, description="cross-validation folds fitted at once (one core each)")
    actor: str = Field(default="operator", min_length=1, description="who asked (written to audit_logs)")
    reason: str = Field(default="", description="why, in words (audit_logs)")


@dg.op(description="Train the chosen tasks now on the consented training set as of now; register what passes.")
def train_now(context: dg.OpExecutionContext, config: TrainNowConfig, database: Database,
              object_store: ObjectStoreResource, tracking: Tracking, alerts: Alerts) -> dg.Output[list[dict]]:
    from mixai_pipeline.lib.storage.database import write_audit
    from mixai_pipeline.lib.training import dataset, runs

    tasks = _known_tasks(config.tasks)
    now = datetime.now(timezone.utc)
    label = "manual-" + now.strftime("%Y%m%dT%H%M%SZ")
    engine, store = database.get_engine(), object_store.get_store()
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn, received_before=now)
        violations = dataset.consent_violations(conn, frame)
    if not violations.empty:  # the weekly asset's blocking check, as a hard stop here
        raise dg.Failure(f"{CONSENT_CHECK}: {len(violations)} rows violate consent; nothing trained",
                         metadata={"examples": dg.MetadataValue.json(violations.head(20).astype(str)
                                                                     .to_dict("records"))})
    digest = dataset.put_to_store(frame, store, dataset.set_key(label))
    context.log.info(f"training set {label}: {len(frame)} rows {dataset.task_counts(frame)}, digest {digest[:12]}")
    with engine.begin() as conn:
        write_audit(conn, actor=config.actor, action="operator.train_now", target_type="training_set",
                    target_id=label, details={"tasks": tasks, "min_samples": config.min_samples,
                                              "reason": config.reason, "dagster_run_id": context.run_id})
    outcomes = runs.train_all(
        frame, tasks, log=context.log.info, store=store, engine=engine, tracking=tracking, version_label=label,
        training_set_digest=digest, actor=config.actor, min_samples=config.min_samples,
        parity_tolerance=config.parity_tolerance, n_jobs=config.n_jobs, dagster_run_id=context.run_id,
        tags={"dagster_run_id": context.run_id, "dagster_job": "train_now_job", "operator": config.actor})
    for outcome in outcomes:
        alerts.send(outcome.alert())
    summaries = [o.summary() for o in outcomes]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise dg.Failure("; ".join(f"{o.task}: {o.reason}" for o in failed),
                         metadata={"outcomes": dg.MetadataValue.json(summaries)})
    return dg.Output(summaries, metadata={
        "training_set": label, "rows": len(frame), "data_digest": digest,
        "outcomes": dg.MetadataValue.md("\n".join(runs.outcome_table(outcomes))),
        **{f"{o.task}_status": o.status for o in outcomes},
        **{f"{o.task}_version": o.registration.version for o in outcomes if o.registered},
    })


@dg.job(description="Operator: train now (per task) on the consented set as of now; register as candidates.")
def train_now_job():
    train_now()


class RegisterModelFileConfig(dg.Config):
    task: str = Field(description=f"one of {', '.join(TASKS)}")
    path: str = Field(description="the .onnx file, on the machine that runs the job")
    version_label: str = Field(default="", description="version prefix (default upload-<UTC date>); the file's "
                                                       "sha256 is appended")
    note: str = Field(default="", description="where the model comes from (stored with it)")
    actor: str = Field(default="operator", min_length=1, description="who registers it (audit_logs)")


@dg.op(description="Check an ONNX file serves its task, then register it as a candidate.")
def register_model_file(context: dg.OpExecutionContext, config: RegisterModelFileConfig, database: Database,
                        object_store: ObjectStoreResource) -> dg.Output[dict]:
    from mixai_pipeline.lib.training import registry

    [task] = _known_tasks([config.task])
    path = Path(config.path)
    if not path.is_file():
        raise dg.Failure(f"{config.path!r} is not a file")
    label = config.version_label or "upload-" + datetime.now(timezone.utc).strftime("%Y%m%d")
    try:
        with database.get_engine().begin() as conn:
            row = registry.register_file(conn, object_store.get_store(), task, path.read_bytes(),
                                         version_label=label, actor=config.actor, note=config.note or None)
    except registry.ModelFileError as exc:
        raise dg.Failure(f"{path.name}: {exc}; nothing registered") from exc
    context.log.info(f"{task} {row['version']} registered as a candidate (model id {row['model_id']})")
    return dg.Output(row, metadata={"task": task, **row})


@dg.job(description="Operator: register an ONNX model file (checked to serve its task) as a candidate.")
def register_model_file_job():
    register_model_file()


class ListModelsConfig(dg.Config):
    task: str = Field(default="", description="only this task (default: all)")


@dg.op(description="The model registry with each model's headline metric beside its best baseline.")
def list_models(context: dg.OpExecutionContext, config: ListModelsConfig, database: Database) -> dg.Output[list]:
    from mixai_pipeline.lib.training import registry

    if config.task:
        _known_tasks([config.task])
    with database.get_engine().connect() as conn:
        models = registry.list_models(conn, config.task or None)
    table = registry.models_table(models)
    context.log.info("\n" + "\n".join(table))
    return dg.Output([{k: str(v) for k, v in m.items()} for m in models],
                     metadata={"models": len(models), "table": dg.MetadataValue.md("```\n" + "\n".join(table)
                                                                                   + "\n```")})


@dg.job(description="Operator: list the registered models with their metrics.")
def list_models_job():
    list_models()


class IncrementalUpdateConfig(dg.Config):
    task: str = Field(description=f"one of {', '.join(TASKS)}")
    label_id_after: int = Field(ge=0, description="labels already consumed (the task's incremental watermark)")
    label_id_upto: int = Field(ge=1, description="the batch's last label id (inclusive)")


@dg.op(description="partial_fit the task's incremental model on the new consented labelled rows; register a "
                   "candidate when it clearly beats the baselines.")
def incremental_update(context: dg.OpExecutionContext, config: IncrementalUpdateConfig, database: Database,
                       object_store: ObjectStoreResource, tracking: Tracking) -> dg.Output[dict]:
    from mixai_pipeline.lib.training import dataset, incremental, runs

    [task] = _known_tasks([config.task])
    engine, store = database.get_engine(), object_store.get_store()
    with engine.connect() as conn:  # eligible rows only: consent as of now
        frame = dataset.load_training_set(conn, tasks=[task], label_ids=(config.label_id_after, config.label_id_upto))
    try:
        outcome = runs.update_incrementally(
            frame, task, label_id_upto=config.label_id_upto, store=store, engine=engine, tracking=tracking,
            actor="dagster:incremental_update", dagster_run_id=context.run_id,
            tags={"dagster_run_id": context.run_id, "dagster_job": "incremental_update_job"})
    except incremental.BatchTooSmall as exc:  # consent changed since the sensor counted: wait for more rows
        context.log.warning(str(exc))
        return dg.Output({"task": task, "status": "skipped", "reason": str(exc)},
                         metadata={"status": "skipped", "reason": str(exc), "rows": len(frame)})
    if outcome.status == "failed":
        raise dg.Failure(f"{task}: {outcome.reason}")
    summary = outcome.summary()
    return dg.Output(summary, metadata={
        "status": outcome.status, "rows": len(frame), "reason": outcome.reason or "",
        "version": summary.get("version", ""), "label_ids": f"({config.label_id_after}, {config.label_id_upto}]",
        "prequential": dg.MetadataValue.json({"candidates": summary["candidates"], "baselines": summary["baselines"]})})


@dg.job(description="An SGD partial_fit update of one task on its new labelled rows (incremental_training_sensor).",
        tags={"dagster/max_runtime": 1800})
def incremental_update_job():
    incremental_update()
