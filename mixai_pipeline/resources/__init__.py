"""Dagster resources: the application database, the object store and experiment tracking."""

from mixai_pipeline.resources.database import Database
from mixai_pipeline.resources.object_store import ObjectStoreResource
from mixai_pipeline.resources.tracking import Tracking

__all__ = ["Database", "ObjectStoreResource", "Tracking"]
