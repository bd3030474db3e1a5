"""``incremental_training_sensor`` (seed 000 §10): every 100 new consented labelled rows of a task, one
``incremental_update_job`` run for it. The watermark is the task's last consumed ``labels.id``, written by the
run itself once it succeeded (``runs.read_incremental_watermark``), so a failed run's rows are retried by the
next request; the run key (task + batch end) and "one run per task at a time" keep ticks from piling up."""

import dagster as dg

from mixai_pipeline.defs.training.jobs import incremental_update_job
from mixai_pipeline.lib.training.incremental import MIN_NEW_SAMPLES
from mixai_pipeline.resources import Database, ObjectStoreResource


@dg.sensor(job=incremental_update_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Counts new consented labelled rows per task; 100 or more → an incremental update run.")
def incremental_training_sensor(context: dg.SensorEvaluationContext, database: Database,
                                object_store: ObjectStoreResource):
    from mixai_pipeline.lib.training import dataset, runs

    store = object_store.get_store()
    after = {task: runs.read_incremental_watermark(store, task) for task in dataset.TASKS}
    with database.get_engine().connect() as conn:
        new = dataset.new_labelled_rows(conn, after)
    busy = {run.tags.get("mixai/task") for run in context.instance.get_runs(
        filters=dg.RunsFilter(job_name=incremental_update_job.name,
                              statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                        dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))}
    requests = []
    for task, (n, upto) in new.items():
        if n >= MIN_NEW_SAMPLES and task not in busy:
            requests.append(dg.RunRequest(
                run_key=f"{task}:{after[task]}-{upto}", tags={"mixai/task": task, "mixai/new_rows": str(n)},
                run_config={"ops": {"incremental_update": {"config": {
                    "task": task, "label_id_after": after[task], "label_id_upto": upto}}}}))
    if not requests:
        waiting = ", ".join(f"{t} {n}/{MIN_NEW_SAMPLES}" + (" (a run is going)" if t in busy else "")
                            for t, (n, _) in new.items())
        return dg.SkipReason(f"new consented labelled rows: {waiting}")
    return requests
