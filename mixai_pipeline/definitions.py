"""The one Definitions object of the code location.

Assets, checks, sensors, schedules and jobs are loaded from ``mixai_pipeline/defs/<domain>/``;
resources are bound here from the environment (secrets only ever through ``dg.EnvVar``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mixai_pipeline import settings
from mixai_pipeline.resources import (
    Alerts,
    Clock,
    Database,
    FeatureFlags,
    ModelServing,
    ObjectStoreResource,
    RolloutPolicyResource,
    Tracking,
)


def object_store_resource() -> ObjectStoreResource:
    backend = os.environ.get(settings.ENV_OBJECT_STORE, "local")
    if backend == "s3":
        return ObjectStoreResource(
            backend="s3",
            endpoint=dg.EnvVar(settings.ENV_S3_ENDPOINT),
            bucket=os.environ.get(settings.ENV_S3_BUCKET, "mixai"),
            access_key=dg.EnvVar(settings.ENV_S3_ACCESS_KEY),
            secret_key=dg.EnvVar(settings.ENV_S3_SECRET_KEY),
            secure=os.environ.get(settings.ENV_S3_SECURE, "false").lower() == "true",
        )
    if backend != "local":
        raise ValueError(f"{settings.ENV_OBJECT_STORE} must be 'local' or 's3', not {backend!r}")
    return ObjectStoreResource(backend="local")


def resources() -> dict[str, dg.ConfigurableResource]:
    # Unset: the embedded PostgreSQL under .mixai/pg, started on first use.
    database = (Database(url=dg.EnvVar(settings.ENV_DATABASE_URL))
                if os.environ.get(settings.ENV_DATABASE_URL) else Database())
    object_store = object_store_resource()
    # Unset webhook: alerts are logged only. The A/B salt is a secret like the others.
    alerts = Alerts.from_env()
    flags = (FeatureFlags(database=database, salt=dg.EnvVar(settings.ENV_AB_SALT))
             if os.environ.get(settings.ENV_AB_SALT) else FeatureFlags(database=database))
    return {"database": database, "object_store": object_store, "tracking": Tracking(),
            "model_serving": ModelServing(database=database, object_store=object_store), "clock": Clock(),
            "alerts": alerts, "feature_flags": flags, "rollout_policy": RolloutPolicyResource()}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent / "defs"),
        dg.Definitions(resources=resources()),
    )
