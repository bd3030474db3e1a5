"""The application database as a Dagster resource (engines and the audit log: ``lib/storage/database.py``)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine

from mixai_pipeline.lib.storage.database import engine_for


class Database(dg.ConfigurableResource):
    """PostgreSQL holding jobs, vault items, consent, features, labels, models and the audit log."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy/libpq URL (secret: from MIXAI_DATABASE_URL); unset means the embedded server")

    def get_engine(self) -> Engine:
        if self.url:
            return engine_for(self.url)
        from mixai_pipeline.runtime import app_database_url

        return engine_for(app_database_url())
