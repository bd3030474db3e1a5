"""The governance lifecycle of the issue, days 0 → 31, on a real PostgreSQL, a real object store and the real
Dagster glue, with the injectable clock (``Clock(frozen_at=…)``) standing in for the passing days.

Day 0 three uploads arrive and go through the real pipeline (uploads → aligned_stems → … → labels): A1 and A2
of user A, B1 of user B, all on the standard plan. Day 1 an admin asks for a legal hold on A1 and an ops
operator approves it (4-eyes). Day 3 B withdraws training consent in the app: the consent event is picked up
by ``consent_changes_sensor`` → ``consent_changes_job``, then ``deletion_requests_sensor`` →
``user_data_purge_job`` deletes B's data within minutes. Every morning at 03:30 Tokyo the retention purge
runs for yesterday's partition, as ``retention_purge_schedule`` asks: A2's stems go after day 7, its mix and
master after day 15, its previews after day 30; the held A1 keeps everything. The audit trail tells it all.
"""

import io
from collections import Counter
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from mixai_pipeline.defs.audio.assets import aligned_stems, features_store, labels, masters, mixes, previews
from mixai_pipeline.defs.governance.assets import RETENTION_CHECK, retention_purge
from mixai_pipeline.defs.governance.checks import consent_check, orphan_sweep
from mixai_pipeline.defs.governance.jobs import (
    consent_changes_job,
    decide_approval_job,
    request_approval_job,
    retention_purge_job,
    user_data_purge_job,
)
from mixai_pipeline.defs.governance.schedules import retention_purge_schedule
from mixai_pipeline.defs.governance.sensors import consent_changes_sensor, deletion_requests_sensor
from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.training.assets import CONSENT_CHECK, training_set
from mixai_pipeline.lib.governance import access
from mixai_pipeline.lib.training import dataset
from mixai_pipeline.resources import Clock, Database, ObjectStoreResource
from mixai_pipeline_tests.conftest import make_audio, set_mtime, write_upload

pytestmark = pytest.mark.slow

TOKYO = ZoneInfo("Asia/Tokyo")
DAY0 = date(2025, 9, 1)  # a Monday; its training week is the one starting Sunday 2025-08-31 04:00
PIPELINE = [uploads, aligned_stems, mixes, masters, previews, features_store, labels]
DERIVED_TABLES = ("features_store", "labels", "alignments", "mixes", "masters")
RETENTION_DAYS = {"inst": 7, "vocal": 7, "mix": 15, "master": 15, "preview": 30, "waveform": 30}  # seed 000 §4

STEMS = Counter(inst=1, vocal=1)
MIX_AND_MASTER = Counter(mix=1, master=1)
PREVIEWS = Counter(preview=3, waveform=6)  # inst, vocal and mix: an m4a, a PNG and a JSON waveform each
EVERYTHING = STEMS + MIX_AND_MASTER + PREVIEWS


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Simulated day ``day`` at hh:mm, Tokyo time."""
    return datetime.combine(DAY0 + timedelta(days=day), time(hour, minute), tzinfo=TOKYO)


def partition(day: int) -> str:
    return (DAY0 + timedelta(days=day)).isoformat()


class World:
    """The database, the store and the Dagster instance, with the clock set for each run."""

    def __init__(self, engine, db_url, store, instance):
        self.engine, self.db_url, self.store, self.instance = engine, db_url, store, instance

    def resources(self, now: datetime) -> dict:
        return {"database": Database(url=self.db_url),
                "object_store": ObjectStoreResource(backend="local", root=str(self.store.root)),
                "clock": Clock(frozen_at=now.isoformat())}

    def schedule_repository(self):
        """What the daemon resolves the schedule's partitioned run request against (its code location)."""
        return dg.Definitions(assets=[retention_purge], jobs=[retention_purge_job],
                              schedules=[retention_purge_schedule], resources=self.resources(at(0, 0))
                              ).get_repository_def()

    def materialize(self, assets, key: str, now: datetime, **kwargs):
        return dg.materialize(assets, partition_key=key, resources=self.resources(now), instance=self.instance,
                              raise_on_error=False, **kwargs)

    def run(self, job, now: datetime, run_config: dict, tags: dict | None = None):
        result = job.execute_in_process(run_config=run_config, resources=self.resources(now), instance=self.instance,
                                        tags=tags, raise_on_error=False)
        assert result.success, [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
        return result

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).all()

    def live(self, job: str) -> Counter:
        """The job's live vault items by kind, after checking rows against objects: a live row's object exists,
        a tombstone's is gone."""
        live = Counter()
        for kind, path, deleted_at in self.rows(
                "SELECT kind, path, deleted_at FROM vault_items WHERE job_id = CAST(:j AS uuid)", j=job):
            assert self.store.exists(path) == (deleted_at is None), (path, deleted_at)
            if deleted_at is None:
                live[kind] += 1
        return live

    def derived(self, job: str) -> dict[str, int]:
        return {table: self.rows(f"SELECT count(*) FROM {table} WHERE job_id = CAST(:j AS uuid)", j=job)[0][0]
                for table in DERIVED_TABLES}

    def training_jobs(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(dataset.load_training_set(conn)["job_id"])


def upload(store, audio: dict[str, bytes], user: str, arrived: datetime) -> str:
    """An upload as the app writes it, dated ``arrived`` (the manifest's write time is its arrival)."""
    job = str(write_upload(store, audio, user_id=user, plan="standard", created_at=arrived.isoformat(),
                           consent={"qa": True, "training": True}))
    for name in (*audio, "manifest.json"):
        set_mtime(store, f"uploads/{job}/{name}", arrived)
    return job


def metadata(event) -> dict:
    return {k: v.value for k, v in event.metadata.items()}


def test_days_0_to_31_retention_legal_hold_withdrawal_and_the_audit_trail(engine, db_url, local_store, audio_dir,
                                                                        capsys):
    user_a, user_b = "aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b"
    audio = {"inst.wav": make_audio(audio_dir / "lifecycle_inst.wav", 3.0).read_bytes(),
             "vocal.wav": make_audio(audio_dir / "lifecycle_vocal.wav", 3.0, channels=1).read_bytes()}
    access.add_operator(engine, "hana", "admin", by="install", now=at(0, 9))
    access.add_operator(engine, "ken", "ops", by="hana", now=at(0, 9))

    with dg.instance_for_test() as instance:
        world = World(engine, db_url, local_store, instance)

        # ---- day 0: three uploads through the real pipeline -------------------------------------------------
        a1 = upload(local_store, audio, user_a, at(0, 10, 0))
        a2 = upload(local_store, audio, user_a, at(0, 10, 20))
        b1 = upload(local_store, audio, user_b, at(0, 10, 40))
        day0 = world.materialize([*PIPELINE, consent_check], partition(0), at(0, 11))
        assert day0.success
        jobs = {str(j): (status, received) for j, status, received in
                world.rows("SELECT job_id, status, received_at FROM jobs")}
        assert jobs == {a1: ("done", at(0, 10, 0)), a2: ("done", at(0, 10, 20)), b1: ("done", at(0, 10, 40))}
        for job in (a1, a2, b1):
            assert world.live(job) == EVERYTHING
            assert world.derived(job) == {"features_store": 3, "labels": 3, "alignments": 1, "mixes": 1, "masters": 1}
            for kind, expires_at in world.rows("SELECT kind, expires_at FROM vault_items WHERE job_id = "
                                               "CAST(:j AS uuid)", j=job):
                assert expires_at == jobs[job][1] + timedelta(days=RETENTION_DAYS[kind]), kind
        [check] = day0.get_asset_check_evaluations()
        assert check.passed and check.partition == partition(0) and metadata(check)["eligible_rows"] == 9
        assert world.training_jobs() == {a1, a2, b1}

        purge_runs: dict[str, dict] = {}
        repository = world.schedule_repository()
        for day in range(1, 32):
            # ---- 03:30 Tokyo: the retention purge of yesterday, as the schedule asks for it ----------------
            fire = at(day, 3, 30)
            [request] = retention_purge_schedule.evaluate_tick(dg.build_schedule_context(
                scheduled_execution_time=fire, repository_def=repository)).run_requests
            assert request.partition_key == partition(day - 1)
            result = world.materialize([retention_purge], request.partition_key, fire, tags=request.tags)
            assert result.success
            [check] = result.get_asset_check_evaluations()
            assert check.check_name == RETENTION_CHECK and check.partition == request.partition_key
            [materialization] = result.asset_materializations_for_node("retention_purge")
            purge_runs[request.partition_key] = {**metadata(materialization), "check_passed": check.passed,
                                                 "check": metadata(check)}

            if day == 1:  # ---- legal hold on A1: requested by an admin, approved by a second operator (ops)
                asked = world.run(request_approval_job, at(1, 9), {"ops": {"request_approval": {"config": {
                    "kind": "legal_hold", "target": {"job_id": a1, "hold": True},
                    "reason": "dispute over the recording's rights", "actor": "hana"}}}})
                request_id = asked.output_for_node("request_approval")["request_id"]
                decided = world.run(decide_approval_job, at(1, 10), {"ops": {"decide_approval": {"config": {
                    "request_id": request_id, "approve": True, "actor": "ken"}}}})
                assert decided.output_for_node("decide_approval") == {
                    "request_id": request_id, "status": "approved", "items_changed": 13, "items_held": 13}
                held = {str(j): n for j, n in world.rows("SELECT job_id, count(*) FILTER (WHERE legal_hold) "
                                                         "FROM vault_items GROUP BY job_id")}
                assert held == {a1: 13, a2: 0, b1: 0}

            if day == 3:
                withdraw_b(world, b1, user_b, a1, a2)

            if day == 4:  # ---- 24 h after the withdrawal: nothing of B is left, the day's consent check passes
                assert world.live(b1) == Counter()
                assert world.derived(b1) == dict.fromkeys(DERIVED_TABLES, 0)
                assert not list(local_store.list(f"uploads/{b1}/")) and not list(local_store.list(f"previews/{b1}/"))
                checked = world.materialize([labels, consent_check], partition(0), at(4, 12, 30))
                [check] = checked.get_asset_check_evaluations()
                assert checked.success and check.passed and check.partition == partition(0)
                assert {k: metadata(check)[k] for k in ("eligible_rows", "violations", "overdue_jobs")} == {
                    "eligible_rows": 6, "violations": 0, "overdue_jobs": 0}
                assert world.derived(b1) == dict.fromkeys(DERIVED_TABLES, 0)  # relabelling the day brings none back

            if day == 7:  # ---- A2's stems expire at 10:20 today: asking for today before then deletes nothing
                early = world.materialize([retention_purge], partition(7), at(7, 10, 19))
                assert metadata(early.asset_materializations_for_node("retention_purge")[0])["deleted"] == 0
                assert early.get_asset_check_evaluations()[0].passed

            expected_a2 = {6: EVERYTHING, 7: EVERYTHING, 8: EVERYTHING - STEMS, 14: EVERYTHING - STEMS,
                           15: EVERYTHING - STEMS, 16: PREVIEWS, 29: PREVIEWS, 30: PREVIEWS, 31: Counter()}
            if day in expected_a2:
                assert world.live(a2) == expected_a2[day], day
                assert world.live(a1) == EVERYTHING, day  # held: everything survives its expiry
                assert world.live(b1) == Counter(), day

        # Each partition deleted exactly its day's expiries, reported the held ones, and its check passed.
        deleted = {key: run["deleted_by_kind"] for key, run in purge_runs.items() if run["deleted"]}
        assert deleted == {partition(7): {"inst": 1, "vocal": 1}, partition(15): {"mix": 1, "master": 1},
                           partition(30): {"preview": 3, "waveform": 6}}
        held = {key: run["skipped_on_hold"] for key, run in purge_runs.items() if run["skipped_on_hold"]}
        assert held == {partition(7): 2, partition(15): 2, partition(30): 9}
        assert len(purge_runs) == 31 and all(run["check_passed"] for run in purge_runs.values())
        # Never early, never more than a day late: deleted at the first 03:30 after the expiry.
        for kind, expires_at, deleted_at in world.rows(
                "SELECT kind, expires_at, deleted_at FROM vault_items WHERE job_id = CAST(:j AS uuid)", j=a2):
            assert expires_at <= deleted_at < expires_at + timedelta(days=1), kind
            assert deleted_at.astimezone(TOKYO).time() == time(3, 30)
        # Nothing orphaned either way (no object without its row, no live row without its object) …
        sweep = dg.materialize([retention_purge, orphan_sweep], selection=dg.AssetSelection.checks(orphan_sweep),
                               resources=world.resources(at(31, 4)), instance=instance)
        [check] = sweep.get_asset_check_evaluations()
        assert check.passed, metadata(check)
        # … and a month on, day 0 still trains on A's two uploads only (features and labels outlive the audio).
        checked = world.materialize([labels, consent_check], partition(0), at(31, 4))
        [check] = checked.get_asset_check_evaluations()
        assert checked.success and check.passed and metadata(check)["eligible_rows"] == 6
        assert world.training_jobs() == {a1, a2}
        assert {str(j) for [j] in world.rows("SELECT job_id FROM jobs")} == {a1, a2, b1}  # the record stays

    story = audit_story(world)
    names = {a1: "A1", a2: "A2", b1: "B1", user_a: "A", user_b: "B"}
    with capsys.disabled():
        print("\n" + "\n".join(readable(line, names) for line in story))
    assert_the_story(story, a1, a2, b1, user_a, user_b)


def withdraw_b(world: World, b1: str, user_b: str, a1: str, a2: str) -> None:
    """Day 3: B withdraws in the app; the sensors and jobs take it from there."""
    store = world.store
    key = f"consent/{user_b}/20250904T030000Z.json"
    store.put_bytes(key, f'{{"user_id": "{user_b}", "at": "{at(3, 12).isoformat()}", "training": false}}'.encode())

    tick = consent_changes_sensor(dg.build_sensor_context(instance=world.instance, resources={
        "object_store": ObjectStoreResource(backend="local", root=str(store.root))}))
    [request] = tick.run_requests
    applied = world.run(consent_changes_job, at(3, 12, 1), request.run_config, request.tags)
    assert applied.output_for_node("apply_consent_changes") == {"outcomes": {key: "applied"}, "refused": {}}
    [(training, withdrawn_at)] = world.rows(
        "SELECT training, training_withdrawn_at FROM ml_consent WHERE user_id = CAST(:u AS uuid)", u=user_b)
    assert training is False and withdrawn_at == at(3, 12)
    exclusions = world.rows("SELECT reason FROM ml_exclusions WHERE user_id = CAST(:u AS uuid)", u=user_b)
    assert exclusions == [("withdrawal",)]
    [(request_id, status, due_at)] = world.rows(
        "SELECT id, status, due_at FROM deletion_requests WHERE user_id = CAST(:u AS uuid)", u=user_b)
    assert status == "pending" and due_at == at(4, 12)

    # Out of the next training set at once, while the data still exists.
    assert world.live(b1) == EVERYTHING
    assert world.training_jobs() == {a1, a2}
    week = world.materialize([training_set], "2025-08-31", at(3, 12, 1),
                             run_config={"ops": {"training_set": {"config": {"min_samples": 1}}}})
    assert week.success
    [materialization] = week.asset_materializations_for_node("training_set")
    parquet = pq.read_table(io.BytesIO(store.get_bytes(metadata(materialization)["object_key"])))
    assert set(parquet.column("job_id").to_pylist()) == {a1, a2}
    [check] = week.get_asset_check_evaluations()
    assert check.check_name == CONSENT_CHECK and check.passed

    # The deletion sensor ticks a minute later and the purge runs.
    resources = world.resources(at(3, 12, 2))
    tick = deletion_requests_sensor(dg.build_sensor_context(instance=world.instance, resources={
        "database": resources["database"], "clock": resources["clock"]}))
    assert tick.run_config == {"ops": {"purge_withdrawn_users": {"config": {"user_ids": [user_b]}}}}
    purged = world.run(user_data_purge_job, at(3, 12, 2), tick.run_config, tick.tags)
    [report] = purged.output_for_node("purge_withdrawn_users")
    assert report["status"] == "completed" and report["objects_deleted"] == 13 and report["held"] == 0
    assert report["rows_deleted"] == {"features_store": 3, "labels": 3, "alignments": 1, "mixes": 1, "masters": 1}
    assert report["withdrawal_to_deletion_s"] == {str(request_id): 120.0}
    [(status, duration_s, completed_at, due_at)] = world.rows(
        "SELECT status, duration_s, completed_at, due_at FROM deletion_requests WHERE id = :i", i=request_id)
    assert status == "completed" and duration_s == 120.0 < 24 * 3600 and completed_at <= due_at
    assert world.live(b1) == Counter() and world.derived(b1) == dict.fromkeys(DERIVED_TABLES, 0)
    assert not list(store.list(f"uploads/{b1}/"))  # the manifest too
    assert store.exists(key)  # the consent statement itself is the record of the withdrawal
    assert isinstance(deletion_requests_sensor(dg.build_sensor_context(instance=world.instance, resources={
        "database": resources["database"], "clock": resources["clock"]})), dg.SkipReason)


def audit_story(world: World) -> list[str]:
    """One line per audit entry, in order: when (the simulated clock the entry records), who, what, on what."""
    lines = []
    for actor, action, target_type, target_id, details in world.rows(
            "SELECT actor, action, target_type, target_id, details FROM audit_logs ORDER BY id"):
        when = details.get("now") or details.get("effective_at") or details.get("applied_at") or ""
        when = datetime.fromisoformat(when).astimezone(TOKYO).strftime("%m-%d %H:%M") if when else "           "
        what = ""
        if action == "vault_item.deleted":
            what = f"{details['cause']}: " + ", ".join(sorted(f"{i['kind']}" for i in details["items"]))
        elif action == "object.deleted_unregistered":
            what = ", ".join(i["path"].rsplit("/", 1)[-1] for i in details["items"])
        elif action == "deletion_request.completed":
            what = f"{details['status']} in {details['duration_s']:.0f} s, within 24 h: {details['within_24h']}"
        elif action.startswith("consent."):
            what = f"{details.get('before')} → {details['after']} ({details['source']})"
        elif action.startswith(("approval.", "legal_hold.")):
            what = str(details.get("target") or {k: details[k] for k in ("live_items", "held")})
        elif action.startswith("operator."):
            what = details["role"]
        elif action == "upload.registered":
            when = f"{date.fromisoformat(details['partition']):%m-%d} (day)"  # registration records the day only
            what = f"user:{details['user_id']} {details['plan']}, stems {', '.join(sorted(details['stems']))}"
        lines.append(f"{when}  {actor:32} {action:30} {target_type}:{target_id}  {what}".rstrip())
    return lines


def readable(line: str, names: dict[str, str]) -> str:
    for uuid_, name in names.items():
        line = line.replace(uuid_, name)
    return line


def assert_the_story(story: list[str], a1: str, a2: str, b1: str, user_a: str, user_b: str) -> None:
    def entries(*words: str) -> list[int]:
        return [i for i, line in enumerate(story) if all(w in line for w in words)]

    # Who registered what, and under which consent.
    assert len(entries("operator.added")) == 2
    assert [len(entries("upload.registered", f"job:{job}")) for job in (a1, a2, b1)] == [1, 1, 1]
    assert len(entries("consent.set", f"user:{user_a}")) == 1 and len(entries("consent.set", f"user:{user_b}")) == 1
    # The hold, then the withdrawal and B's deletion within minutes, then retention day by day.
    [requested] = entries("hana", "approval.requested")
    [approved] = entries("ken", "approval.approved")
    [hold_set] = entries("ken", "legal_hold.set", f"job:{a1}")
    [withdrawn] = entries("09-04 12:00", "dagster:consent_changes", "consent.withdrawn", f"user:{user_b}")
    [b_deleted] = entries("09-04 12:02", "dagster:user_data_purge", "vault_item.deleted", f"job:{b1}", "withdrawal")
    [manifest_deleted] = entries("dagster:user_data_purge", "object.deleted_unregistered", f"job:{b1}", "manifest.json")
    [request_done] = entries("deletion_request.completed", "completed in 120 s, within 24 h: True")
    [stems] = entries("09-09 03:30", "vault_item.deleted", f"job:{a2}", "retention: inst, vocal")
    [mix_master] = entries("09-17 03:30", "vault_item.deleted", f"job:{a2}", "retention: master, mix")
    [previews_] = entries("10-02 03:30", "vault_item.deleted", f"job:{a2}", "retention: preview, preview, preview, "
                                                                            "waveform, waveform, waveform, waveform")
    assert (max(entries("upload.registered")) < requested < approved < hold_set < withdrawn < b_deleted
            < manifest_deleted < request_done < stems < mix_master < previews_ == len(story) - 1)
    # Nothing of the held A1 was ever deleted, and B's data only by the withdrawal.
    assert not entries("deleted", f"job:{a1}")
    assert entries("deleted", f"job:{b1}") == [b_deleted, manifest_deleted]
