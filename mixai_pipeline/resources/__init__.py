"""Dagster resources: the application database, the object store, experiment tracking, model serving,
feature flags, the rollout policy, alerts and the clock governance decisions are taken at."""

from mixai_pipeline.resources.alerts import Alerts
from mixai_pipeline.resources.clock import Clock
from mixai_pipeline.resources.database import Database
from mixai_pipeline.resources.flags import FeatureFlags
from mixai_pipeline.resources.object_store import ObjectStoreResource
from mixai_pipeline.resources.serving import ModelServing, RolloutPolicyResource
from mixai_pipeline.resources.tracking import Tracking

__all__ = ["Alerts", "Clock", "Database", "FeatureFlags", "ModelServing", "ObjectStoreResource",
           "RolloutPolicyResource", "Tracking"]
