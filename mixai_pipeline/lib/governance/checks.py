"""What the per-day governance checks look at (the retention one is ``retention.retention_problems``).

``consent_problems(conn, day, now)``, for the uploads of one day partition:

- ``violations``: training-eligible rows (``dataset.load_training_set`` for that day) that the consent as
  of now forbids, by ``dataset.consent_violations`` — an independent query, so a bug in the eligibility
  rules, or a consent change that raced the read, shows up here;
- ``overdue``: a withdrawn user's derived data (features, labels, alignments, mixes, masters, and live
  objects not under legal hold) of the day's uploads, still there more than ``grace`` (24 h) after the
  withdrawal took effect.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from mixai_pipeline.lib.governance.purge import DERIVED_TABLES

DELETION_GRACE = timedelta(hours=24)


def consent_problems(conn: Connection, *, day: date, now: datetime, grace: timedelta = DELETION_GRACE,
                     limit: int = 20) -> dict[str, Any]:
    from mixai_pipeline.lib.training import dataset

    frame = dataset.load_training_set(conn, day=day, validate=False)
    violations = dataset.consent_violations(conn, frame)
    leftovers = " + ".join(f"(SELECT count(*) FROM {table} t WHERE t.job_id = j.job_id)" for table in DERIVED_TABLES)
    overdue = conn.execute(text(
        f"""SELECT j.job_id::text AS job_id, j.user_id::text AS user_id, d.requested_at,
                   ({leftovers}) AS derived_rows,
                   (SELECT count(*) FROM vault_items v WHERE v.job_id = j.job_id AND v.deleted_at IS NULL
                      AND v.purge_started_at IS NULL AND NOT v.legal_hold) AS live_objects
            FROM jobs j
            JOIN deletion_requests d ON d.user_id = j.user_id AND j.received_at <= d.requested_at
            WHERE j.partition_date = :day AND d.requested_at < :cutoff"""),
        {"day": day, "cutoff": now - grace}).mappings().all()
    overdue = [dict(r) for r in overdue if r["derived_rows"] or r["live_objects"]]
    return {"eligible_rows": len(frame), "violations": len(violations),
            "violation_examples": violations.head(limit).astype(str).to_dict("records"),
            "overdue_jobs": len(overdue),
            "overdue_examples": [{k: str(v) for k, v in r.items()} for r in overdue[:limit]]}
