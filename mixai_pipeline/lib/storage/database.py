"""The application database: PostgreSQL through SQLAlchemy 2 and psycopg 3."""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` URLs and pin the psycopg 3 driver."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"MIXAI_DATABASE_URL must be a PostgreSQL URL, got backend {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@functools.lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    """One pooled engine per URL and process."""
    return create_engine(normalize_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)


def write_audit(conn: Connection, *, actor: str, action: str, target_type: str,
                target_id: str | None, details: dict[str, Any] | None = None) -> None:
    """Append one entry to the append-only ``audit_logs`` (inside the caller's transaction)."""
    conn.execute(
        text(
            "INSERT INTO audit_logs (actor, action, target_type, target_id, details) "
            "VALUES (:actor, :action, :target_type, :target_id, CAST(:details AS jsonb))"
        ),
        {
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "details": json.dumps(details or {}, default=str),
        },
    )
