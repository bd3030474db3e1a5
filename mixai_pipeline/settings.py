"""Where the project keeps its runtime state, and the environment variables that move it elsewhere.

Every embedded default lives under one state directory (``.mixai/`` in the checkout, or ``MIXAI_HOME``):
the embedded PostgreSQL, the local object store, MLflow's sqlite database and artifacts, and
Dagster's home. Nothing in there is ever committed.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = Path(os.environ.get("MIXAI_SQL_DIR", PROJECT_ROOT / "sql"))

# Environment variables (documented in .env.example and the README).
ENV_HOME = "MIXAI_HOME"
ENV_DATABASE_URL = "MIXAI_DATABASE_URL"
ENV_DAGSTER_PG_URL = "MIXAI_DAGSTER_PG_URL"
ENV_OBJECT_STORE = "MIXAI_OBJECT_STORE"  # "local" (default) or "s3"
ENV_OBJECTS_DIR = "MIXAI_OBJECTS_DIR"
ENV_S3_ENDPOINT = "MIXAI_S3_ENDPOINT"
ENV_S3_BUCKET = "MIXAI_S3_BUCKET"
ENV_S3_ACCESS_KEY = "MIXAI_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "MIXAI_S3_SECRET_KEY"
ENV_S3_SECURE = "MIXAI_S3_SECURE"
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ALERT_WEBHOOK_URL = "MIXAI_ALERT_WEBHOOK_URL"  # Slack-compatible incoming webhook; unset: alerts are only logged
ENV_AB_SALT = "MIXAI_AB_SALT"  # salt of the A/B bucket hash (lib/serving/bucketing.py)
ENV_SHARED_DATA = "MIXAI_SHARED_DATA"  # the shared datasets (Groove MIDI, JSB chorales); never copied in

BUSINESS_TIMEZONE = "Asia/Tokyo"


def state_dir() -> Path:
    """The directory holding every embedded component's state (created on demand)."""
    path = Path(os.environ.get(ENV_HOME, PROJECT_ROOT / ".mixai")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_objects_dir() -> Path:
    return Path(os.environ.get(ENV_OBJECTS_DIR, state_dir() / "objects")).resolve()


def default_mlflow_uri() -> str:
    return os.environ.get(ENV_MLFLOW_TRACKING_URI) or f"sqlite:///{state_dir() / 'mlflow.db'}"


def default_mlflow_artifacts_dir() -> Path:
    return state_dir() / "mlartifacts"


def dagster_home() -> Path:
    return state_dir() / "dagster"


def shared_data_dir() -> Path:
    """The team's shared datasets: ``MIXAI_SHARED_DATA``, else ``../shared/data`` beside the checkout, else
    ``/work/shared/data``. Tests and the demo skip what needs them, saying so, when none exists."""
    if os.environ.get(ENV_SHARED_DATA):
        return Path(os.environ[ENV_SHARED_DATA])
    beside = PROJECT_ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")


def groove_midi_dir() -> Path:
    return shared_data_dir() / "groove-midi"
