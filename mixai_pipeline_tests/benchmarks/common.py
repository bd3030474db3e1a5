"""What the benchmarks share: medians of repeated runs and throwaway migrated databases on an embedded
PostgreSQL of their own."""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from mixai_pipeline import settings
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.resources import migrations
from mixai_pipeline.resources.embedded_postgres import start_embedded_postgres, stop_embedded_postgres, with_database

TEMPLATE_DB = "bench_template"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def embedded_postgres(root: Path) -> Iterator[str]:
    """A private server with a migrated template database; yields the admin URI."""
    admin_uri = start_embedded_postgres(root)
    try:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
        template_url = with_database(admin_uri, TEMPLATE_DB, "psycopg")
        migrations.upgrade(engine_for(template_url), settings.SQL_DIR)
        engine_for(template_url).dispose()
        yield admin_uri
    finally:
        stop_embedded_postgres(root)


def fresh_database(admin_uri: str, *, migrated: bool = True) -> str:
    """A new database (a copy of the migrated template, or empty); returns its SQLAlchemy URL."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    template = sql.SQL(" TEMPLATE {}").format(sql.Identifier(TEMPLATE_DB)) if migrated else sql.SQL("")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)) + template)
    return with_database(admin_uri, name, "psycopg")
