"""``new_uploads_sensor``: new uploads in the inbox → one ``uploads`` run per day partition per tick."""

from collections import defaultdict
from datetime import datetime, timezone

import dagster as dg

from mixai_pipeline.defs.ingestion.jobs import uploads_job
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.lib.ingestion.inbox import INBOX_PREFIX, InboxCursor, group_uploads
from mixai_pipeline.lib.ingestion.manifest import MAX_MANIFEST_BYTES, RejectError, parse_manifest
from mixai_pipeline.lib.storage.object_store import ObjectStore, ObjectStoreError, key_problem
from mixai_pipeline.resources import ObjectStoreResource
from mixai_pipeline.settings import BUSINESS_TIMEZONE


def _manifest_problem(store: ObjectStore, key: str | None) -> str | None:
    if key is None:
        return "manifest.json missing (abandoned upload)"
    if key_problem(key):
        return "hostile name"
    try:
        parse_manifest(store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES))
    except RejectError as reject:
        return reject.reason
    except ObjectStoreError as err:
        return str(err)
    return None


@dg.sensor(
    job=uploads_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches uploads/ in the object store; batches new uploads into one run per day partition.",
)
def new_uploads_sensor(context: dg.SensorEvaluationContext, object_store: ObjectStoreResource):
    store = object_store.get_store()
    cursor = InboxCursor.from_json(context.cursor)
    now = datetime.now(timezone.utc)
    events, new_cursor = cursor.advance(group_uploads(store.list(INBOX_PREFIX)).values(), now, BUSINESS_TIMEZONE)
    if not events:
        return dg.SkipReason("no new uploads in the inbox")

    known = set(daily_upload_partitions.get_partition_keys(current_time=now))
    by_day: dict[str, list] = defaultdict(list)
    for event in events:
        if event.partition_key not in known:
            context.log.warning(f"upload {event.upload.name!r} arrived on {event.partition_key}, outside the "
                                "partitions of uploads; it is not registered")
            continue
        by_day[event.partition_key].append(event)

    run_requests = []
    for day, day_events in sorted(by_day.items()):
        problems = {e.upload.name: _manifest_problem(store, e.upload.manifest.key if e.upload.manifest else None)
                    for e in day_events}
        invalid = {name: why for name, why in problems.items() if why}
        for name, why in invalid.items():
            context.log.info(f"{day}: upload {name!r} will be rejected: {why}")
        run_requests.append(dg.RunRequest(
            run_key=new_cursor.run_key(day),
            partition_key=day,
            tags={"mixai/new_uploads": str(len(day_events)), "mixai/invalid_manifests": str(len(invalid))},
        ))
        context.log.info(f"{day}: {len(day_events)} new uploads ({len(invalid)} with an invalid manifest)")
    return dg.SensorResult(run_requests=run_requests, cursor=new_cursor.to_json())
