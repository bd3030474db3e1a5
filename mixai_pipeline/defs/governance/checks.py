"""Per-day consent check on the data training reads (seed 000 §4, DESIGN.md §5)."""

from datetime import date

import dagster as dg

from mixai_pipeline.defs.audio.assets import labels
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.resources import Clock, Database, ObjectStoreResource


@dg.asset_check(asset=labels, partitions_def=daily_upload_partitions, blocking=True,
                description="No training-eligible row of this day belongs to a user without training consent, "
                            "who withdrew or is excluded; no withdrawn user's derived data of this day is older "
                            "than 24 h.")
def consent_check(context: dg.AssetCheckExecutionContext, database: Database, clock: Clock) -> dg.AssetCheckResult:
    from mixai_pipeline.lib.governance.checks import consent_problems

    with database.get_engine().connect() as conn:
        problems = consent_problems(conn, day=date.fromisoformat(context.partition_key), now=clock.now())
    return dg.AssetCheckResult(
        passed=not (problems["violations"] or problems["overdue_jobs"]),
        metadata={"eligible_rows": problems["eligible_rows"], "violations": problems["violations"],
                  "overdue_jobs": problems["overdue_jobs"],
                  "violation_examples": dg.MetadataValue.json(problems["violation_examples"]),
                  "overdue_examples": dg.MetadataValue.json(problems["overdue_examples"])})


@dg.asset_check(asset="retention_purge", description="Objects under uploads/, derived/ and previews/ without a "
                                                      "vault_items row, and live rows whose object is missing.")
def orphan_sweep(database: Database, object_store: ObjectStoreResource) -> dg.AssetCheckResult:
    from mixai_pipeline.lib.governance.retention import orphans

    with database.get_engine().connect() as conn:
        report = orphans(conn, object_store.get_store(), ("uploads/", "derived/", "previews/"))
    return dg.AssetCheckResult(passed=report.consistent, metadata={
        "objects_without_row": len(report.objects_without_row), "rows_without_object": len(report.rows_without_object),
        "rejected_upload_objects": len(report.rejected_upload_objects), "in_purge": len(report.in_purge),
        "examples": dg.MetadataValue.json([o.key for o in report.objects_without_row[:10]]
                                          + [m.path for m in report.rows_without_object[:10]])})
