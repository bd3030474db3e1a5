"""Weekly training (seed 000 §10): the consented training set of the week; the models follow."""

import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.training.partitions import weekly_training_partitions
from mixai_pipeline.resources import Database, ObjectStoreResource

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
