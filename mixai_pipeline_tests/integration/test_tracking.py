"""The Tracking resource against a real MLflow on a sqlite backend."""

from mixai_pipeline.resources import Tracking


def test_mlflow_on_sqlite_records_runs_and_artifacts(tmp_path):
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        artifact_root=(tmp_path / "artifacts").as_uri())
    experiment_id = tracking.ensure_experiment("mixai-test")
    assert tracking.ensure_experiment("mixai-test") == experiment_id  # idempotent
    client = tracking.client()
    run = client.create_run(experiment_id, tags={"dagster/run_id": "abc"})
    client.log_param(run.info.run_id, "alpha", "1.0")
    client.log_metric(run.info.run_id, "mae", 0.25, step=0)
    note = tmp_path / "card.md"
    note.write_text("# model card")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"alpha": "1.0"}
    assert stored.data.metrics == {"mae": 0.25}
    assert stored.data.tags["dagster/run_id"] == "abc"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["card.md"]
    assert (tmp_path / "artifacts" / "mixai-test").exists()
    assert (tmp_path / "mlflow.db").stat().st_size > 0


def test_default_uri_is_sqlite_under_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MIXAI_HOME", str(tmp_path))
    assert Tracking().resolved_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Tracking().resolved_uri() == "http://mlflow:5000"
