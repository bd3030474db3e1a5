"""``new_uploads_sensor``: run requests and cursor across ticks and a restart, on a real object store."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from mixai_pipeline.defs.ingestion.sensors import new_uploads_sensor
from mixai_pipeline.lib.ingestion.inbox import partition_key
from mixai_pipeline.resources import ObjectStoreResource
from mixai_pipeline.settings import BUSINESS_TIMEZONE
from mixai_pipeline_tests.conftest import set_mtime, write_upload


def tick(store, cursor, instance):
    context = dg.build_sensor_context(
        cursor=cursor, instance=instance,
        resources={"object_store": ObjectStoreResource(backend="local", root=str(store.root))})
    result = new_uploads_sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result
    return result.run_requests, result.cursor, None


def test_one_run_per_day_partition_and_a_cursor_that_survives_restarts(local_store, tone_wav):
    now = datetime.now(timezone.utc)
    today = partition_key(now, BUSINESS_TIMEZONE)
    yesterday = partition_key(now - timedelta(days=1), BUSINESS_TIMEZONE)
    stems = {"inst.wav": tone_wav, "vocal.wav": tone_wav}
    for _ in range(3):
        write_upload(local_store, stems)
    for _ in range(2):
        old = write_upload(local_store, stems)
        set_mtime(local_store, f"uploads/{old}/manifest.json", now - timedelta(days=1))
    write_upload(local_store, stems, manifest=b"{broken")  # still requested: it must be rejected by the run
    write_upload(local_store, stems, with_manifest=False)   # incomplete: not yet

    with dg.instance_for_test() as instance:
        requests, cursor, skip = tick(local_store, None, instance)
        assert skip is None
        assert sorted((r.partition_key, r.tags["mixai/new_uploads"]) for r in requests) == [
            (yesterday, "2"), (today, "4")]
        assert {r.partition_key: r.tags["mixai/invalid_manifests"] for r in requests} == {today: "1", yesterday: "0"}
        first_run_keys = {r.run_key for r in requests}
        assert len(first_run_keys) == 2
        assert json.loads(cursor)["watermark"]

        # Second tick, nothing new: skipped, cursor unchanged.
        requests, cursor2, skip = tick(local_store, cursor, instance)
        assert requests == [] and skip is not None and cursor2 == cursor

    # "Restart": a new instance and resource, only the stored cursor string carries over.
    with dg.instance_for_test() as instance:
        requests, _, skip = tick(local_store, cursor, instance)
        assert requests == [] and skip is not None
        new = write_upload(local_store, stems)
        requests, cursor3, _ = tick(local_store, cursor, instance)
        assert [(r.partition_key, r.tags["mixai/new_uploads"]) for r in requests] == [(today, "1")]
        assert requests[0].run_key not in first_run_keys
        assert str(new) in cursor3
        requests, _, _ = tick(local_store, cursor3, instance)
        assert requests == []


def test_abandoned_upload_is_requested_once_its_timeout_passes(local_store, tone_wav):
    now = datetime.now(timezone.utc)
    job = write_upload(local_store, {"inst.wav": tone_wav}, with_manifest=False)
    with dg.instance_for_test() as instance:
        requests, cursor, skip = tick(local_store, None, instance)
        assert requests == [] and skip is not None
        set_mtime(local_store, f"uploads/{job}/inst.wav", now - timedelta(hours=25))
        requests, cursor, _ = tick(local_store, cursor, instance)
        assert [r.partition_key for r in requests] == [partition_key(now - timedelta(hours=25), BUSINESS_TIMEZONE)]
        assert requests[0].tags["mixai/invalid_manifests"] == "1"


def test_uploads_before_the_first_partition_are_not_requested(local_store, tone_wav):
    job = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    set_mtime(local_store, f"uploads/{job}/manifest.json", datetime(2020, 1, 1, tzinfo=timezone.utc))
    with dg.instance_for_test() as instance:
        # It arrived on a day the partitions do not cover: logged and passed over, never a failing run.
        requests, cursor, _ = tick(local_store, None, instance)
        assert requests == []
        assert str(job) in cursor
