"""The weekly model assets on a real PostgreSQL, object store and MLflow (sqlite): trained models are
registered with their ONNX file and MLflow run; too few samples skip with a reason; failing parity blocks
registration."""

import dagster as dg
import pytest
from sqlalchemy import text

from mixai_pipeline.defs.training.assets import PARITY_CHECK, align_conf_model, master_reg_model, preset_cls_model
from mixai_pipeline.lib.demo.webhook import LocalWebhookReceiver
from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.training import dataset, onnx_export, synthetic
from mixai_pipeline.resources import Alerts, Database, ObjectStoreResource, Tracking

pytestmark = pytest.mark.slow
WEEK = "2025-09-07"
MODELS = [master_reg_model, preset_cls_model, align_conf_model]


@pytest.fixture
def week_set(engine, local_store, tmp_path):
    with engine.begin() as conn:  # as the audio pipeline leaves it: the layout the vectors were made with
        conn.execute(text("INSERT INTO feature_layouts (feature_version, n_dim, dim_names) VALUES ('v1', 160, :n)"),
                     {"n": list(DIM_NAMES)})
    frame = synthetic.synthetic_training_set(240, seed=3)
    path = tmp_path / "training_set.parquet"
    digest = dataset.to_parquet(frame, path)
    local_store.put_file(f"training/sets/{WEEK}/training_set.parquet", path)
    return digest


def train(db_url, store, tmp_path, min_samples: int, assets=MODELS, alerts: Alerts | None = None):
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        artifact_root=(tmp_path / "mlartifacts").as_uri())
    config = {"ops": {a.op.name: {"config": {"min_samples": min_samples}} for a in assets}}
    result = dg.materialize(assets, partition_key=WEEK, raise_on_error=False, run_config=config, resources={
        "database": Database(url=db_url), "tracking": tracking, "alerts": alerts or Alerts(),
        "object_store": ObjectStoreResource(backend="local", root=str(store.root))})
    return result, tracking


def meta(result, name):
    return {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}


def test_models_are_trained_registered_and_tracked(engine, db_url, local_store, tmp_path, week_set):
    with LocalWebhookReceiver() as receiver:
        result, tracking = train(db_url, local_store, tmp_path, min_samples=50,
                                 alerts=Alerts(webhook_url=receiver.url))
        assert receiver.wait_for(3, timeout_s=30)
    assert result.success
    # one training_succeeded alert per registered model, naming the task and the version
    titles = sorted(body["text"] for body in receiver.received)
    assert len(titles) == 3 and all("trained and registered" in t for t in titles)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(text("SELECT * FROM model_registry"))}
    assert set(rows) == {"master_reg", "preset_cls", "align_conf"}
    for name, row in rows.items():
        m = meta(result, f"{name}_model")
        assert m["trained"] is True and row.version == m["version"] and row.status == "candidate"
        assert row.training_set_digest == week_set and row.mlflow_run_id == m["mlflow_run_id"]
        assert local_store.sha256(m["object_key"]) == row.sha256
        assert row.metrics["parity"]["passed"] and row.metrics["chosen"] == m["chosen"]
        run = tracking.client().get_run(row.mlflow_run_id)
        assert run.data.params["training_set_digest"] == week_set and run.data.tags["dagster_partition"] == WEEK
        metric = "mae" if name == "master_reg" else "macro_f1"
        history = tracking.client().get_metric_history(row.mlflow_run_id, f"{m['chosen']}.{metric}")
        assert sorted(h.step for h in history) == [0, 1, 2, 3, 4]  # one value per fold
        [version] = tracking.client().search_model_versions(f"name='mixai-{name}'")
        assert version.tags["dagster_asset_key"] == f"{name}_model"
    assert meta(result, "master_reg_model")["cv_ridge_mae"] < meta(result, "master_reg_model")["baseline_mean_mae"]
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT task, status, model_id, dagster_run_id FROM training_jobs")).all()
    assert {(j.task, j.status, j.model_id) for j in jobs} == {(n, "succeeded", r.id) for n, r in rows.items()}
    assert {j.dagster_run_id for j in jobs} == {result.run_id}

    again, _ = train(db_url, local_store, tmp_path, min_samples=50, assets=[master_reg_model])
    assert again.success and meta(again, "master_reg_model")["version"] == rows["master_reg"].version
    with engine.connect() as conn:  # reproducible: the same week and data give the same version, one row
        assert conn.execute(text("SELECT count(*) FROM model_registry WHERE name = 'master_reg'")).scalar() == 1


def test_too_few_samples_skip_with_a_reason(engine, db_url, local_store, tmp_path, week_set):
    result, _ = train(db_url, local_store, tmp_path, min_samples=100_000)
    assert result.success
    for name in ("master_reg", "preset_cls", "align_conf"):
        m = meta(result, f"{name}_model")
        assert m["trained"] is False and "fewer than the 100000 required" in m["reason"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_registry")).scalar() == 0
        statuses = conn.execute(text("SELECT status, count(*) FROM training_jobs GROUP BY status")).all()
    assert statuses == [("skipped", 3)]


def test_failing_parity_blocks_registration(engine, db_url, local_store, tmp_path, week_set, monkeypatch):
    def broken(estimator, onnx_bytes, X, *, task, tolerance):
        return onnx_export.ParityReport(passed=False, reason="max |diff| 0.3 > 1e-4", kind="regression",
                                        n_rows=len(X), tolerance=tolerance, max_abs_diff=0.3)

    monkeypatch.setattr(onnx_export, "parity", broken)
    result, _ = train(db_url, local_store, tmp_path, min_samples=50, assets=[master_reg_model])
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == PARITY_CHECK and not check.passed
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_registry")).scalar() == 0
        [job] = conn.execute(text("SELECT task, status, reason FROM training_jobs")).all()
    assert job.status == "failed" and "parity failed (max |diff| 0.3 > 1e-4)" in job.reason
    assert not list(local_store.list("models/"))
