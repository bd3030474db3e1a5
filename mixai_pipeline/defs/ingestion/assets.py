"""The ``uploads`` asset: a day's uploads registered in Postgres (jobs, vault_items, consent, audit)."""

import os
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.lib.ingestion.audio_probe import AudioLimits
from mixai_pipeline.lib.ingestion.inbox import (
    DEFAULT_ABANDON_AFTER,
    INBOX_PREFIX,
    group_uploads,
    uploads_of_day,
)
from mixai_pipeline.lib.ingestion.registration import register_day
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline.settings import BUSINESS_TIMEZONE


class UploadsConfig(dg.Config):
    max_workers: int = Field(default=max(2, os.cpu_count() or 2), ge=1, le=64,
                             description="uploads inspected in parallel (ffmpeg decodes)")
    abandon_after_hours: float = Field(default=DEFAULT_ABANDON_AFTER / timedelta(hours=1), gt=0,
                                       description="an upload without manifest.json is rejected after this")
    min_duration_s: float = Field(default=AudioLimits.min_duration_s, gt=0)
    max_duration_s: float = Field(default=AudioLimits.max_duration_s, gt=0)
    max_file_mib: int = Field(default=AudioLimits.max_bytes >> 20, gt=0)


@dg.asset(
    partitions_def=daily_upload_partitions,
    group_name="ingestion",
    kinds={"postgres", "ffmpeg"},
    tags={"domain": "ingestion"},
)
def uploads(context: dg.AssetExecutionContext, config: UploadsConfig, database: Database,
            object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Uploads that arrived in the inbox on this Asia/Tokyo day, registered in Postgres.

    Every ``uploads/<job_id>/`` whose ``manifest.json`` was written that day becomes a ``jobs`` row:
    accepted (with ``vault_items`` for the probed inst and vocal stems, the user's consent in
    ``ml_consent`` and an ``audit_logs`` entry) or rejected with a reason a person understands.
    Re-materializing the day or backfilling a range writes the same rows again, never duplicates.
    """
    day = context.partition_key
    store = object_store.get_store()
    now = datetime.now(timezone.utc)
    abandon_after = timedelta(hours=config.abandon_after_hours)
    ready, pending = uploads_of_day(group_uploads(store.list(INBOX_PREFIX)).values(), day,
                                    BUSINESS_TIMEZONE, now, abandon_after)
    context.log.info(f"{day}: {len(ready)} uploads to register, {len(pending)} still incomplete")

    def progress(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            context.log.info(f"{day}: {done}/{total} uploads inspected")

    report = register_day(
        store, database.get_engine(), ready, date.fromisoformat(day),
        actor="dagster:uploads", run_id=context.run.run_id, max_workers=config.max_workers,
        limits=AudioLimits(config.min_duration_s, config.max_duration_s, config.max_file_mib << 20),
        progress=progress)
    for outcome in report.rejected:
        context.log.warning(f"rejected {outcome.name!r} ({outcome.reject.code}): {outcome.reject.reason}")
    if report.errors:
        raise dg.Failure(
            description=f"{len(report.errors)} of {len(ready)} uploads could not be recorded "
                        "(infrastructure error, nothing half-written; re-run the partition)",
            metadata={"errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in report.errors))})

    accepted, rejected = report.accepted, report.rejected
    actions = report.actions()
    rejects_table = "\n".join(
        ["| upload | code | reason |", "|---|---|---|"]
        + [f"| {_cell(repr(o.name[:40]))} | {o.reject.code} | {_cell(o.reject.reason)} |" for o in rejected]
    ) if rejected else "none"
    return dg.MaterializeResult(metadata={
        "accepted": len(accepted),
        "rejected": len(rejected),
        "incomplete": dg.MetadataValue.int(len(pending)),
        "newly_registered": actions.get("inserted", 0),
        "updated": actions.get("updated", 0),
        "unchanged": actions.get("unchanged", 0),
        "kept_existing": actions.get("kept_existing", 0),
        "bytes_accepted": sum(o.bytes for o in accepted),
        "audio_minutes_accepted": round(sum(s.probe.duration_s for o in accepted for s in o.stems) / 60, 2),
        "reject_reasons": dg.MetadataValue.md(rejects_table),
        "reject_codes": dg.MetadataValue.json(dict(sorted(Counter(o.reject.code for o in rejected).items()))),
    })


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")
