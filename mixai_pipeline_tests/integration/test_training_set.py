"""The weekly training_set asset on real PostgreSQL and a real object store, its blocking consent check,
and the schedule's real fire times (Sunday 04:00 Asia/Tokyo)."""

import io
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from mixai_pipeline.defs.training.assets import CONSENT_CHECK, training_set
from mixai_pipeline.defs.training.schedules import weekly_training_schedule
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline_tests.unit.test_training_dataset import T0, add_job, add_user

pytestmark = pytest.mark.slow
TOKYO = ZoneInfo("Asia/Tokyo")
WEEK = "2025-09-07"  # Sunday 2025-09-07 04:00 → Sunday 2025-09-14 04:00, Tokyo


def materialize(db_url, store, min_samples: int = 1000):
    return dg.materialize(
        [training_set], partition_key=WEEK, raise_on_error=False,
        resources={"database": Database(url=db_url),
                   "object_store": ObjectStoreResource(backend="local", root=str(store.root))},
        run_config={"ops": {"training_set": {"config": {"min_samples": min_samples}}}})


def test_the_week_holds_consented_uploads_received_before_its_end(engine, db_url, local_store):
    end = datetime(2025, 9, 14, 4, tzinfo=TOKYO)
    with engine.begin() as conn:
        ok = add_user(conn, training=True, granted=T0)
        inside = add_job(conn, ok, received=end - timedelta(minutes=1), quality="human")
        add_job(conn, ok, received=end)  # the next week's
        add_job(conn, add_user(conn, training=False), received=end - timedelta(days=1))
    result = materialize(db_url, local_store, min_samples=2)
    assert result.success
    meta = result.asset_materializations_for_node("training_set")[0].metadata
    assert meta["rows_per_task"].value == {"master_reg": 1, "preset_cls": 1, "align_conf": 1}
    assert set(meta["tasks_below_min_samples"].value) == {"master_reg", "preset_cls", "align_conf"}
    table = pq.read_table(io.BytesIO(local_store.get_bytes(meta["object_key"].value)))
    assert set(table.column("job_id").to_pylist()) == {inside}
    assert table.schema.metadata[b"mixai.digest"].decode() == meta["data_digest"].value
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CONSENT_CHECK and check.passed


def test_the_consent_check_blocks_when_consent_changed_under_the_set(engine, db_url, local_store, monkeypatch):
    from mixai_pipeline.lib.training import dataset

    with engine.begin() as conn:
        user = add_user(conn, training=True, granted=T0)
        add_job(conn, user, received=datetime(2025, 9, 10, tzinfo=timezone.utc))
    real_violations = dataset.consent_violations

    def withdraw_first(conn, frame):  # the user withdraws between reading the rows and the check
        conn.execute(text("UPDATE ml_consent SET training = false, training_withdrawn_at = now() "
                          "WHERE user_id = CAST(:u AS uuid)"), {"u": user})
        return real_violations(conn, frame)

    monkeypatch.setattr(dataset, "consent_violations", withdraw_first)
    result = materialize(db_url, local_store)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["violations"].value == 1  # the one job, named
    assert not result.success  # blocking: nothing downstream may train on it


def test_the_schedule_fires_sunday_0400_tokyo_for_the_week_that_ended():
    assert weekly_training_schedule.cron_schedule == "0 4 * * 0"
    assert weekly_training_schedule.execution_timezone == "Asia/Tokyo"
    fire = datetime(2025, 9, 14, 4, tzinfo=TOKYO)
    # No instance: evaluating with one leaves Dagster's definitions-load context pointing at it after it
    # is gone, which breaks every later materialize in the session.
    [request] = weekly_training_schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=fire)).run_requests
    assert request.partition_key == WEEK
