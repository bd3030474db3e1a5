"""Dagster resources: the application database, the object store, experiment tracking, model serving and
the clock governance decisions are taken at."""

from mixai_pipeline.resources.clock import Clock
from mixai_pipeline.resources.database import Database
from mixai_pipeline.resources.object_store import ObjectStoreResource
from mixai_pipeline.resources.serving import ModelServing
from mixai_pipeline.resources.tracking import Tracking

__all__ = ["Clock", "Database", "ModelServing", "ObjectStoreResource", "Tracking"]
