"""Operator actions on models (train now, register a model file, list models) as Dagster jobs and as ``mixai``
commands, and the incremental partial_fit loop (sensor → run → candidate), on a real PostgreSQL, object store
and MLflow (sqlite)."""

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pytest
from sqlalchemy import text

from mixai_pipeline import settings
from mixai_pipeline.defs.training.jobs import (
    incremental_update_job,
    list_models_job,
    register_model_file_job,
    train_now_job,
)
from mixai_pipeline.defs.training.sensors import incremental_training_sensor
from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.training import dataset, incremental, models, onnx_export, runs, synthetic
from mixai_pipeline.resources import Alerts, Database, ObjectStoreResource, Tracking

pytestmark = pytest.mark.slow


@pytest.fixture
def resources(db_url, local_store, tmp_path):
    return {"database": Database(url=db_url),
            "object_store": ObjectStoreResource(backend="local", root=str(local_store.root)),
            "tracking": Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 artifact_root=(tmp_path / "mlartifacts").as_uri()),
            "alerts": Alerts()}


def run(job, op: str, config: dict, resources):
    return job.execute_in_process(run_config={"ops": {op: {"config": config}}}, resources=resources,
                                  raise_on_error=False)


def failure_message(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def cohort(engine, n: int, seed: int, *, received_at=None):
    with engine.begin() as conn:
        return synthetic.insert_synthetic_cohort(
            conn, n, seed=seed, received_at=received_at or datetime.now(timezone.utc) - timedelta(hours=1),
            partition_date=date.today())


# ------------------------------------------------------------------------------------------ train now

def test_train_now_registers_each_task_and_audits_the_operator(engine, resources):
    cohort(engine, 300, seed=5)
    result = run(train_now_job, "train_now", {"min_samples": 100, "actor": "aki", "reason": "test"}, resources)
    assert result.success, failure_message(result)
    outcomes = {o["task"]: o for o in result.output_for_node("train_now")}
    assert set(outcomes) == set(dataset.TASKS)
    with engine.connect() as conn:
        registry_rows = {r.name: r for r in conn.execute(text("SELECT * FROM model_registry"))}
        audit = conn.execute(text("SELECT actor, action, details FROM audit_logs WHERE action = 'operator.train_now'"))
        [audit] = audit.all()
        jobs = conn.execute(text("SELECT task, status FROM training_jobs ORDER BY task")).all()
    for task, o in outcomes.items():
        assert o["status"] == "succeeded", o
        assert o["version"].startswith("manual-") and registry_rows[task].version == o["version"]
        assert registry_rows[task].status == "candidate"
        assert o["cv"] is not None and o["baselines"]
    assert audit.actor == "aki" and audit.details["tasks"] == list(dataset.TASKS)
    assert sorted(jobs) == [(t, "succeeded") for t in sorted(dataset.TASKS)]


def test_train_now_with_too_few_rows_skips_with_the_reason(engine, resources):
    cohort(engine, 30, seed=6)
    result = run(train_now_job, "train_now", {"tasks": ["align_conf"], "min_samples": 1000}, resources)
    assert result.success
    [outcome] = result.output_for_node("train_now")
    assert outcome["status"] == "skipped" and "fewer than the 1000 required" in outcome["reason"]


def test_train_now_refuses_an_unknown_task(resources):
    result = run(train_now_job, "train_now", {"tasks": ["tempo_reg"]}, resources)
    assert not result.success and "tasks must be some of master_reg, preset_cls, align_conf" in failure_message(result)


def test_a_withdrawn_users_rows_are_not_trained_on(engine, resources, local_store):
    cohort(engine, 200, seed=7)
    with engine.begin() as conn:
        user = conn.execute(text("SELECT user_id FROM jobs ORDER BY job_id LIMIT 1")).scalar_one()
        n_user_jobs = conn.execute(text("SELECT count(*) FROM jobs WHERE user_id = :u"), {"u": user}).scalar_one()
        conn.execute(text("UPDATE ml_consent SET training = false, training_withdrawn_at = now() WHERE user_id = :u"),
                     {"u": user})
    result = run(train_now_job, "train_now", {"tasks": ["master_reg"], "min_samples": 50}, resources)
    assert result.success, failure_message(result)
    label = result.output_for_node("train_now")[0]["version"].rsplit("-", 1)[0]
    frame = dataset.get_from_store(local_store, dataset.set_key(label))
    assert str(user) not in set(frame["user_id"]) and len(frame) == 3 * (200 - n_user_jobs)


# --------------------------------------------------------------------------------- register a model file

def small_model_file(tmp_path, task: str, *, classes_ok: bool = True):
    frame = synthetic.synthetic_training_set(120, tasks=[task], seed=11)
    data = dataset.task_data(frame, task)
    [candidate, *_] = models.candidates_for(task)
    kind = models.TASK_KIND[task]
    y = data.y if classes_ok else np.where(data.y == data.y[0], "no_such_preset", data.y)
    estimator, _ = candidate.fit(data.X, y, data.weight, data.groups, kind=kind, random_state=0)
    path = tmp_path / f"{task}.onnx"
    path.write_bytes(onnx_export.to_onnx(estimator, data.X.shape[1], task=task))
    return path


def test_a_model_file_is_checked_then_registered_as_a_candidate(engine, resources, tmp_path, local_store):
    path = small_model_file(tmp_path, "preset_cls")
    result = run(register_model_file_job, "register_model_file",
                 {"task": "preset_cls", "path": str(path), "note": "trained on the laptop", "actor": "aki"}, resources)
    assert result.success, failure_message(result)
    row = result.output_for_node("register_model_file")
    with engine.connect() as conn:
        reg = conn.execute(text("SELECT * FROM model_registry WHERE id = :i"), {"i": row["model_id"]}).one()
        [audit] = conn.execute(text("SELECT actor, details FROM audit_logs WHERE action = 'model.registered'")).all()
    assert reg.status == "candidate" and reg.framework == "onnx/operator-upload" and reg.input_dim == 325
    assert reg.metrics["note"] == "trained on the laptop" and local_store.sha256(row["key"]) == reg.sha256
    assert audit.actor == "aki" and audit.details["source"] == "operator upload"

    listed = run(list_models_job, "list_models", {}, resources)
    assert listed.success and [m["version"] for m in listed.output_for_node("list_models")] == [row["version"]]


@pytest.mark.parametrize("case, expected", [
    ("corrupt", "not a servable ONNX model"),
    ("empty", "the model file is empty"),
    ("wrong_task", "master_reg models take 160 inputs per row"),
    ("unknown_classes", "predicts classes that do not exist here: ['no_such_preset']"),
    ("missing", "is not a file"),
])
def test_a_bad_model_file_is_refused_and_nothing_is_registered(engine, resources, tmp_path, local_store, case,
                                                               expected):
    path = tmp_path / "model.onnx"
    task = "master_reg"
    if case == "corrupt":
        good = small_model_file(tmp_path, "master_reg").read_bytes()
        path.write_bytes(good[: len(good) // 2] + b"\x00garbage" * 64)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "wrong_task":
        path = small_model_file(tmp_path, "preset_cls")
    elif case == "unknown_classes":
        task, path = "preset_cls", small_model_file(tmp_path, "preset_cls", classes_ok=False)
    result = run(register_model_file_job, "register_model_file", {"task": task, "path": str(path)}, resources)
    assert not result.success and expected in failure_message(result)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_registry")).scalar() == 0
    assert not list(local_store.list("models/"))


# ----------------------------------------------------------------------------------------- incremental

def test_every_100_new_rows_the_sensor_asks_for_an_incremental_update(engine, resources, local_store):
    def tick():
        with dg.instance_for_test() as instance, dg.build_sensor_context(instance=instance,
                                                                         resources=resources) as context:
            return incremental_training_sensor(context)

    assert isinstance(tick(), dg.SkipReason)
    cohort(engine, 60, seed=8)
    skip = tick()
    assert isinstance(skip, dg.SkipReason) and "master_reg 60/100" in skip.skip_message

    cohort(engine, 60, seed=9)
    requests = tick()
    assert {r.tags["mixai/task"] for r in requests} == set(dataset.TASKS)
    request = next(r for r in requests if r.tags["mixai/task"] == "align_conf")
    config = request.run_config["ops"]["incremental_update"]["config"]
    assert config["label_id_after"] == 0 and request.tags["mixai/new_rows"] == "120"

    result = incremental_update_job.execute_in_process(run_config=request.run_config, resources=resources)
    assert result.success
    out = result.output_for_node("incremental_update")
    assert out["status"] == "skipped" and "first incremental batch" in out["reason"]  # nothing to test it on yet
    assert incremental.load_state(local_store, "align_conf").n_seen == 120
    assert runs.read_incremental_watermark(local_store, "align_conf") == config["label_id_upto"]
    assert "align_conf" not in {r.tags["mixai/task"] for r in tick()}  # consumed

    for seed in (10, 12, 13):  # three more batches: the prequential window fills and a candidate is registered
        cohort(engine, 120, seed=seed)
        request = next(r for r in tick() if r.tags["mixai/task"] == "align_conf")
        result = incremental_update_job.execute_in_process(run_config=request.run_config, resources=resources)
        assert result.success
    out = result.output_for_node("incremental_update")
    assert out["status"] == "succeeded" and out["version"].startswith("inc0004-"), out
    with engine.connect() as conn:
        reg = conn.execute(text("SELECT * FROM model_registry WHERE name = 'align_conf' ORDER BY id DESC")).first()
    assert reg.version == out["version"] and reg.status == "candidate" and reg.framework == "onnx/sgd_incremental"
    assert reg.metrics["evaluation"].startswith("prequential")


# -------------------------------------------------------------------------------------------- the CLI

def test_the_cli_lists_and_registers_models(engine, db_url, tmp_path, monkeypatch, capsys):
    from mixai_pipeline.cli import main

    with engine.begin() as conn:  # as the audio pipeline leaves it
        conn.execute(text("INSERT INTO feature_layouts (feature_version, n_dim, dim_names) VALUES ('v1', 160, :n) "
                          "ON CONFLICT DO NOTHING"), {"n": list(DIM_NAMES)})
    monkeypatch.setenv(settings.ENV_DATABASE_URL, db_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv(settings.ENV_MLFLOW_TRACKING_URI, f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(settings.ENV_DAGSTER_PG_URL, raising=False)
    assert main(["models", "list"]) == 0
    assert "(no models registered)" in capsys.readouterr().out

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    assert main(["models", "register", str(bad), "--task", "align_conf"]) == 1
    assert "not a servable ONNX model" in capsys.readouterr().err

    good = small_model_file(tmp_path, "align_conf")
    assert main(["models", "register", str(good), "--task", "align_conf", "--note", "cli"]) == 0
    assert "registered as a candidate" in capsys.readouterr().out
    assert main(["models", "list", "--task", "align_conf"]) == 0
    listing = capsys.readouterr().out
    assert "align_conf" in listing and "onnx/operator-upload" in listing


def test_a_withdrawal_resets_the_incremental_model_that_learned_from_the_user(engine, resources, local_store):
    from mixai_pipeline.defs.governance.jobs import user_data_purge_job
    from mixai_pipeline.lib.governance import consent
    from mixai_pipeline.resources import Clock

    cohort(engine, 150, seed=14)
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn, tasks=["align_conf"])
    incremental.save_state(local_store, "align_conf", incremental.update(None, frame, "align_conf").state)
    user = frame["user_id"].iloc[0]
    with engine.begin() as conn:
        consent.withdraw_training(conn, user, actor="test", now=datetime.now(timezone.utc))
    result = user_data_purge_job.execute_in_process(
        run_config={"ops": {"purge_withdrawn_users": {"config": {"user_ids": [user]}}}},
        resources={**resources, "clock": Clock()})
    assert result.success
    [materialization] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert materialization.event_specific_data.metadata["incremental_models_reset"].value == "align_conf"
    assert incremental.load_state(local_store, "align_conf") is None  # the next update starts a new model
