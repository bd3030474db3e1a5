"""The embedded PostgreSQL server (``pgserver``: PostgreSQL shipped in a wheel).

Used by ``make demo``, ``make dev`` and the tests when no ``MIXAI_DATABASE_URL`` is given. It listens
on a Unix socket only (no TCP port to collide with), keeps running after the process that started
it exits, and is reused by every later process that asks for the same data directory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

logging.getLogger("pgserver").setLevel(logging.WARNING)

APP_DATABASE = "mixai"
DAGSTER_DATABASE = "dagster"


def start_embedded_postgres(pgdata: Path, *, stop_at_exit: bool = False) -> str:
    """Start (or reuse) the server for ``pgdata``; return its libpq URI for the ``postgres`` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import pgserver

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)
        return server.get_uri()


def stop_embedded_postgres(pgdata: Path) -> bool:
    """Stop the server of ``pgdata`` if it runs; return whether one was stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import pgserver._commands as commands

    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "pgserver" if _running_as_root() else None
    commands.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    return True


def ensure_database(admin_uri: str, name: str) -> None:
    """Create database ``name`` on the server of ``admin_uri`` unless it exists."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def with_database(uri: str, name: str, driver: str | None = None) -> str:
    """Return ``uri`` pointing at database ``name`` (and SQLAlchemy ``driver``, e.g. ``psycopg``)."""
    from sqlalchemy.engine import make_url

    url = make_url(uri).set(database=name)
    if driver:
        url = url.set(drivername=f"postgresql+{driver}")
    return url.render_as_string(hide_password=False)


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
