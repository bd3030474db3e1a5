"""Retention (seed 000 §4.1): each day partition purges the objects whose retention expired that day."""

from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.resources import Clock, Database, ObjectStoreResource

RETENTION_CHECK = "retention_check"


class RetentionPurgeConfig(dg.Config):
    catch_up: bool = Field(default=False, description="also purge what expired before this day and is still there "
                                                      "(the daily schedule sets it; a backfill keeps to its days)")


@dg.asset(
    partitions_def=daily_upload_partitions, group_name="governance", kinds={"postgres", "s3"},
    check_specs=[dg.AssetCheckSpec(RETENTION_CHECK, asset="retention_purge", partitions_def=daily_upload_partitions,
                                   description="nothing that expired on this day is still live unless a legal "
                                               "hold keeps it; no purge left half done")],
)
def retention_purge(context: dg.AssetExecutionContext, config: RetentionPurgeConfig, database: Database,
                    object_store: ObjectStoreResource, clock: Clock):
    """Deletes the objects whose retention (``retention_policies`` per plan and kind: inst/vocal 7 d, master
    15 d, preview 30 d; freetrial 3/3/7/14) expired on this Asia/Tokyo day, up to now (with ``catch_up``,
    as the daily schedule runs it, also anything expired earlier and still there: a released legal hold, a
    failed run): never early, never under legal hold. Rejected uploads' files (no vault rows) go after the
    stem retention of their plan, the same way.
    Crash-safe (intent, then object, then tombstone; a rerun completes an interrupted purge); every deletion
    audited; a backfill over past days deletes exactly what the policy says."""
    from mixai_pipeline.lib.governance import retention

    day, now = date.fromisoformat(context.partition_key), clock.now()
    engine = database.get_engine()
    report = retention.purge_for_day(engine, object_store.get_store(), day, now=now, catch_up=config.catch_up,
                                     actor=f"dagster:retention_purge:{context.run.run_id[:8]}")
    window = retention.day_window(day)
    rejected = retention.purge_rejected_uploads(
        engine, object_store.get_store(), now=now, actor=f"dagster:retention_purge:{context.run.run_id[:8]}",
        window=(retention.EARLIEST_EXPIRY if config.catch_up else window[0], window[1]))
    context.log.info(f"rejected uploads: {rejected.purged} of {rejected.expired} expired purged "
                     f"({rejected.objects_deleted} files, {rejected.bytes_freed:,} bytes), "
                     f"{len(rejected.held)} under legal hold")
    for error in (report.errors + rejected.errors)[:20]:
        context.log.warning(f"not deleted (retried by the next run): {error}")
    for key in rejected.unaddressable[:20]:
        context.log.warning(f"a rejected upload's file the store API cannot address (delete it by hand): {key!r}")
    with engine.connect() as conn:
        problems = retention.retention_problems(conn, now=now, day=day, grace=timedelta(0))
    yield dg.MaterializeResult(metadata={
        **{k: v for k, v in report.as_metadata().items() if k != "deleted_by_kind"},
        **rejected.as_metadata(),
        "deleted_by_kind": dg.MetadataValue.json(report.deleted_by_kind),
        "held_examples": dg.MetadataValue.json([{"path": i.path, "kind": i.kind} for i in report.held_items[:20]]),
        "now": now.isoformat()})
    yield dg.AssetCheckResult(check_name=RETENTION_CHECK, passed=not (problems["overdue"] or problems["in_purge"]),
                              metadata={"overdue": problems["overdue"], "in_purge": problems["in_purge"],
                                        "live_without_expiry": problems["live_without_expiry"],
                                        "examples": dg.MetadataValue.json(
                                            [{k: str(v) for k, v in r.items()} for r in problems["overdue_examples"]])})
