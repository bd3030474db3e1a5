"""Weekly training (seed 000 §10): the consented training set of the week, and a model per task
(grouped 5-fold CV against baselines, ONNX export behind a blocking parity check, registry + MLflow)."""

import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.training.partitions import weekly_training_partitions
from mixai_pipeline.resources import Database, ObjectStoreResource, Tracking

CONSENT_CHECK = "no_consent_violations"


class TrainingSetConfig(dg.Config):
    min_samples: int = Field(default=1000, ge=1, description="rows a task needs before a model is trained on it "
                                                             "(the seed's 1,000; the demo lowers it and says so)")


@dg.asset(
    partitions_def=weekly_training_partitions, group_name="training", kinds={"postgres", "parquet"},
    check_specs=[dg.AssetCheckSpec(CONSENT_CHECK, asset="training_set", blocking=True,
                                   description="every row's user has training consent on, not withdrawn, "
                                               "and neither the job nor the user is excluded")],
)
def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig, database: Database,
                 object_store: ObjectStoreResource):
    """features_store × labels for the uploads that arrived before the week's end, from users whose
    training consent is on and not withdrawn, jobs not excluded; quality weights human 1.0 > auto 0.7 >
    low 0.3; validated (pandera) and written as Parquet with its data digest. Grouped by user and song
    for cross-validation. Tasks below ``min_samples`` rows are marked to be skipped, with the reason."""
    from mixai_pipeline.lib.training import dataset

    window = context.partition_time_window
    engine = database.get_engine()
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn, received_before=window.end)
        violations = dataset.consent_violations(conn, frame)
    key = f"training/sets/{context.partition_key}/training_set.parquet"
    with tempfile.TemporaryDirectory(prefix="mixai-training-set-") as tmp:
        path = Path(tmp) / "training_set.parquet"
        digest = dataset.to_parquet(frame, path)
        object_store.get_store().put_file(key, path, "application/vnd.apache.parquet")
    counts = dataset.task_counts(frame)
    below = {task: f"{n} rows < min_samples {config.min_samples}" for task, n in counts.items()
             if n < config.min_samples}
    for task, why in below.items():
        context.log.warning(f"{task}: too few samples to train ({why})")
    yield dg.MaterializeResult(
        metadata={
            "rows": len(frame), "rows_per_task": dg.MetadataValue.json(counts), "data_digest": digest,
            "object_key": key, "received_before": window.end.isoformat(), "min_samples": config.min_samples,
            "tasks_below_min_samples": dg.MetadataValue.json(below),
            "users": int(frame["user_id"].nunique()) if len(frame) else 0,
            "preset_classes": dg.MetadataValue.json(dataset.class_counts(frame, "preset_cls")),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CONSENT_CHECK, passed=violations.empty,
            metadata={"violations": len(violations),
                      "examples": dg.MetadataValue.json(violations.head(20).astype(str).to_dict("records"))})],
    )


PARITY_CHECK = "onnx_parity"


class ModelConfig(dg.Config):
    min_samples: int = Field(default=1000, ge=1, description="rows needed to train (the seed's 1,000)")
    parity_tolerance: float = Field(default=1e-4, gt=0, description="max |onnxruntime - estimator| (regression)")


def _model_asset(task: str, description: str):
    @dg.asset(
        name=f"{task}_model", partitions_def=weekly_training_partitions, group_name="training",
        kinds={"sklearn", "onnx", "mlflow"}, deps=[training_set], description=description,
        check_specs=[dg.AssetCheckSpec(PARITY_CHECK, asset=f"{task}_model", blocking=True,
                                       description="onnxruntime equals the estimator: within the tolerance "
                                                   "(regression), identical labels (classification)")],
    )
    def model_asset(context: dg.AssetExecutionContext, config: ModelConfig, database: Database,
                    object_store: ObjectStoreResource, tracking: Tracking):
        from mixai_pipeline.lib.training import dataset, models, registry
        from mixai_pipeline.lib.training.onnx_export import parity, to_onnx

        store = object_store.get_store()
        with tempfile.TemporaryDirectory(prefix="mixai-training-set-") as tmp:
            path = Path(tmp) / "training_set.parquet"
            path.write_bytes(store.get_bytes(f"training/sets/{context.partition_key}/training_set.parquet"))
            frame = dataset.from_parquet(path)
        digest = dataset.digest(frame)
        result = models.train_from_frame(frame, task, min_samples=config.min_samples)
        if result.estimator is None:  # too few rows, or no candidate beat the baselines: say so, register nothing
            reason = result.skipped_reason or "no candidate beat the baselines: " + "; ".join(result.selection)
            context.log.warning(f"{task}: not trained: {reason}")
            yield dg.MaterializeResult(metadata={"trained": False, "reason": reason, "rows": result.n_samples})
            yield dg.AssetCheckResult(check_name=PARITY_CHECK, passed=True, metadata={"note": "no model to check"})
            return
        data = dataset.task_data(frame, task)
        onnx_bytes = to_onnx(result.estimator, result.input_dim, task=task)
        report = parity(result.estimator, onnx_bytes, data.X, task=task, tolerance=config.parity_tolerance)
        yield dg.AssetCheckResult(check_name=PARITY_CHECK, passed=report.passed,
                                  metadata={k: v for k, v in report.as_dict().items() if k in (
                                      "reason", "n_rows", "max_abs_diff", "n_label_mismatches", "tolerance")})
        if not report.passed:
            raise dg.Failure(f"{task}: ONNX parity failed ({report.reason}); nothing registered")
        version = registry.model_version(context.partition_key, onnx_bytes)
        card = registry.model_card(result, report, digest, version)
        run_id, registered = registry.log_mlflow_run(
            tracking, result, onnx_bytes, card, version=version, training_set_digest=digest,
            tags={"dagster_run_id": context.run.run_id, "dagster_asset_key": f"{task}_model",
                  "dagster_partition": context.partition_key})
        with database.get_engine().begin() as conn:
            row = registry.record_model(conn, store, result, onnx_bytes, version=version, parity=report,
                                        training_set_digest=digest, mlflow_run_id=run_id,
                                        actor=f"dagster:{task}_model")
        chosen = result.candidates[result.chosen]
        metric = result.selection_metric
        yield dg.MaterializeResult(metadata={
            "trained": True, "chosen": result.chosen, "version": version, "model_id": row["model_id"],
            "rows": result.n_samples, "groups": result.n_groups, f"cv_{metric}": round(chosen.mean(metric), 4),
            **{f"baseline_{name}_{metric}": round(b.mean(metric), 4) for name, b in result.baselines.items()
               if metric in b.metrics},
            "mlflow_run_id": run_id, "mlflow_model_version": registered, "object_key": row["key"],
            "model_card": dg.MetadataValue.md(card),
        })

    return model_asset


master_reg_model = _model_asset("master_reg", "StandardScaler → MultiOutput(Ridge, alpha searched in grouped "
                                              "inner CV): the four master parameters from the mix's features.")
preset_cls_model = _model_asset("preset_cls", "StandardScaler → LogisticRegression, with LightGBM (early "
                                              "stopping) as a challenger: the preset from vocal + mix features.")
align_conf_model = _model_asset("align_conf", "A small classifier on the alignment statistics: ok / warn / fail.")
