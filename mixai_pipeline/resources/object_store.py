"""The object store as a Dagster resource (the stores themselves: ``lib/storage/object_store.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from mixai_pipeline.lib.storage.object_store import LocalObjectStore, ObjectStore, S3ObjectStore


class ObjectStoreResource(dg.ConfigurableResource):
    """Where uploads and every derived object live: a local directory or an S3/MinIO bucket."""

    backend: Literal["local", "s3"] = Field(default="local", description="local directory or S3/MinIO")
    root: str | None = Field(default=None, description="local backend: directory (default .mixai/objects)")
    endpoint: str | None = Field(default=None, description="s3 backend: host:port of the S3 endpoint")
    bucket: str = Field(default="mixai", description="s3 backend: bucket name")
    access_key: str | None = Field(default=None, description="s3 backend: access key (secret)")
    secret_key: str | None = Field(default=None, description="s3 backend: secret key (secret)")
    secure: bool = Field(default=False, description="s3 backend: use HTTPS")
    region: str | None = None

    def get_store(self) -> ObjectStore:
        if self.backend == "local":
            from mixai_pipeline.settings import default_objects_dir

            return LocalObjectStore(Path(self.root) if self.root else default_objects_dir())
        missing = [name for name in ("endpoint", "access_key", "secret_key") if not getattr(self, name)]
        if missing:
            raise ValueError(
                f"the S3 object store needs {', '.join(missing)}: set MIXAI_S3_ENDPOINT, "
                "MIXAI_S3_ACCESS_KEY and MIXAI_S3_SECRET_KEY")
        return S3ObjectStore(self.endpoint, self.bucket, self.access_key, self.secret_key,
                             secure=self.secure, region=self.region)
