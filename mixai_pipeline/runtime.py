"""Resolve the runtime components: configured ones from the environment, else the embedded defaults.

- App database: ``MIXAI_DATABASE_URL``, else the embedded PostgreSQL under ``.mixai/pg`` (database ``mixai``),
  started on first use.
- Dagster's instance storage: ``MIXAI_DAGSTER_PG_URL``, else database ``dagster`` on the same server.
- ``DAGSTER_HOME``: ``.mixai/dagster`` holding a link to the project's ``dagster.yaml``.

``prepare_environment()`` is what ``mixai demo``/``dev``/``db upgrade`` call first: it resolves
everything, applies migrations, and exports the variables so that Dagster processes started
afterwards (daemon, code server, run workers) inherit the same choices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixai_pipeline import settings
from mixai_pipeline.resources.embedded_postgres import (
    APP_DATABASE,
    DAGSTER_DATABASE,
    ensure_database,
    start_embedded_postgres,
    with_database,
)


def embedded_pgdata() -> Path:
    return settings.state_dir() / "pg"


def _embedded_url(database: str, driver: str) -> str:
    admin_uri = start_embedded_postgres(embedded_pgdata())
    ensure_database(admin_uri, database)
    return with_database(admin_uri, database, driver)


def app_database_url() -> str:
    return os.environ.get(settings.ENV_DATABASE_URL) or _embedded_url(APP_DATABASE, "psycopg")


def dagster_database_url() -> str:
    """dagster-postgres speaks psycopg2: with SQLAlchemy 2.1 the URL must say postgresql+psycopg2."""
    if os.environ.get(settings.ENV_DAGSTER_PG_URL):
        return os.environ[settings.ENV_DAGSTER_PG_URL]
    if os.environ.get(settings.ENV_DATABASE_URL):
        server = with_database(os.environ[settings.ENV_DATABASE_URL], "postgres", "psycopg").replace(
            "postgresql+psycopg://", "postgresql://", 1)
        ensure_database(server, DAGSTER_DATABASE)
        return with_database(server, DAGSTER_DATABASE, "psycopg2")
    return _embedded_url(DAGSTER_DATABASE, "psycopg2")


@dataclass(frozen=True)
class Environment:
    database_url: str
    dagster_pg_url: str
    dagster_home: Path
    embedded_postgres: bool
    applied_migrations: tuple[str, ...]


def prepare_environment(*, migrate: bool = True) -> Environment:
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.resources import migrations

    embedded = not os.environ.get(settings.ENV_DATABASE_URL)
    app_url, dagster_url = app_database_url(), dagster_database_url()
    os.environ[settings.ENV_DATABASE_URL] = app_url
    os.environ[settings.ENV_DAGSTER_PG_URL] = dagster_url

    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home())
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.symlink_to(settings.PROJECT_ROOT / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault(settings.ENV_MLFLOW_TRACKING_URI, settings.default_mlflow_uri())

    applied: list[str] = []
    if migrate:
        engine = engine_for(os.environ[settings.ENV_DATABASE_URL])
        applied = [m.path.name for m in migrations.upgrade(engine, settings.SQL_DIR)]
    return Environment(
        database_url=os.environ[settings.ENV_DATABASE_URL],
        dagster_pg_url=os.environ[settings.ENV_DAGSTER_PG_URL],
        dagster_home=home,
        embedded_postgres=embedded,
        applied_migrations=tuple(applied),
    )


def run_operator_job(job_name: str, op_name: str | None, config: dict | None = None, *,
                     partition_key: str | None = None) -> tuple[bool, object]:
    """Run a job in this process against the project's Dagster instance (so the UI lists the run): whether it
    succeeded, and the op's output (None for an asset job, ``op_name`` None) or the failure's message."""
    import warnings

    import dagster as dg
    from dagster import DagsterInstance

    from mixai_pipeline.definitions import defs

    prepare_environment()
    with warnings.catch_warnings():  # Dagster's beta/preview notices are for developers, not this output
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        job = defs().resolve_job_def(job_name)
    with DagsterInstance.get() as instance:
        # The console logger at WARNING: the caller prints what the run did; the full log is in the instance.
        run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                      **({"ops": {op_name: {"config": config}}} if op_name else {})}
        result = job.execute_in_process(run_config=run_config, instance=instance, partition_key=partition_key,
                                        raise_on_error=False)
    if result.success:
        return True, result.output_for_node(op_name) if op_name else None
    failures = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
    return False, "; ".join(f.message.strip() for f in failures if f) or "the run failed"
