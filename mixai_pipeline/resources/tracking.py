"""Experiment tracking: MLflow, on a sqlite backend by default (MLflow 3 refuses plain-folder stores)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class Tracking(dg.ConfigurableResource):
    """MLflow tracking server or database (``MLFLOW_TRACKING_URI`` overrides the sqlite default)."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///.mixai/mlflow.db")
    artifact_root: str | None = Field(
        default=None, description="artifact location for new experiments; default .mixai/mlartifacts")

    def resolved_uri(self) -> str:
        from mixai_pipeline.settings import default_mlflow_uri

        return self.tracking_uri or default_mlflow_uri()

    def client(self):
        """An ``mlflow.MlflowClient`` bound to this tracking URI (MLflow is imported only here)."""
        import mlflow

        mlflow.set_tracking_uri(self.resolved_uri())
        return mlflow.MlflowClient(tracking_uri=self.resolved_uri())

    def ensure_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (with the configured artifact root) if missing."""
        from mixai_pipeline.settings import default_mlflow_artifacts_dir

        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifact_root = self.artifact_root or default_mlflow_artifacts_dir().as_uri()
        return client.create_experiment(name, artifact_location=f"{artifact_root.rstrip('/')}/{name}")
