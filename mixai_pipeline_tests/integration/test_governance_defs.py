"""The governance glue in Dagster and the ``mixai`` governance commands, on a real PostgreSQL and object store:
the 03:30 Tokyo retention schedule, the consent-change and deletion sensors with their jobs, the operator
jobs' role checks, a 30-day backfill of ``retention_purge``, ``consent_check`` and ``orphan_sweep``."""

import json
import threading
import time as clock_time
import uuid
from datetime import date, datetime, time, timedelta, timezone
from itertools import islice
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import schedule_execution_time_iterator  # what the daemon computes ticks with
from sqlalchemy import text

from mixai_pipeline import settings
from mixai_pipeline.defs.audio.assets import labels
from mixai_pipeline.defs.governance.assets import RETENTION_CHECK, retention_purge
from mixai_pipeline.defs.governance.checks import consent_check, orphan_sweep
from mixai_pipeline.defs.governance.jobs import (
    consent_changes_job,
    decide_approval_job,
    request_approval_job,
    retention_purge_job,
    set_consent_job,
    user_data_purge_job,
)
from mixai_pipeline.defs.governance.schedules import retention_purge_schedule
from mixai_pipeline.defs.governance.sensors import consent_changes_sensor, deletion_requests_sensor
from mixai_pipeline.lib.governance import access, consent
from mixai_pipeline.resources import Clock, Database, ObjectStoreResource
from mixai_pipeline_tests.conftest import set_mtime
from mixai_pipeline_tests.integration import inserts
from mixai_pipeline_tests.integration.test_governance_lib import rejected_upload, upload

pytestmark = pytest.mark.slow

TOKYO = ZoneInfo("Asia/Tokyo")
# Purging a withdrawn user's data compares the store's real modification times with the clock (objects
# younger than an hour wait), so those scenarios run on a clock anchored at the real time.
REAL = datetime.now(timezone.utc).replace(microsecond=0)
T0 = datetime(2025, 9, 3, 12, 0, tzinfo=TOKYO)


# ------------------------------------------------------------------------------------------- helpers

def resources(db_url, store, now: datetime) -> dict:
    return {"database": Database(url=db_url),
            "object_store": ObjectStoreResource(backend="local", root=str(store.root)),
            "clock": Clock(frozen_at=now.isoformat())}


def run(job, op: str, config: dict, res: dict, instance=None):
    return job.execute_in_process(run_config={"ops": {op: {"config": config}}}, resources=res, instance=instance,
                                  raise_on_error=False)


def failure_message(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def values(evaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


@pytest.fixture
def team(engine):
    """hana admin, ken ops, aki support, rio read_only."""
    return inserts.add_team(engine, {"ken": "ops", "aki": "support", "rio": "read_only"}, now=REAL)


def processed_upload(engine, store, user: str, received: datetime, *, plan: str = "standard",
                     derived_rows: bool = True) -> str:
    """An upload as the pipeline leaves it (13 objects, their rows, derived rows), its manifest dated its arrival."""
    with engine.begin() as conn:
        job = upload(conn, store, user, plan=plan, received=received, derived_rows=derived_rows)
    set_mtime(store, f"uploads/{job}/manifest.json", received)
    return job


def consenting_user(engine, at: datetime) -> str:
    user = str(uuid.uuid4())
    with engine.begin() as conn:
        consent.set_consent(conn, user, qa=True, training=True, source="upload_manifest", actor="test", now=at)
    return user


def live_items(engine, job: str) -> int:
    return rows(engine, "SELECT count(*) FROM vault_items WHERE job_id = CAST(:j AS uuid) AND deleted_at IS NULL",
                j=job)[0][0]


# ------------------------------------------------------------------------------------------- schedule

def test_the_retention_schedule_fires_at_0330_tokyo_for_the_day_that_ended():
    assert retention_purge_schedule.cron_schedule == "30 3 * * *"
    assert retention_purge_schedule.execution_timezone == "Asia/Tokyo"
    assert retention_purge_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    start = datetime(2025, 9, 7, 12, 0, tzinfo=timezone.utc)
    fires = list(islice(schedule_execution_time_iterator(
        start.timestamp(), retention_purge_schedule.cron_schedule, retention_purge_schedule.execution_timezone), 3))
    assert [f.astimezone(TOKYO) for f in fires] == [datetime(2025, 9, d, 3, 30, tzinfo=TOKYO) for d in (8, 9, 10)]
    # The first fire is 18:30 UTC on the 7th: the Tokyo day that ended is the 7th, not the UTC day before.
    assert fires[0].astimezone(timezone.utc) == datetime(2025, 9, 7, 18, 30, tzinfo=timezone.utc)

    # No instance (see test_training_set.py); the code location resolves the partitioned request.
    repository = dg.Definitions(
        assets=[retention_purge], jobs=[retention_purge_job], schedules=[retention_purge_schedule],
        resources={"database": Database(url="postgresql+psycopg://unused/none"),
                   "object_store": ObjectStoreResource(), "clock": Clock()}).get_repository_def()
    requests = [retention_purge_schedule.evaluate_tick(dg.build_schedule_context(
        scheduled_execution_time=fire, repository_def=repository)).run_requests for fire in fires]
    assert [(r.partition_key, r.run_key) for [r] in requests] == [
        (f"2025-09-0{d}", f"retention:2025-09-0{d}") for d in (7, 8, 9)]
    # the scheduled run also catches up what an earlier day left (a hold released since); a backfill does not
    assert all(r.run_config == {"ops": {"retention_purge": {"config": {"catch_up": True}}}} for [r] in requests)
    assert retention_purge_job.name == "retention_purge_job"


# ---------------------------------------------------------------------------------- consent events sensor

def consent_sensor_tick(store, instance, cursor=None):
    return consent_changes_sensor(dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"object_store": ObjectStoreResource(backend="local", root=str(store.root))}))


def event(store, user: str, at: datetime, document: dict | bytes, *, key_user: str | None = None) -> str:
    key = f"consent/{key_user or user}/{at.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    store.put_bytes(key, document if isinstance(document, bytes) else json.dumps(document).encode())
    return key


def test_consent_events_become_one_run_bad_ones_are_refused_and_nothing_is_lost(engine, db_url, local_store):
    quitting, joining, victim = consenting_user(engine, T0 - timedelta(days=5)), str(uuid.uuid4()), str(uuid.uuid4())
    withdrawal = event(local_store, quitting, T0, {"user_id": quitting, "at": T0.isoformat(), "training": False})
    opt_in = event(local_store, joining, T0 + timedelta(minutes=1),
                   {"user_id": joining, "at": (T0 + timedelta(minutes=1)).isoformat(), "qa": True, "training": True})
    garbage = event(local_store, victim, T0, b"\x00\xff{not json")
    # Someone else's statement filed under the victim's key: it must not change anyone's consent.
    forged = event(local_store, quitting, T0 + timedelta(minutes=2), {
        "user_id": quitting, "at": (T0 + timedelta(minutes=2)).isoformat(), "training": True}, key_user=victim)
    same_instant = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for key in (withdrawal, opt_in, garbage, forged):
        set_mtime(local_store, key, same_instant)

    with dg.instance_for_test() as instance:
        first = consent_sensor_tick(local_store, instance)
        [request] = first.run_requests
        keys = request.run_config["ops"]["apply_consent_changes"]["config"]["keys"]
        assert sorted(keys) == sorted([withdrawal, opt_in, garbage, forged])
        assert request.tags["mixai/consent_events"] == "4"
        assert json.loads(first.cursor)["at"] == same_instant.isoformat()
        skip = consent_sensor_tick(local_store, instance, first.cursor)
        assert isinstance(skip, dg.SkipReason) and skip.skip_message == "no new consent events"

        applied = consent_changes_job.execute_in_process(
            run_config=request.run_config, resources=resources(db_url, local_store, T0 + timedelta(minutes=5)),
            instance=instance)
        assert applied.success  # bad events do not fail the run: the good ones apply
        output = applied.output_for_node("apply_consent_changes")
        assert output["outcomes"] == {withdrawal: "applied", opt_in: "applied"}
        assert set(output["refused"]) == {garbage, forged}
        assert "not UTF-8 text" in output["refused"][garbage]
        assert f"does not match the key's user {victim}" in output["refused"][forged]
        assert all(local_store.exists(k) for k in (withdrawal, opt_in, garbage, forged))  # nothing removed
        consents = {str(u): (qa, training) for u, qa, training in rows(engine, "SELECT user_id, qa, training "
                                                                                "FROM ml_consent")}
        assert consents == {quitting: (True, False), joining: (True, True)}
        assert rows(engine, "SELECT user_id::text, status FROM deletion_requests") == [(quitting, "pending")]
        applied_keys = [k for [k] in rows(engine, "SELECT object_key FROM consent_events")]
        assert sorted(applied_keys) == sorted([withdrawal, opt_in])
        audit = rows(engine, "SELECT action, target_id FROM audit_logs WHERE actor = 'dagster:consent_changes' "
                             "ORDER BY id")
        assert audit == [("consent.withdrawn", quitting), ("consent.set", joining)]

        # A run requested twice (a retry) changes nothing and audits nothing more.
        again = consent_changes_job.execute_in_process(
            run_config=request.run_config, resources=resources(db_url, local_store, T0 + timedelta(minutes=9)),
            instance=instance)
        assert again.output_for_node("apply_consent_changes")["outcomes"] == {withdrawal: "duplicate",
                                                                             opt_in: "duplicate"}
        assert len(rows(engine, "SELECT id FROM audit_logs WHERE actor = 'dagster:consent_changes'")) == 2

        # An event written in the same instant as the last one seen is still picked up, alone.
        late = event(local_store, joining, T0 + timedelta(minutes=3),
                     {"user_id": joining, "at": (T0 + timedelta(minutes=3)).isoformat(), "qa": False})
        set_mtime(local_store, late, same_instant)
        third = consent_sensor_tick(local_store, instance, first.cursor)
        [request3] = third.run_requests
        assert request3.run_config["ops"]["apply_consent_changes"]["config"]["keys"] == [late]
        assert request3.run_key != request.run_key
        assert isinstance(consent_sensor_tick(local_store, instance, third.cursor), dg.SkipReason)


# -------------------------------------------------------------------------------- deletion requests sensor

def deletion_tick(db_url, local_store, instance, now: datetime):
    res = resources(db_url, local_store, now)
    return deletion_requests_sensor(dg.build_sensor_context(
        instance=instance, resources={"database": res["database"], "clock": res["clock"]}))


def test_the_deletion_sensor_requests_a_purge_while_a_withdrawal_is_pending(engine, db_url, local_store):
    user = consenting_user(engine, REAL - timedelta(days=5))
    job = processed_upload(engine, local_store, user, REAL - timedelta(days=2))
    with dg.instance_for_test() as instance:
        idle = deletion_tick(db_url, local_store, instance, REAL)
        assert isinstance(idle, dg.SkipReason) and idle.skip_message == "no deletion due"

        with engine.begin() as conn:
            consent.withdraw_training(conn, user, actor="test", now=REAL - timedelta(hours=1))
        request = deletion_tick(db_url, local_store, instance, REAL)
        assert request.run_config == {"ops": {"purge_withdrawn_users": {"config": {"user_ids": [user]}}}}
        assert request.run_key.startswith(f"purge:{REAL:%Y%m%dT%H}:") and request.tags["mixai/users"] == "1"

        # A purge run still going: no second one.
        going = instance.create_run_for_job(user_data_purge_job, run_config=request.run_config,
                                            status=dg.DagsterRunStatus.STARTED)
        busy = deletion_tick(db_url, local_store, instance, REAL)
        assert isinstance(busy, dg.SkipReason) and "still going" in busy.skip_message
        instance.delete_run(going.run_id)

        purged = user_data_purge_job.execute_in_process(
            run_config=request.run_config, resources=resources(db_url, local_store, REAL), instance=instance)
        assert purged.success
        [report] = purged.output_for_node("purge_withdrawn_users")
        assert report["status"] == "completed" and report["objects_deleted"] == 13
        assert report["withdrawal_to_deletion_s"] == {str(report_id): 3600.0 for [report_id] in
                                                      rows(engine, "SELECT id FROM deletion_requests")}
        assert live_items(engine, job) == 0 and not list(local_store.list(f"uploads/{job}/"))
        done = deletion_tick(db_url, local_store, instance, REAL)
        assert isinstance(done, dg.SkipReason) and done.skip_message == "no deletion due"


# ------------------------------------------------------------------------------------------ operator jobs

def test_set_consent_job_checks_the_operators_role(team, db_url, local_store):
    engine = team
    user = consenting_user(engine, REAL - timedelta(days=1))
    res = resources(db_url, local_store, REAL)
    for actor, refusal in (("rio", "rio (read_only) may not change a user's consent: needs admin or ops or support"),
                           ("mallory", "'mallory' is not a registered operator and may not change a user's consent")):
        refused = run(set_consent_job, "set_consent", {"user_id": user, "training": False, "actor": actor}, res)
        assert not refused.success and refusal in failure_message(refused)
    assert rows(engine, "SELECT training FROM ml_consent") == [(True,)]
    assert rows(engine, "SELECT count(*) FROM deletion_requests") == [(0,)]

    done = run(set_consent_job, "set_consent",
               {"user_id": user, "training": False, "actor": "aki", "reason": "user asked by mail"}, res)
    assert done.success and done.output_for_node("set_consent") == {
        "user_id": user, "outcome": "training withdrawn (deletion request 1: the user's data is deleted within 24 h)"}
    assert rows(engine, "SELECT training, source FROM ml_consent") == [(False, "operator")]
    assert rows(engine, "SELECT status, note, requested_by FROM deletion_requests") == [
        ("pending", "user asked by mail", "aki")]
    assert rows(engine, "SELECT actor, action FROM audit_logs WHERE target_id = :u ORDER BY id", u=user)[-1] == (
        "aki", "consent.withdrawn")


def test_approvals_need_a_second_operator(team, db_url, local_store):
    engine = team
    user = consenting_user(engine, REAL - timedelta(days=1))
    job = processed_upload(engine, local_store, user, REAL - timedelta(hours=3), derived_rows=False)
    res = resources(db_url, local_store, REAL)
    target = {"user_id": user, "hold": True}
    support = run(request_approval_job, "request_approval",
                  {"kind": "legal_hold", "target": target, "reason": "court order", "actor": "aki"}, res)
    assert not support.success
    assert "aki (support) may not request a legal hold change: needs admin" in failure_message(support)

    asked = run(request_approval_job, "request_approval",
                {"kind": "legal_hold", "target": target, "reason": "court order", "actor": "hana"}, res)
    request_id = asked.output_for_node("request_approval")["request_id"]
    own = run(decide_approval_job, "decide_approval", {"request_id": request_id, "approve": True, "actor": "hana"}, res)
    assert not own.success and (f"hana requested approval {request_id} and may not approve it: a second, "
                                "different operator must (4-eyes)") in failure_message(own)
    assert rows(engine, "SELECT status, decided_by FROM approval_requests") == [("pending", None)]
    assert rows(engine, "SELECT count(*) FROM vault_items WHERE legal_hold") == [(0,)]
    assert rows(engine, "SELECT actor, action FROM audit_logs WHERE action = 'approval.decision_refused'") == [
        ("hana", "approval.decision_refused")]

    approved = run(decide_approval_job, "decide_approval",
                   {"request_id": request_id, "approve": True, "actor": "ken"}, res)
    assert approved.success and approved.output_for_node("decide_approval") == {
        "request_id": request_id, "status": "approved", "items_changed": 13, "items_held": 13}
    assert rows(engine, "SELECT status, decided_by FROM approval_requests") == [("approved", "ken")]
    assert rows(engine, "SELECT count(*) FROM vault_items WHERE legal_hold AND job_id = CAST(:j AS uuid)",
                j=job) == [(13,)]


# ------------------------------------------------------------------------------------ retention backfill

def test_a_backfill_of_30_past_days_deletes_exactly_what_the_policy_says(team, db_url, local_store):
    engine = team
    now = datetime(2025, 10, 1, 3, 30, tzinfo=TOKYO)  # the morning after the last backfilled day
    days = [now.date() - timedelta(days=n) for n in range(30, 0, -1)]  # 2025-09-01 … 2025-09-30
    jobs = []
    for n, received_day in enumerate(date(2025, 7, 20) + timedelta(days=3 * k) for k in range(22)):
        received = datetime.combine(received_day, time(1 + n % 23, 17), tzinfo=TOKYO)
        user = consenting_user(engine, received - timedelta(days=1))
        jobs.append(processed_upload(engine, local_store, user, received, plan=("standard", "freetrial")[n % 2],
                                     derived_rows=False))
    # One expired on the 1st of October before 03:30: past its time, but not on a backfilled day.
    early_morning = datetime(2025, 9, 24, 1, 0, tzinfo=TOKYO)
    jobs.append(processed_upload(engine, local_store, consenting_user(engine, early_morning), early_morning,
                                 derived_rows=False))
    # A hold on one upload (received 2025-08-25, standard): everything of it expires inside the backfill.
    request = access.request_approval(engine, "legal_hold", {"job_id": jobs[12], "hold": True}, "audit", actor="hana",
                                      now=datetime(2025, 8, 26, 9, tzinfo=TOKYO))
    access.approve(engine, request.id, approver="ken", now=datetime(2025, 8, 26, 10, tzinfo=TOKYO))
    before = {path: (expires_at, held) for path, expires_at, held in
              rows(engine, "SELECT path, expires_at, legal_hold FROM vault_items")}
    # Two rejected uploads (standard: the stems' 7 days): one expires inside the backfill, one after it.
    rejected = {}
    for received_day in (date(2025, 9, 10), date(2025, 9, 28)):
        received = datetime.combine(received_day, time(9), tzinfo=TOKYO)
        with engine.begin() as conn:
            rejected[received_day] = rejected_upload(conn, local_store, received=received, user=str(uuid.uuid4()),
                                                     plan="standard", files={"inst.wav": b"bad", "manifest.json": b""})
        for name in ("inst.wav", "manifest.json"):
            set_mtime(local_store, f"uploads/{rejected[received_day]}/{name}", received)

    reports = {}
    for day in days:
        result = dg.materialize([retention_purge], partition_key=day.isoformat(), raise_on_error=False,
                                resources=resources(db_url, local_store, now))
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == RETENTION_CHECK and check.passed, values(check)
        reports[day] = values(result.asset_materializations_for_node("retention_purge")[0])

    def in_backfill(expires_at: datetime) -> bool:
        return days[0] <= expires_at.astimezone(TOKYO).date() <= days[-1] and expires_at <= now

    expected = {path for path, (expires_at, held) in before.items() if in_backfill(expires_at) and not held}
    deleted = {path for [path] in rows(engine, "SELECT path FROM vault_items WHERE deleted_at IS NOT NULL")}
    assert deleted == expected and len(expected) > 50
    assert all(not local_store.exists(p) for p in deleted)
    assert all(local_store.exists(p) for p in set(before) - deleted)
    assert sum(r["deleted"] for r in reports.values()) == len(expected)
    held_expired = sum(1 for expires_at, held in before.values() if in_backfill(expires_at) and held)
    assert held_expired == 13 and sum(r["skipped_on_hold"] for r in reports.values()) == held_expired
    # Left for their own partitions: expired before the backfill's first day, or on the 1st of October.
    outside = {p for p, (expires_at, held) in before.items() if expires_at <= now and not in_backfill(expires_at)}
    assert outside & {p for p, (e, _) in before.items() if e.astimezone(TOKYO).date() == now.date()}
    assert outside & {p for p, (e, _) in before.items() if e.astimezone(TOKYO).date() < days[0]}
    assert not outside & deleted
    for path, deleted_at in rows(engine, "SELECT path, deleted_at FROM vault_items WHERE deleted_at IS NOT NULL"):
        assert deleted_at == now and before[path][0] <= now
    assert sum(r["rejected_uploads_purged"] for r in reports.values()) == 1
    assert not list(local_store.list(f"uploads/{rejected[date(2025, 9, 10)]}/"))
    assert len(list(local_store.list(f"uploads/{rejected[date(2025, 9, 28)]}/"))) == 2

    # The hold is released: the next scheduled run (catch_up) purges what expired while it was held, with
    # everything else left over from before; still nothing that expires later than now.
    release = access.request_approval(engine, "legal_hold", {"job_id": jobs[12], "hold": False}, "closed",
                                      actor="hana", now=now)
    access.approve(engine, release.id, approver="ken", now=now)
    caught_up = dg.materialize([retention_purge], partition_key=now.date().isoformat(), resources=resources(
        db_url, local_store, now), run_config={"ops": {"retention_purge": {"config": {"catch_up": True}}}})
    assert caught_up.success
    deleted = {path for [path] in rows(engine, "SELECT path FROM vault_items WHERE deleted_at IS NOT NULL")}
    assert deleted == {p for p, (expires_at, _) in before.items() if expires_at <= now}


# ------------------------------------------------------------------------------------------------ checks

def check_consent(db_url, store, day: str, now: datetime):
    result = dg.materialize([labels, consent_check], partition_key=day, raise_on_error=False,
                            resources=resources(db_url, store, now))
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.partition == day
    return result, evaluation


def test_consent_check_fails_once_a_withdrawn_users_data_is_24_hours_old_and_passes_after_the_purge(
        engine, db_url, local_store):
    received, withdrawn = REAL - timedelta(days=3), REAL - timedelta(hours=25)
    day = received.astimezone(TOKYO).date().isoformat()
    user = consenting_user(engine, received - timedelta(days=1))
    job = processed_upload(engine, local_store, user, received)
    kept = processed_upload(engine, local_store, consenting_user(engine, received - timedelta(days=1)), received)
    with engine.begin() as conn:
        consent.withdraw_training(conn, user, actor="test", now=withdrawn)

    result, within = check_consent(db_url, local_store, day, withdrawn + timedelta(hours=23))
    assert result.success and within.passed and values(within)["eligible_rows"] == 3  # the other user's job only

    result, late = check_consent(db_url, local_store, day, REAL)
    assert not late.passed and not result.success  # blocking: what reads labels must not run
    assert values(late)["overdue_jobs"] == 1 and values(late)["violations"] == 0
    [example] = values(late)["overdue_examples"]
    assert example["job_id"] == job and example["user_id"] == user and example["live_objects"] == "13"

    purged = user_data_purge_job.execute_in_process(resources=resources(db_url, local_store, REAL))
    assert purged.success
    assert purged.output_for_node("purge_withdrawn_users")[0]["status"] == "completed"
    result, after = check_consent(db_url, local_store, day, REAL)
    assert result.success and after.passed and values(after)["overdue_jobs"] == 0
    assert live_items(engine, job) == 0 and live_items(engine, kept) == 13


def test_orphan_sweep_finds_objects_without_rows_and_rows_without_objects(engine, db_url, local_store):
    job = processed_upload(engine, local_store, consenting_user(engine, REAL), REAL - timedelta(days=1))

    def sweep():
        result = dg.materialize([retention_purge, orphan_sweep], selection=dg.AssetSelection.checks(orphan_sweep),
                                resources=resources(db_url, local_store, REAL), raise_on_error=False)
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    assert sweep().passed  # the manifest is not a vault item and is not reported
    stray = f"derived/{uuid.uuid4()}/mix.wav"
    local_store.put_bytes(stray, b"left behind by a crashed stage")
    local_store.delete(f"previews/{job}/mix.m4a")
    found = sweep()
    assert not found.passed
    assert {k: values(found)[k] for k in ("objects_without_row", "rows_without_object", "in_purge")} == {
        "objects_without_row": 1, "rows_without_object": 1, "in_purge": 0}
    assert values(found)["examples"] == [stray, f"previews/{job}/mix.m4a"]


# ----------------------------------------------------------------------------------------------- the CLI

def test_the_cli_refuses_consent_and_approvals_without_a_role_and_works_with_one(engine, db_url, local_store,
                                                                                tmp_path, monkeypatch, capsys):
    from mixai_pipeline.cli import main

    # setenv (not delenv) so that what prepare_environment exports is undone after the test.
    monkeypatch.setenv(settings.ENV_DATABASE_URL, db_url)
    monkeypatch.setenv(settings.ENV_DAGSTER_PG_URL, "")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv(settings.ENV_MLFLOW_TRACKING_URI, f"sqlite:///{tmp_path / 'mlflow.db'}")
    user = str(uuid.uuid4())
    job = processed_upload(engine, local_store, user, REAL - timedelta(hours=2), derived_rows=False)

    def mixai(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = mixai("consent", "grant", user, "--actor", "aki")
    assert code == 2 and "'aki' is not a registered operator and may not change a user's consent" in err
    assert rows(engine, "SELECT count(*) FROM ml_consent") == [(0,)]
    assert mixai("operators", "add", "hana", "admin", "--by", "install")[0] == 0
    for name, role in (("aki", "support"), ("ken", "ops"), ("rio", "read_only")):
        assert mixai("operators", "add", name, role, "--by", "hana") == (0, f"{name}: {role}\n", "")

    assert mixai("consent", "grant", user, "--actor", "aki")[:2] == (0, f"user {user}: changed training\n")
    code, _, err = mixai("consent", "withdraw", user, "--actor", "rio")
    assert code == 2 and "rio (read_only) may not change a user's consent: needs admin or ops or support" in err
    code, out, _ = mixai("consent", "withdraw", user, "--actor", "aki", "--reason", "phoned support")
    assert code == 0 and "training withdrawn (deletion request" in out
    assert rows(engine, "SELECT training FROM ml_consent") == [(False,)]
    assert rows(engine, "SELECT status, requested_by, note FROM deletion_requests") == [
        ("pending", "aki", "phoned support")]
    assert rows(engine, "SELECT reason FROM ml_exclusions WHERE user_id = CAST(:u AS uuid)", u=user) == [
        ("withdrawal",)]

    code, out, _ = mixai("legal-hold", "request", "--job", job, "--reason", "litigation", "--actor", "hana")
    [request_id] = [r for [r] in rows(engine, "SELECT id FROM approval_requests")]
    assert code == 0 and f"mixai approvals approve {request_id}" in out
    for actor, refusal in (("nobody", "'nobody' is not a registered operator"),
                           ("hana", f"hana requested approval {request_id} and may not approve it"),
                           ("rio", "rio (read_only) may not approve or reject a legal hold change: needs admin or ops"),
                           ("aki", "aki (support) may not approve or reject a legal hold change")):
        code, _, err = mixai("approvals", "approve", str(request_id), "--actor", actor)
        assert code == 2 and refusal in err, err
    assert rows(engine, "SELECT status FROM approval_requests") == [("pending",)]
    code, out, _ = mixai("approvals", "approve", str(request_id), "--actor", "ken")
    assert code == 0 and out == f"request {request_id}: approved; 13 item(s) changed, 13 held\n"
    assert rows(engine, "SELECT count(*) FROM vault_items WHERE legal_hold") == [(13,)]
    assert [a for [a] in rows(engine, "SELECT action FROM audit_logs WHERE action LIKE 'approval.%' ORDER BY id")] == [
        "approval.requested", *["approval.decision_refused"] * 4, "approval.approved"]


# ------------------------------------------------------------------------------ found while writing these

def test_two_first_consent_statements_racing_create_the_row_once(engine):
    """Two uploads of a new user are registered in parallel: only the one that created the consent row may say
    so (``before`` None, and one ``consent.set`` entry for the creation)."""
    user = str(uuid.uuid4())
    first = engine.connect()
    first.begin()
    consent.set_consent(first, user, qa=True, training=True, source="upload_manifest", actor="test", now=T0)
    seconds: dict = {}

    def second_upload() -> None:
        with engine.begin() as conn:  # waits on the first one's uncommitted row
            seconds["change"] = consent.set_consent(conn, user, qa=True, training=True, source="upload_manifest",
                                                    actor="test", now=T0 + timedelta(minutes=20))

    thread = threading.Thread(target=second_upload)
    thread.start()
    clock_time.sleep(0.5)
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert seconds["change"].before is not None and not seconds["change"].audited
    assert rows(engine, "SELECT count(*) FROM audit_logs WHERE action = 'consent.set'") == [(1,)]
