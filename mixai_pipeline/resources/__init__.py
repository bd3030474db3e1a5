"""Dagster resources: the application database, the object store, experiment tracking and model serving."""

from mixai_pipeline.resources.database import Database
from mixai_pipeline.resources.object_store import ObjectStoreResource
from mixai_pipeline.resources.serving import ModelServing
from mixai_pipeline.resources.tracking import Tracking

__all__ = ["Database", "ModelServing", "ObjectStoreResource", "Tracking"]
