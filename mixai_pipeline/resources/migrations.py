"""Numbered SQL migrations from ``sql/`` (``0001_name.sql`` …), applied in order and recorded.

Pending files run in one transaction (each in a savepoint) together with their rows in
``schema_migrations``, under an advisory lock so that two processes never migrate at once: an upgrade
is applied whole or not at all. An applied file whose content changed since
is an error: migrations are append-only, a fix is a new file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import Engine, text

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x6D69_7861  # "mixa": arbitrary, constant advisory-lock key


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {sql_dir}: {versions}")
    return migrations


def upgrade(engine: Engine, sql_dir: Path) -> list[Migration]:
    """Apply every migration not yet recorded; return the ones applied now (empty when up to date)."""
    migrations = discover(sql_dir)
    applied_now: list[Migration] = []
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        conn.execute(
            text(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        )
        recorded = {
            row.version: row.checksum
            for row in conn.execute(text("SELECT version, checksum FROM schema_migrations"))
        }
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.path.name} was changed after it was applied; "
                        "write a new migration instead of editing an applied one"
                    )
                continue
            with conn.begin_nested():
                # Straight to the driver with no parameters: a migration is plain SQL, and its '%'
                # characters must not be read as placeholders.
                try:
                    conn.connection.dbapi_connection.cursor().execute(migration.sql)
                except psycopg.Error as err:
                    raise MigrationError(f"{migration.path.name} failed, nothing was applied: "
                                         f"{str(err).strip()}") from err
                conn.execute(
                    text("INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                    {"v": migration.version, "n": migration.name, "c": migration.checksum},
                )
            applied_now.append(migration)
    return applied_now


def applied_versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('schema_migrations')")).scalar()
        if not exists:
            return []
        return list(conn.execute(text("SELECT version FROM schema_migrations ORDER BY version")).scalars())
