"""Bring up the embedded defaults (or use the configured components) for CLI commands and make targets.

``prepare_environment()`` is what ``mixai demo``, ``mixai dev`` and ``mixai db upgrade`` call first:
it starts the embedded PostgreSQL when ``MIXAI_DATABASE_URL`` is unset, creates the app and Dagster
databases, applies migrations, points ``DAGSTER_HOME`` at ``.mixai/dagster`` (with the project's
``dagster.yaml``) and exports the variables that Dagster processes started afterwards inherit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixai_pipeline import settings
from mixai_pipeline.resources import migrations
from mixai_pipeline.resources.database import engine_for
from mixai_pipeline.resources.embedded_postgres import (
    APP_DATABASE,
    DAGSTER_DATABASE,
    ensure_database,
    start_embedded_postgres,
    with_database,
)


@dataclass(frozen=True)
class Environment:
    database_url: str
    dagster_pg_url: str
    dagster_home: Path
    embedded_postgres: bool
    applied_migrations: tuple[str, ...]


def embedded_pgdata() -> Path:
    return settings.state_dir() / "pg"


def prepare_environment(*, migrate: bool = True) -> Environment:
    embedded = not os.environ.get(settings.ENV_DATABASE_URL)
    if embedded:
        admin_uri = start_embedded_postgres(embedded_pgdata())
        ensure_database(admin_uri, APP_DATABASE)
        ensure_database(admin_uri, DAGSTER_DATABASE)
        os.environ[settings.ENV_DATABASE_URL] = with_database(admin_uri, APP_DATABASE, "psycopg")
        os.environ[settings.ENV_DAGSTER_PG_URL] = with_database(admin_uri, DAGSTER_DATABASE, "psycopg2")
    elif not os.environ.get(settings.ENV_DAGSTER_PG_URL):
        # Same server, own database: dagster-postgres speaks psycopg2 (with SQLAlchemy 2.1 the scheme matters).
        os.environ[settings.ENV_DAGSTER_PG_URL] = with_database(
            os.environ[settings.ENV_DATABASE_URL], DAGSTER_DATABASE, "psycopg2")

    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home())
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.symlink_to(settings.PROJECT_ROOT / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault(settings.ENV_MLFLOW_TRACKING_URI, settings.default_mlflow_uri())

    applied: list[str] = []
    if migrate:
        applied = [m.path.name for m in migrations.upgrade(engine_for(os.environ[settings.ENV_DATABASE_URL]),
                                                            settings.SQL_DIR)]
    return Environment(
        database_url=os.environ[settings.ENV_DATABASE_URL],
        dagster_pg_url=os.environ[settings.ENV_DAGSTER_PG_URL],
        dagster_home=home,
        embedded_postgres=embedded,
        applied_migrations=tuple(applied),
    )
