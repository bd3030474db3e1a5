"""Rows the integration tests insert directly (the pipeline's own writers need audio or a whole run)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.governance import access


def add_job(conn: Connection, user_id: uuid.UUID, *, at: datetime) -> uuid.UUID:
    """A finished upload of ``user_id`` (plan standard, both consents on) received ``at``; returns its job id."""
    job_id = uuid.uuid4()
    conn.execute(text(
        "INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at, "
        "consent_qa, consent_training) VALUES (:job, :prefix, :user, 'standard', 'done', '2026-03-01', :at, "
        "true, true)"), {"job": job_id, "prefix": f"uploads/{job_id}/", "user": user_id, "at": at})
    return job_id


def add_team(engine: Engine, roles: dict[str, str], *, now: datetime) -> Engine:
    """Operators with their roles: hana, the first admin (bootstrapped by "install"), then the others added by her."""
    access.add_operator(engine, "hana", "admin", by="install", now=now)
    for actor, role in roles.items():
        access.add_operator(engine, actor, role, by="hana", now=now)
    return engine
