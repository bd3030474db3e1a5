"""Per-partition checks on ``uploads``."""

import dagster as dg
from sqlalchemy import text

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.resources import Database


@dg.asset_check(asset=uploads, partitions_def=daily_upload_partitions, blocking=True,
                description="Every accepted job of the day has exactly one inst and one vocal vault item "
                            "(live, or purged by retention or a withdrawal: the row stays) and a consent "
                            "record; every rejected job says why.")
def uploads_registered_whole(context: dg.AssetCheckExecutionContext, database: Database) -> dg.AssetCheckResult:
    with database.get_engine().connect() as conn:
        broken = conn.execute(text(
            """SELECT j.job_id::text, j.status,
                      count(v.*) FILTER (WHERE v.kind = 'inst') AS inst,
                      count(v.*) FILTER (WHERE v.kind = 'vocal') AS vocal,
                      bool_or(c.user_id IS NOT NULL) AS consent
               FROM jobs j
               LEFT JOIN vault_items v ON v.job_id = j.job_id
                                       AND v.kind IN ('inst', 'vocal')
               LEFT JOIN ml_consent c ON c.user_id = j.user_id
               WHERE j.partition_date = CAST(:day AS date) AND j.status <> 'rejected'
               GROUP BY j.job_id, j.status
               HAVING count(v.*) FILTER (WHERE v.kind = 'inst') <> 1
                   OR count(v.*) FILTER (WHERE v.kind = 'vocal') <> 1
                   OR NOT coalesce(bool_or(c.user_id IS NOT NULL), false)"""),
            {"day": context.partition_key}).all()
        jobs = conn.execute(text("SELECT count(*) FROM jobs WHERE partition_date = CAST(:day AS date)"),
                            {"day": context.partition_key}).scalar_one()
    return dg.AssetCheckResult(
        passed=not broken,
        metadata={"jobs_checked": jobs, "incomplete_jobs": len(broken),
                  "examples": dg.MetadataValue.json([list(map(str, row)) for row in broken[:10]])})
