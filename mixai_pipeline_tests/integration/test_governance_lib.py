"""Governance library on a real PostgreSQL and real object stores (local directory and S3 via moto_server):
consent and withdrawal, the withdrawn user's purge, retention purges, crashes midway, backfills, consent
events and orphans. The clock is injected everywhere (``now``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.governance import consent, purge, retention
from mixai_pipeline.lib.governance.consent import InvalidConsentEvent
from mixai_pipeline.lib.pipeline import records
from mixai_pipeline.lib.pipeline.stages import StoredObject
from mixai_pipeline.lib.storage.object_store import ObjectInfo, ObjectStore
from mixai_pipeline.lib.training import dataset
from mixai_pipeline_tests.unit.test_training_dataset import add_job, add_user

# Object stores stamp real modification times; the purge of unregistered objects compares them with the
# injected clock, so the withdrawal scenarios run on a clock anchored at the real time.
REAL = datetime.now(timezone.utc).replace(microsecond=0)
T = datetime(2025, 9, 1, 12, 0, tzinfo=timezone.utc)
ACTOR = "test"


# ------------------------------------------------------------------------------------------- helpers

class SimulatedCrash(BaseException):
    """A kill: not an Exception, so nothing on the way catches it as an item error."""


class CrashAfterDeletes(ObjectStore):
    """A real store that dies after ``deletes`` successful deletes (everything else passes through)."""

    def __init__(self, inner: ObjectStore, deletes: int):
        self.inner, self.left, self.lock = inner, deletes, threading.Lock()

    def delete(self, key: str) -> None:
        with self.lock:
            if self.left <= 0:
                raise SimulatedCrash(f"killed before deleting {key}")
            self.left -= 1
        self.inner.delete(key)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return self.inner.put_bytes(key, data, content_type)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        return self.inner.put_file(key, path, content_type)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.inner.get_bytes(key, max_bytes)

    def download(self, key: str, dest: Path) -> Path:
        return self.inner.download(key, dest)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


def new_job(conn, user: str | None, *, plan: str | None = "standard", received: datetime,
            status: str = "done") -> str:
    """A jobs row; a failed one failed in masters, a rejected one had a corrupt instrumental."""
    job = str(uuid.uuid4())
    failed, rejected = status == "failed", status == "rejected"
    conn.execute(text(
        """INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at,
                             consent_qa, consent_training, failed_stage, failure_reason, reject_code, reject_reason)
           VALUES (:j, :prefix, :u, :plan, :status, :day, :received, true, true, :stage, :reason,
                   :reject_code, :reject_reason)"""),
        {"j": job, "prefix": f"uploads/{job}/", "u": user, "plan": plan, "status": status,
         "day": received.astimezone(retention.BUSINESS_TZ).date(), "received": received,
         "stage": "masters" if failed else None, "reason": "broken" if failed else None,
         "reject_code": "audio_corrupt" if rejected else None,
         "reject_reason": "inst.wav is corrupt" if rejected else None})
    return job


def job_objects(job: str) -> list[StoredObject]:
    """What ingestion and the audio stages store per upload (lib/pipeline/stages.py's layout)."""
    objects = [StoredObject("inst", f"uploads/{job}/inst.wav", None, None),
               StoredObject("vocal", f"uploads/{job}/vocal.wav", None, None),
               StoredObject("mix", f"derived/{job}/mix.wav", None, None),
               StoredObject("master", f"derived/{job}/master.wav", None, None)]
    for clip in ("inst", "vocal", "mix"):
        base = f"previews/{job}/{clip}"
        objects += [StoredObject("preview", f"{base}.m4a", clip, None),
                    StoredObject("waveform", f"{base}.waveform.png", clip, None),
                    StoredObject("waveform", f"{base}.waveform.json", clip, None)]
    return objects


def upload(conn, store: ObjectStore, user: str, *, plan: str = "standard", received: datetime,
           derived_rows: bool = True) -> str:
    """A processed upload: its 13 objects and their rows written by the pipeline's own record functions
    (so expires_at is the production rule), plus the manifest and the derived rows."""
    job = new_job(conn, user, plan=plan, received=received)
    store.put_bytes(f"uploads/{job}/manifest.json", json.dumps({"job_id": job, "user_id": user}).encode())
    objects = job_objects(job)
    for obj in objects:
        store.put_bytes(obj.path, f"audio of {obj.path}".encode())
    records.record_objects(conn, job, tuple(objects), store)
    if derived_rows:
        records.record_features(conn, job, {"feature_version": "v1", "clips": {
            clip: {"vec": [0.5] * len(DIM_NAMES), "stats": {}} for clip in ("inst", "vocal", "mix")}}, DIM_NAMES)
        records.record_alignment(conn, job, {"offset_ms": 10.0, "method": "gcc_phat", "confidence": 0.9})
        records.record_mix(conn, job, {"preset": "wide_pop", "preset_source": "manifest"}, f"derived/{job}/mix.wav")
        records.record_master(conn, job, {"params": [1.0, -1.0, 2.0, -14.0], "params_source": "rules",
                                          "report": {}}, f"derived/{job}/master.wav")
        records.record_label(conn, job, "master_reg", y_reg=[1.0, -1.0, 2.0, -14.0])
        records.record_label(conn, job, "preset_cls", y_cls="wide_pop")
        records.record_label(conn, job, "align_conf", y_cls="ok")
    return job


def consent_user(conn, *, training: bool = True, at: datetime = T) -> str:
    user = str(uuid.uuid4())
    consent.set_consent(conn, user, qa=True, training=training, source="test", actor=ACTOR, now=at)
    return user


def hold(engine, where: str, **params) -> None:
    """Legal hold set the way access.py ends up setting it (tests own no approval flow here)."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE vault_items SET legal_hold = true WHERE {where}"), params)


def item_states(engine, where: str = "true", **params) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"""SELECT path, CASE WHEN deleted_at IS NOT NULL THEN 'deleted'
                                  WHEN purge_started_at IS NOT NULL THEN 'in_purge' ELSE 'live' END AS state
                FROM vault_items WHERE {where}"""), params).all()
    return {r.path: r.state for r in rows}


def audits(engine, action: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT actor, action, target_type, target_id, details FROM audit_logs WHERE action = :a ORDER BY id"),
            {"a": action}).mappings()]


def audited_item_ids(engine) -> set[int]:
    return {item["id"] for entry in audits(engine, "vault_item.deleted") for item in entry["details"]["items"]}


def deleted_ids(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT id FROM vault_items WHERE deleted_at IS NOT NULL")).scalars())


def assert_consistent(engine, store: ObjectStore, jobs: list[str]) -> retention.OrphanReport:
    """No object without a row, no live row without its object, for the jobs' prefixes."""
    prefixes = [p.format(job=j) for j in jobs for p in purge.JOB_PREFIXES]
    with engine.connect() as conn:
        report = retention.orphans(conn, store, prefixes)
    assert report.objects_without_row == [] and report.rows_without_object == [], report
    return report


# ------------------------------------------------------------------------------------------ consent

def test_set_consent_keeps_dates_audits_and_ignores_stale_statements(engine):
    user = str(uuid.uuid4())
    with engine.begin() as conn:
        first = consent.set_consent(conn, user, qa=True, training=True, source="cli", actor="aki", now=T)
    assert first.before is None and first.audited and first.withdrawal is None
    with engine.connect() as conn:
        row = consent.consent_of(conn, user)
    assert row["qa"] and row["training"] and row["qa_granted_at"] == row["training_granted_at"] == T
    assert row["training_withdrawn_at"] is None and row["source"] == "cli"

    # qa only: training untouched, its dates too
    with engine.begin() as conn:
        change = consent.set_consent(conn, user, qa=False, source="cli", actor="aki", now=T + timedelta(hours=1))
    assert change.changed == ("qa",) and change.withdrawal is None
    with engine.connect() as conn:
        row = consent.consent_of(conn, user)
    assert (row["qa"], row["qa_withdrawn_at"], row["training"], row["training_updated_at"]) == (
        False, T + timedelta(hours=1), True, T)

    # a statement older than the recorded one changes nothing and writes no audit
    with engine.begin() as conn:
        stale = consent.set_consent(conn, user, qa=True, source="cli", actor="aki", now=T + timedelta(minutes=30))
    assert stale.stale == ("qa",) and stale.changed == () and not stale.audited
    with engine.connect() as conn:
        assert consent.consent_of(conn, user)["qa"] is False

    # the same value restated: no change, no audit
    with engine.begin() as conn:
        same = consent.set_consent(conn, user, training=True, source="cli", actor="aki", now=T + timedelta(hours=2))
    assert same.changed == () and not same.audited

    entries = [e for e in audits(engine, "consent.set") if e["target_id"] == user]
    assert len(entries) == 2
    assert entries[0]["details"]["before"] is None and entries[0]["details"]["after"] == {"qa": True, "training": True}
    assert entries[1]["details"]["before"] == {"qa": True, "training": True}
    assert entries[1]["details"]["changed"] == ["qa"] and entries[1]["actor"] == "aki"

    with engine.begin() as conn, pytest.raises(ValueError, match="needs qa or training"):
        consent.set_consent(conn, user, source="cli", actor="aki", now=T)
    with engine.begin() as conn, pytest.raises(ValueError, match="timezone-aware"):
        consent.set_consent(conn, user, qa=True, source="cli", actor="aki", now=datetime(2025, 9, 1))


def test_withdrawal_excludes_at_once_records_a_request_and_regrant_lifts_only_its_exclusion(engine):
    with engine.begin() as conn:
        user = add_user(conn, training=True, granted=T - timedelta(days=30))
        old_job = add_job(conn, user, received=T - timedelta(days=10))
    with engine.connect() as conn:
        assert set(dataset.load_training_set(conn)["job_id"]) == {old_job}

    withdrawn_at = T
    with engine.begin() as conn:
        withdrawal = consent.withdraw_training(conn, user, actor="app", now=withdrawn_at, reason="user request")
        # in the same transaction, before any purge: the user is out
        assert dataset.load_training_set(conn).empty
    assert withdrawal.new_request and withdrawal.requested_at == withdrawn_at
    with engine.connect() as conn:
        row = consent.consent_of(conn, user)
        exclusion = conn.execute(text("SELECT user_id::text, job_id, reason, note, created_by FROM ml_exclusions "
                                      "WHERE id = :id"), {"id": withdrawal.exclusion_id}).one()
        request = conn.execute(text("SELECT * FROM deletion_requests WHERE id = :id"),
                               {"id": withdrawal.deletion_request_id}).mappings().one()
        assert dataset.load_training_set(conn).empty
    assert row["training"] is False and row["training_withdrawn_at"] == withdrawn_at
    assert tuple(exclusion) == (user, None, "withdrawal", "user request", "app")
    assert request["status"] == "pending" and request["requested_at"] == withdrawn_at
    assert request["due_at"] == withdrawn_at + timedelta(hours=24) and request["completed_at"] is None
    (entry,) = audits(engine, "consent.withdrawn")
    assert entry["details"]["deletion_request_id"] == withdrawal.deletion_request_id
    assert entry["details"]["exclusion_id"] == withdrawal.exclusion_id

    # withdrawing again while the request is open: the same exclusion and request
    with engine.begin() as conn:
        again = consent.withdraw_training(conn, user, actor="app", now=T + timedelta(minutes=5))
    assert (again.exclusion_id, again.deletion_request_id, again.new_request) == (
        withdrawal.exclusion_id, withdrawal.deletion_request_id, False)

    # granting again lifts the withdrawal exclusion (a manual one stays); uploads from before the
    # withdrawal stay out (the dataset's rule), later ones come back
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO ml_exclusions (user_id, reason, created_by) VALUES (:u, 'manual', 'ops')"),
                     {"u": user})
    with engine.begin() as conn:
        grant = consent.set_consent(conn, user, training=True, source="cli", actor="aki", now=T + timedelta(days=1))
        new_job = add_job(conn, user, received=T + timedelta(days=2))
    assert grant.exclusions_lifted == (withdrawal.exclusion_id,)
    with engine.connect() as conn:
        reasons = conn.execute(text("SELECT reason FROM ml_exclusions WHERE user_id = :u"), {"u": user}).scalars()
        assert list(reasons) == ["manual"]
        assert dataset.load_training_set(conn).empty  # the manual exclusion still holds
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM ml_exclusions WHERE user_id = :u"), {"u": user})
    with engine.connect() as conn:
        assert set(dataset.load_training_set(conn)["job_id"]) == {new_job}
    lifted = audits(engine, "consent.set")[-1]["details"]["exclusions_lifted"]
    assert [e["id"] for e in lifted] == [withdrawal.exclusion_id]

    # a withdrawal after the re-grant is a new request (it covers the uploads received in between)
    with engine.begin() as conn:
        second = consent.set_consent(conn, user, training=False, source="cli", actor="aki", now=T + timedelta(days=3))
    assert second.withdrawal is not None and second.withdrawal.new_request
    assert second.withdrawal.deletion_request_id != withdrawal.deletion_request_id


def test_withdrawal_is_atomic_with_the_callers_transaction(engine):
    with engine.begin() as conn:
        user = add_user(conn, training=True, granted=T - timedelta(days=30))
        add_job(conn, user, received=T - timedelta(days=1))

    class Abort(Exception):
        pass

    with pytest.raises(Abort), engine.begin() as conn:
        consent.withdraw_training(conn, user, actor="app", now=T)
        raise Abort
    with engine.connect() as conn:
        assert consent.consent_of(conn, user)["training"] is True
        assert conn.execute(text("SELECT count(*) FROM ml_exclusions")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM deletion_requests")).scalar() == 0
        assert len(dataset.load_training_set(conn)) == 3
    assert audits(engine, "consent.withdrawn") == []


# ------------------------------------------------------------------------------------ consent events

def event_key(user: str, at: str) -> str:
    return f"consent/{user}/{at}.json"


def event_bytes(user: str, at: datetime, **fields) -> bytes:
    return json.dumps({"user_id": user, "at": at.isoformat(), **fields}).encode()


def test_consent_events_from_the_store_apply_in_order_once_and_never_override_newer_state(engine, any_store):
    user = str(uuid.uuid4())
    grant_at, withdraw_at = T, T + timedelta(hours=2)
    any_store.put_bytes(event_key(user, "20250901T120000Z"), event_bytes(user, grant_at, qa=True, training=True))
    any_store.put_bytes(event_key(user, "2025-09-01T14:00:00+00:00"), event_bytes(user, withdraw_at, training=False))
    events = [consent.parse_consent_event(info.key, any_store.get_bytes(info.key))
              for info in any_store.list(consent.CONSENT_PREFIX)]
    ordered = consent.events_in_order(events)
    assert [e.at for e in ordered] == [grant_at, withdraw_at]
    now = T + timedelta(days=1)

    # delivered out of order: the newer withdrawal first, then the older grant, which must not win
    with engine.begin() as conn:
        assert consent.apply_consent_event(conn, ordered[1], actor="sensor", now=now) == "applied"
    with engine.begin() as conn:
        assert consent.apply_consent_event(conn, ordered[0], actor="sensor", now=now) == "applied"  # qa is new
    with engine.connect() as conn:
        row = consent.consent_of(conn, user)
        requests = [tuple(r) for r in conn.execute(text(
            "SELECT requested_at, due_at FROM deletion_requests WHERE user_id = :u"), {"u": user})]
        exclusions = list(conn.execute(text("SELECT reason FROM ml_exclusions WHERE user_id = :u"),
                                       {"u": user}).scalars())
    assert row["training"] is False and row["training_updated_at"] == withdraw_at and row["qa"] is True
    # the late grant tells that the "no" was a withdrawal: dated, excluded, deletion requested from then
    assert row["training_withdrawn_at"] == withdraw_at and row["training_granted_at"] == grant_at
    assert requests == [(withdraw_at, withdraw_at + timedelta(hours=24))] and row["source"] == "consent_event"
    assert exclusions == ["withdrawal"]

    # the same events again: nothing changes and nothing more is audited
    before = len(audits(engine, "consent.set") + audits(engine, "consent.withdrawn")
                 + audits(engine, "consent.event_ignored"))
    assert before == 2  # one entry per event
    with engine.begin() as conn:
        assert [consent.apply_consent_event(conn, e, actor="sensor", now=now) for e in ordered] == [
            "duplicate", "duplicate"]
    after = len(audits(engine, "consent.set") + audits(engine, "consent.withdrawn")
                + audits(engine, "consent.event_ignored"))
    assert after == before

    # an event older than what is recorded, for the one field it states: stale, audited once
    older = consent.parse_consent_event(event_key(user, "20250901T110000Z"),
                                        event_bytes(user, T - timedelta(hours=1), training=True))
    with engine.begin() as conn:
        assert consent.apply_consent_event(conn, older, actor="sensor", now=now) == "stale"
    with engine.connect() as conn:
        assert consent.consent_of(conn, user)["training"] is False
    (ignored,) = audits(engine, "consent.event_ignored")
    assert ignored["details"]["outcome"] == "stale" and ignored["details"]["event_key"] == older.key

    # a key rewritten with other content is refused; a future-dated event too
    rewritten = consent.parse_consent_event(ordered[1].key, event_bytes(user, withdraw_at, training=True))
    with engine.begin() as conn, pytest.raises(InvalidConsentEvent, match="already applied with other content"):
        consent.apply_consent_event(conn, rewritten, actor="sensor", now=now)
    future = consent.parse_consent_event(event_key(user, "20990101T000000Z"),
                                         event_bytes(user, datetime(2099, 1, 1, tzinfo=timezone.utc), qa=False))
    with engine.begin() as conn, pytest.raises(InvalidConsentEvent, match="later than now"):
        consent.apply_consent_event(conn, future, actor="sensor", now=now)
    with engine.connect() as conn:
        outcomes = dict(conn.execute(text("SELECT object_key, outcome FROM consent_events")).all())
    assert sorted(outcomes.values()) == ["applied", "applied", "stale"]


def test_a_late_withdrawal_after_a_regrant_still_deletes_and_excludes_the_older_uploads(engine):
    """Events: yes at t0, no at t1, yes at t2; the "no" arrives last. Training stays on (t2 is newer), but
    the withdrawal happened: uploads before t1 leave the training set and are due for deletion."""
    t0, t1, t2 = T, T + timedelta(days=2), T + timedelta(days=4)
    with engine.begin() as conn:
        user = str(uuid.uuid4())
        before = add_job(conn, user, received=t0 + timedelta(days=1))
        between = add_job(conn, user, received=t1 + timedelta(days=1))
        for at, training in ((t0, True), (t2, True), (t1, False)):
            event = consent.parse_consent_event(event_key(user, at.strftime("%Y%m%dT%H%M%SZ")),
                                                event_bytes(user, at, training=training))
            consent.apply_consent_event(conn, event, actor="sensor", now=t2 + timedelta(hours=1))
        row = consent.consent_of(conn, user)
        request = conn.execute(text("SELECT requested_at FROM deletion_requests WHERE user_id = :u"),
                               {"u": user}).scalar_one()
        excluded = conn.execute(text("SELECT count(*) FROM ml_exclusions WHERE user_id = :u"), {"u": user}).scalar()
        in_set = set(dataset.load_training_set(conn)["job_id"])
    assert row["training"] is True and row["training_withdrawn_at"] == t1 and row["training_granted_at"] == t2
    assert request == t1 and excluded == 0
    assert in_set == {between} and before not in in_set
    (entry,) = [e for e in audits(engine, "consent.withdrawn") if e["target_id"] == user]
    assert entry["details"]["late_statement"] is True and entry["details"]["withdrawn_at"] == t1.isoformat()


USER = "0c9d6c1e-8a4b-4f3e-9d2a-1b2c3d4e5f60"
OTHER = "7b1e0000-0000-4000-8000-000000000001"
GOOD_KEY = f"consent/{USER}/20250901T120000Z.json"
GOOD = {"user_id": USER, "at": "2025-09-01T12:00:00Z", "training": False}


@pytest.mark.parametrize("key, message", [
    (f"consent/{USER}/../../uploads/x.json", "path segment '..'"),
    (f"/consent/{USER}/20250901T120000Z.json", "absolute path"),
    (f"consent/{USER}/20250901T120000Z.json\n", "control character"),
    (f"consent/{USER}\\20250901T120000Z.json", "backslash"),
    ("consent/not-a-user/20250901T120000Z.json", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"uploads/{USER}/20250901T120000Z.json", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"consent/{USER}/extra/20250901T120000Z.json", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"consent/{USER}/yesterday.json", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"consent/{USER}/2025-09-01T12:00:00.json", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"consent/{USER}/20250901T120000Z.txt", "is not consent/<user uuid>/<ISO timestamp>.json"),
    (f"consent/{USER}/2025-13-01T12:00:00Z.json", "is not an ISO 8601 timestamp"),
])
def test_hostile_consent_event_keys_are_refused(key, message):
    with pytest.raises(InvalidConsentEvent, match=message.replace("(", r"\(").replace(")", r"\)")):
        consent.parse_consent_event(key, json.dumps(GOOD).encode())


@pytest.mark.parametrize("raw, message", [
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[]", "must be a JSON object, not list"),
    (b"[" * 3000 + b"]" * 3000, "nested too deeply|not valid JSON|limit"),
    (json.dumps({**GOOD, "pad": "x" * 5000}).encode(), "the limit is 4,096"),
    (json.dumps({**GOOD, "user_id": OTHER}).encode(), "does not match the key's user"),
    (json.dumps({**GOOD, "user_id": "robert'); DROP TABLE ml_consent;--"}).encode(), "is not a UUID"),
    (json.dumps({**GOOD, "user_id": 12}).encode(), "'user_id' must be a string"),
    (json.dumps({**GOOD, "training": "false"}).encode(), "'training' must be true or false"),
    (json.dumps({**GOOD, "training": 0}).encode(), "'training' must be true or false"),
    (json.dumps({**GOOD, "trainning": True}).encode(), "unknown field"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "at"}).encode(), "'at' is missing"),
    (json.dumps({**GOOD, "at": "2025-09-01T12:00:00"}).encode(), "has no time zone"),
    (json.dumps({**GOOD, "at": "last tuesday"}).encode(), "not an ISO 8601 timestamp"),
    (json.dumps({**GOOD, "at": "1900-01-01T00:00:00Z"}).encode(), "is before 2020-01-01"),
    (json.dumps({"user_id": USER, "at": GOOD["at"]}).encode(), "states neither"),
    (b'{"user_id": "%s", "at": "2025-09-01T12:00:00Z", "training": true, "training": false}' % USER.encode(),
     "given twice"),
    (b'{"user_id": "%s", "at": "2025-09-01T12:00:00Z", "qa": NaN}' % USER.encode(), "must be true or false"),
])
def test_hostile_consent_event_contents_are_refused(raw, message):
    with pytest.raises(InvalidConsentEvent, match=message) as refused:
        consent.parse_consent_event(GOOD_KEY, raw)
    assert GOOD_KEY in str(refused.value)


def test_a_valid_event_parses():
    event = consent.parse_consent_event(GOOD_KEY.upper().replace("CONSENT/", "consent/").replace(".JSON", ".json"),
                                        json.dumps({**GOOD, "user_id": USER.upper()}).encode())
    assert str(event.user_id) == USER and event.training is False and event.qa is None
    assert event.at == datetime(2025, 9, 1, 12, tzinfo=timezone.utc) == event.key_time


# ------------------------------------------------------------------------------------- user purge

def test_purge_user_data_deletes_everything_derived_keeps_held_items_and_measures_the_deadline(engine, any_store):
    store = any_store
    withdrawn_at = REAL + timedelta(hours=1)
    with engine.begin() as conn:
        user = consent_user(conn, at=REAL - timedelta(days=30))
        other = consent_user(conn, at=REAL - timedelta(days=30))
        covered = [upload(conn, store, user, received=REAL - timedelta(days=d)) for d in (5, 1)]
        others = [upload(conn, store, other, received=REAL - timedelta(days=1))]
        # a rejected upload: raw audio without vault rows, found by the sweep of the job's prefix
        rejected = new_job(conn, user, received=REAL - timedelta(days=2), status="failed")
        store.put_bytes(f"uploads/{rejected}/inst.wav", b"raw audio without a row")
    hold(engine, "path = :p", p=f"previews/{covered[0]}/vocal.m4a")
    with engine.begin() as conn:
        withdrawal = consent.withdraw_training(conn, user, actor="app", now=withdrawn_at, reason="settings page")
        # uploaded after the withdrawal: not covered (made under the new consent state)
        later = upload(conn, store, user, received=withdrawn_at + timedelta(minutes=30))
    with engine.connect() as conn:
        assert purge.users_due_for_purge(conn) == [user]

    purged_at = withdrawn_at + timedelta(hours=3)
    report = purge.purge_user_data(engine, store, user, now=purged_at, actor="user_data_purge", batch_size=7)

    assert report.status == "partial_hold" and report.request_ids == (withdrawal.deletion_request_id,)
    assert report.items_deleted == 2 * 13 - 1 and report.completed_from_previous_crash == 0 and not report.errors
    assert [h["path"] for h in report.held] == [f"previews/{covered[0]}/vocal.m4a"]
    assert sorted(report.unregistered_deleted) == sorted(
        [f"uploads/{j}/manifest.json" for j in covered] + [f"uploads/{rejected}/inst.wav"])
    assert report.rows_deleted == {"features_store": 6, "labels": 6, "alignments": 2, "mixes": 2, "masters": 2}
    assert report.durations_s == {withdrawal.deletion_request_id: 3 * 3600.0}

    for job in covered:
        states = item_states(engine, "job_id = CAST(:j AS uuid)", j=job)
        held = {f"previews/{covered[0]}/vocal.m4a"} if job == covered[0] else set()
        assert {p for p, s in states.items() if s != "deleted"} == held
        assert [info.key for info in store.list(f"uploads/{job}/")] == []
        assert {info.key for p in ("derived", "previews") for info in store.list(f"{p}/{job}/")} == held
    for job in [later, *others]:
        assert set(item_states(engine, "job_id = CAST(:j AS uuid)", j=job).values()) == {"live"}
        assert store.exists(f"uploads/{job}/manifest.json")
    with engine.connect() as conn:
        left = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE job_id = ANY(CAST(:j AS uuid[]))"),
                                {"j": covered}).scalar() for t in purge.DERIVED_TABLES}
        kept = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE job_id = ANY(CAST(:j AS uuid[]))"),
                                {"j": [later, *others]}).scalar() for t in purge.DERIVED_TABLES}
        jobs_left = conn.execute(text("SELECT count(*) FROM jobs WHERE user_id = :u"), {"u": user}).scalar()
        request = conn.execute(text("SELECT * FROM deletion_requests WHERE id = :id"),
                               {"id": withdrawal.deletion_request_id}).mappings().one()
    assert set(left.values()) == {0} and kept == {"features_store": 6, "labels": 6, "alignments": 2,
                                                  "mixes": 2, "masters": 2}
    assert jobs_left == 4  # jobs rows are the record that uploads happened: never deleted
    assert request["status"] == "partial_hold" and request["completed_at"] == purged_at
    assert request["duration_s"] == 3 * 3600.0 and request["completed_at"] <= request["due_at"]
    assert request["items_deleted"] == 25 and request["items_held"] == 1
    assert request["bytes_deleted"] == report.bytes_freed > 0
    assert request["held_items"][0]["path"] == f"previews/{covered[0]}/vocal.m4a"

    # every deletion audited: each deleted item in a per-job entry, the sweep and the request too
    assert audited_item_ids(engine) == deleted_ids(engine)
    assert {e["target_id"] for e in audits(engine, "vault_item.deleted")} == set(covered)
    swept = {i["path"] for e in audits(engine, "object.deleted_unregistered") for i in e["details"]["items"]}
    assert swept == set(report.unregistered_deleted)
    (closed,) = audits(engine, "deletion_request.completed")
    assert closed["details"]["within_24h"] is True and closed["details"]["duration_s"] == 3 * 3600.0
    assert_consistent(engine, store, covered + [later, *others])

    # the hold is released: the user is due again, the rerun deletes the item and completes the request
    with engine.begin() as conn:
        conn.execute(text("UPDATE vault_items SET legal_hold = false"))
        assert purge.users_due_for_purge(conn) == [user]
    rerun = purge.purge_user_data(engine, store, user, now=purged_at + timedelta(days=2), actor="user_data_purge")
    assert rerun.status == "completed" and rerun.items_deleted == 1 and rerun.held == []
    with engine.connect() as conn:
        request = conn.execute(text("SELECT * FROM deletion_requests WHERE id = :id"),
                               {"id": withdrawal.deletion_request_id}).mappings().one()
        assert purge.users_due_for_purge(conn) == []
    assert request["status"] == "completed" and request["completed_at"] == purged_at  # the deadline part was met
    assert request["items_deleted"] == 26 and request["items_held"] == 0
    assert not store.exists(f"previews/{covered[0]}/vocal.m4a")

    # and once more: nothing left to do, nothing changes
    again = purge.purge_user_data(engine, store, user, now=purged_at + timedelta(days=3), actor="user_data_purge")
    assert again.items_deleted == 0 and again.unregistered_deleted == [] and again.request_ids == ()
    assert audited_item_ids(engine) == deleted_ids(engine)


def test_user_purge_killed_midway_is_completed_by_the_next_run(engine, any_store):
    with engine.begin() as conn:
        user = consent_user(conn, at=REAL - timedelta(days=30))
        jobs = [upload(conn, any_store, user, received=REAL - timedelta(days=d), derived_rows=False) for d in (3, 2)]
        withdrawal = consent.withdraw_training(conn, user, actor="app", now=REAL + timedelta(hours=1))
    now = REAL + timedelta(hours=2)

    # batch 1 (5 items) commits; batch 2 deletes 2 objects and dies before committing
    with pytest.raises(SimulatedCrash):
        purge.purge_user_data(engine, CrashAfterDeletes(any_store, 7), user, now=now, actor="purge", batch_size=5)
    states = item_states(engine)
    assert list(states.values()).count("deleted") == 5 and list(states.values()).count("in_purge") == 5
    report = assert_consistent(engine, any_store, jobs)
    assert len(report.in_purge) == 5
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status, items_deleted FROM deletion_requests")).one() == ("pending", 5)
        assert purge.users_due_for_purge(conn) == [user]

    rerun = purge.purge_user_data(engine, any_store, user, now=now + timedelta(minutes=10), actor="purge",
                                  batch_size=5)
    assert rerun.status == "completed" and rerun.completed_from_previous_crash == 5
    assert set(item_states(engine).values()) == {"deleted"}
    for job in jobs:
        assert [i.key for p in purge.JOB_PREFIXES for i in any_store.list(p.format(job=job))] == []
    with engine.connect() as conn:
        request = conn.execute(text("SELECT * FROM deletion_requests WHERE id = :id"),
                               {"id": withdrawal.deletion_request_id}).mappings().one()
    assert request["status"] == "completed" and request["items_deleted"] == 26  # exact across the crash
    assert request["duration_s"] == 3600.0 + 600.0
    assert audited_item_ids(engine) == deleted_ids(engine)  # the rolled-back batch was audited by the rerun
    assert_consistent(engine, any_store, jobs)


def test_young_unregistered_objects_wait_for_a_later_run_and_keep_the_request_open(engine, local_store):
    with engine.begin() as conn:
        user = consent_user(conn, at=REAL - timedelta(days=30))
        job = upload(conn, local_store, user, received=REAL - timedelta(days=1))
        consent.withdraw_training(conn, user, actor="app", now=REAL)
    local_store.put_bytes(f"derived/{job}/master.partial.wav", b"a stage is writing this right now")
    early = purge.purge_user_data(engine, local_store, user, now=REAL + timedelta(minutes=10), actor="purge")
    assert early.status == "pending" and early.items_deleted == 13
    assert sorted(early.unregistered_too_young) == [f"derived/{job}/master.partial.wav",
                                                    f"uploads/{job}/manifest.json"]
    assert local_store.exists(f"derived/{job}/master.partial.wav")
    with engine.connect() as conn:
        assert purge.users_due_for_purge(conn) == [user]
    later = purge.purge_user_data(engine, local_store, user, now=REAL + timedelta(hours=2), actor="purge")
    assert later.status == "completed" and later.durations_s == {later.request_ids[0]: 7200.0}
    assert sorted(later.unregistered_deleted) == sorted(early.unregistered_too_young)
    assert_consistent(engine, local_store, [job])
    assert [i.key for p in purge.JOB_PREFIXES for i in local_store.list(p.format(job=job))] == []


def test_purge_without_a_request_does_nothing(engine, local_store):
    with engine.begin() as conn:
        user = consent_user(conn, at=REAL - timedelta(days=30))
        job = upload(conn, local_store, user, received=REAL - timedelta(days=1), derived_rows=False)
    report = purge.purge_user_data(engine, local_store, user, now=REAL + timedelta(hours=2), actor="purge")
    assert report.status == "nothing_requested" and report.items_deleted == 0
    assert set(item_states(engine, "job_id = CAST(:j AS uuid)", j=job).values()) == {"live"}


def test_overdue_deletion_requests(engine):
    with engine.begin() as conn:
        late = add_user(conn, training=True, granted=T - timedelta(days=3))
        fresh = add_user(conn, training=True, granted=T - timedelta(days=3))
        consent.withdraw_training(conn, late, actor="app", now=T - timedelta(hours=25))
        consent.withdraw_training(conn, fresh, actor="app", now=T - timedelta(hours=1))
        overdue = purge.overdue_deletion_requests(conn, now=T)
        assert sorted(purge.users_due_for_purge(conn)) == sorted([late, fresh])
    assert [r["user_id"] for r in overdue] == [late]


# -------------------------------------------------------------------------------------- retention

def test_expiry_for_is_the_rule_the_pipeline_writes(engine, local_store):
    received = T - timedelta(days=1)
    with engine.begin() as conn:
        user = consent_user(conn)
        job = upload(conn, local_store, user, plan="freetrial", received=received, derived_rows=False)
        stored = conn.execute(text("SELECT kind, expires_at FROM vault_items WHERE job_id = :j"), {"j": job}).all()
        days = retention.retention_days(conn)
        for kind, expires_at in stored:
            assert retention.expiry_for(conn, "freetrial", kind, received) == expires_at
        with pytest.raises(ValueError, match="no retention policy"):
            retention.expiry_for(conn, "platinum", "inst", received)
    assert {k: days[("standard", k)] for k in ("inst", "vocal", "master", "mix", "preview", "waveform")} == {
        "inst": 7, "vocal": 7, "master": 15, "mix": 15, "preview": 30, "waveform": 30}
    assert {k: days[("freetrial", k)] for k in ("inst", "vocal", "master", "preview")} == {
        "inst": 3, "vocal": 3, "master": 7, "preview": 14}


def test_retention_deletes_at_expiry_never_a_second_early_per_plan_and_never_under_hold(engine, any_store):
    received = T
    with engine.begin() as conn:
        user = consent_user(conn)
        standard = upload(conn, any_store, user, plan="standard", received=received, derived_rows=False)
        trial = upload(conn, any_store, user, plan="freetrial", received=received, derived_rows=False)
        held_job = upload(conn, any_store, user, plan="freetrial", received=received, derived_rows=False)
    hold(engine, "job_id = CAST(:j AS uuid) AND kind = 'inst'", j=held_job)
    expected_days = {"standard": {"inst": 7, "vocal": 7, "mix": 15, "master": 15, "preview": 30, "waveform": 30},
                     "freetrial": {"inst": 3, "vocal": 3, "mix": 7, "master": 7, "preview": 14, "waveform": 14}}

    def state(job: str) -> dict[str, str]:
        return {p: s for p, s in item_states(engine, "job_id = CAST(:j AS uuid)", j=job).items()}

    def kind_of(path: str) -> str:
        return next(o.kind for o in job_objects(path.split("/")[1]) if o.path == path)

    boundaries = sorted({received + timedelta(days=d) for plan in expected_days.values() for d in plan.values()})
    for expiry in boundaries:
        before = retention.purge_expired(engine, any_store, now=expiry - timedelta(seconds=1), actor="retention")
        assert before.deleted == 0, expiry
        report = retention.purge_expired(engine, any_store, now=expiry, actor="retention", batch_size=4)
        assert report.deleted > 0 and not report.errors
        for plan, job in (("standard", standard), ("freetrial", trial), ("freetrial", held_job)):
            for path, s in state(job).items():
                kind = kind_of(path)
                due = received + timedelta(days=expected_days[plan][kind])
                held = job == held_job and kind == "inst"
                assert s == ("deleted" if due <= expiry and not held else "live"), (plan, path, expiry)
                assert any_store.exists(path) == (s == "live")
    last = retention.purge_expired(engine, any_store, now=received + timedelta(days=400), actor="retention")
    assert last.deleted == 0 and last.skipped_on_hold == 1
    assert [i.path for i in last.held_items] == [f"uploads/{held_job}/inst.wav"]
    assert any_store.exists(f"uploads/{held_job}/inst.wav")
    assert audited_item_ids(engine) == deleted_ids(engine)
    retention_audits = audits(engine, "vault_item.deleted")
    assert {e["details"]["cause"] for e in retention_audits} == {"retention"}
    assert {e["target_id"] for e in retention_audits} == {standard, trial, held_job}
    assert_consistent(engine, any_store, [standard, trial, held_job])


def test_retention_purge_killed_midway_is_completed_and_stays_consistent(engine, local_store):
    with engine.begin() as conn:
        user = consent_user(conn)
        jobs = [upload(conn, local_store, user, plan="freetrial", received=T, derived_rows=False) for _ in range(3)]
    now = T + timedelta(days=100)
    with pytest.raises(SimulatedCrash):
        retention.purge_expired(engine, CrashAfterDeletes(local_store, 13), now=now, actor="retention",
                                batch_size=10, workers=1)
    states = list(item_states(engine).values())
    assert states.count("deleted") == 10 and states.count("in_purge") == 10 and states.count("live") == 19
    assert_consistent(engine, local_store, jobs)
    with engine.connect() as conn:
        assert retention.retention_problems(conn, now=now)["in_purge"] == 10

    report = retention.purge_expired(engine, local_store, now=now, actor="retention", batch_size=10)
    assert report.completed_from_previous_crash == 10 and report.deleted == 29 and not report.errors
    assert report.bytes_freed > 0 and sum(report.deleted_by_kind.values()) == 29
    assert set(item_states(engine).values()) == {"deleted"}
    assert audited_item_ids(engine) == deleted_ids(engine)
    causes = {e["details"]["cause"] for e in audits(engine, "vault_item.deleted")}
    assert causes == {"retention", "interrupted_purge_completed"}
    assert_consistent(engine, local_store, jobs)
    assert retention.purge_expired(engine, local_store, now=now, actor="retention").deleted == 0


def test_a_hold_placed_after_the_intent_keeps_the_object(engine, local_store):
    with engine.begin() as conn:
        user = consent_user(conn)
        job = upload(conn, local_store, user, plan="freetrial", received=T, derived_rows=False)
    now = T + timedelta(days=100)
    with engine.begin() as conn:
        ids = purge.claim(conn, "job_id = CAST(:j AS uuid)", {"j": job}, now=now, limit=100)
    assert len(ids) == 13
    hold(engine, "path = :p", p=f"uploads/{job}/vocal.wav")  # approved between intent and deletion
    outcome = purge.complete(engine, local_store, ids, now=now, actor="retention", cause="retention")
    assert [i.path for i in outcome.held] == [f"uploads/{job}/vocal.wav"] and len(outcome.deleted) == 12
    assert item_states(engine)[f"uploads/{job}/vocal.wav"] == "live"
    assert local_store.exists(f"uploads/{job}/vocal.wav")
    assert_consistent(engine, local_store, [job])


def test_backfill_of_30_past_days_deletes_exactly_the_expired_set_and_never_early(engine, local_store):
    now = datetime(2025, 10, 15, 3, 0, tzinfo=timezone.utc)  # 12:00 in Tokyo
    today = now.astimezone(retention.BUSINESS_TZ).date()
    start, _ = retention.day_window(today - timedelta(days=30))
    with engine.begin() as conn:
        user = consent_user(conn)
        jobs = []
        for k in range(48):  # arrivals every 31 h over ~60 days, alternating plans
            received = now - timedelta(days=60) + timedelta(hours=31 * k, minutes=7 * k)
            jobs.append(upload(conn, local_store, user, plan=("standard", "freetrial")[k % 2], received=received,
                               derived_rows=False))
        # boundaries: exactly at the first day's start (in), a microsecond before (out), exactly now (today),
        # a second after now (never today)
        edge = {}
        for k, (name, expires_at) in enumerate({"at_start": start, "before_start": start - timedelta(microseconds=1),
                                                "at_now": now, "after_now": now + timedelta(seconds=1)}.items()):
            edge[name] = f"uploads/{jobs[k]}/inst.wav"
            conn.execute(text("UPDATE vault_items SET expires_at = :e WHERE path = :p"),
                         {"e": expires_at, "p": edge[name]})
        rows = conn.execute(text("SELECT id, path, kind, expires_at FROM vault_items")).all()
    end_of_yesterday = retention.day_window(today)[0]
    held = next(r for r in rows if r.kind == "preview" and start <= r.expires_at < end_of_yesterday)
    hold(engine, "id = :id", id=held.id)
    expected = {r.id for r in rows if start <= r.expires_at < end_of_yesterday and r.id != held.id}
    assert len(expected) > 100 and any(r.expires_at < start for r in rows) and any(r.expires_at > now for r in rows)

    reports = [retention.purge_for_day(engine, local_store, today - timedelta(days=offset), now=now, batch_size=25)
               for offset in range(30, 0, -1)]
    assert not any(r.errors for r in reports)
    assert deleted_ids(engine) == expected and sum(r.deleted for r in reports) == len(expected)
    assert [i.path for r in reports for i in r.held_items] == [held.path]
    assert all(not local_store.exists(r.path) for r in rows if r.id in expected)
    assert all(local_store.exists(r.path) for r in rows if r.id not in expected)
    states = item_states(engine)
    assert states[edge["at_start"]] == "deleted" and states[edge["before_start"]] == "live"

    # the same range again: nothing more
    assert sum(retention.purge_for_day(engine, local_store, today - timedelta(days=o), now=now).deleted
               for o in range(30, 0, -1)) == 0
    assert deleted_ids(engine) == expected

    # today: only up to now; tomorrow (a future day): nothing, even though items expire then
    today_report = retention.purge_for_day(engine, local_store, today, now=now)
    due_today = {r.id for r in rows if retention.day_window(today)[0] <= r.expires_at <= now}
    assert deleted_ids(engine) == expected | due_today and edge["at_now"] in {
        r.path for r in rows if r.id in due_today}
    assert today_report.deleted == len(due_today)
    assert item_states(engine)[edge["after_now"]] == "live"
    tomorrow = today + timedelta(days=1)
    assert any(retention.day_window(tomorrow)[0] <= r.expires_at < retention.day_window(tomorrow)[1] for r in rows)
    assert retention.purge_for_day(engine, local_store, tomorrow, now=now).deleted == 0
    assert deleted_ids(engine) == expected | due_today
    assert audited_item_ids(engine) == deleted_ids(engine)

    # the unpartitioned daily run catches up on everything expired before the range, and nothing after now
    daily = retention.purge_expired(engine, local_store, now=now)
    assert deleted_ids(engine) == {r.id for r in rows if r.expires_at <= now and r.id != held.id}
    assert daily.deleted == len({r.id for r in rows if r.expires_at < start}) and daily.skipped_on_hold == 1
    assert_consistent(engine, local_store, jobs)


def test_expired_items_scan_uses_the_purge_index(engine):
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(conn.execute(text(
            f"""EXPLAIN UPDATE vault_items v SET purge_started_at = now()
                FROM (SELECT id FROM vault_items WHERE {purge.PURGEABLE} AND (expires_at <= now())
                      ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) AS c WHERE v.id = c.id""")).scalars())
        assert "vault_items_purgeable_expiry_idx" in plan, plan
        assert retention.expired_items(conn, now=T) == []


def test_day_window_is_the_tokyo_day():
    start, end = retention.day_window(date(2025, 9, 1))
    assert start == datetime(2025, 8, 31, 15, tzinfo=timezone.utc) and end - start == timedelta(days=1)


# ---------------------------------------------------------------------------------------- orphans

def test_orphans_are_found_both_ways(engine, any_store):
    with engine.begin() as conn:
        user = consent_user(conn)
        job = upload(conn, any_store, user, received=T, derived_rows=False)
        # a tombstone whose object is still there, a live row whose object is gone, a stray object
        conn.execute(text("UPDATE vault_items SET deleted_at = :t WHERE path = :p"),
                     {"t": T, "p": f"previews/{job}/inst.m4a"})
        conn.execute(text("UPDATE vault_items SET purge_started_at = :t WHERE path = :p"),
                     {"t": T, "p": f"previews/{job}/vocal.m4a"})
    any_store.delete(f"derived/{job}/master.wav")
    any_store.put_bytes(f"derived/{job}/stray.wav", b"no row")
    with engine.connect() as conn:
        report = retention.orphans(conn, any_store, [p.format(job=job) for p in purge.JOB_PREFIXES])
    assert {(o.key, o.row) for o in report.objects_without_row} == {
        (f"previews/{job}/inst.m4a", "deleted"), (f"derived/{job}/stray.wav", "none")}
    assert [m.path for m in report.rows_without_object] == [f"derived/{job}/master.wav"]
    assert report.in_purge == [f"previews/{job}/vocal.m4a"] and not report.consistent


# ------------------------------------------------------------------------------------ rejected uploads

def rejected_upload(conn, store: ObjectStore, *, received: datetime, user: str | None, plan: str | None,
                    files: dict[str, bytes]) -> str:
    """An upload registration rejected: a jobs row with the reason, its files in the inbox, no vault rows."""
    job = new_job(conn, user, plan=plan, received=received, status="rejected")
    for name, data in files.items():
        store.put_bytes(f"uploads/{job}/{name}", data)
    return job


def test_rejected_uploads_files_go_when_the_plans_stem_retention_passes_never_early_nor_under_hold(
        engine, any_store):
    """A rejected upload's stems are raw audio: deleted after its plan's inst/vocal days (freetrial 3,
    standard 7; no plan known: the longest), never under a legal hold; its jobs row stays; reruns are no-ops."""
    received = REAL - timedelta(days=10)
    files = {"inst.wav": b"RIFF broken", "vocal.wav": b"RIFF\x00\x01", "manifest.json": b"{}"}
    with engine.begin() as conn:
        trial = rejected_upload(conn, any_store, received=REAL - timedelta(days=4), user=str(uuid.uuid4()),
                                plan="freetrial", files=files)
        standard_young = rejected_upload(conn, any_store, received=REAL - timedelta(days=4),
                                         user=str(uuid.uuid4()), plan="standard", files=files)
        unknown = rejected_upload(conn, any_store, received=received, user=None, plan=None,
                                  files={"inst.wav": b"x", "notes.txt": b"y"})
        held_user = str(uuid.uuid4())
        held = rejected_upload(conn, any_store, received=received, user=held_user, plan="standard", files=files)
        conn.execute(text(
            "INSERT INTO approval_requests (kind, target, reason, requested_by, status, decided_by, decided_at) "
            "VALUES ('legal_hold', CAST(:t AS jsonb), 'litigation', 'legal', 'approved', 'dpo', now())"),
            {"t": json.dumps({"user_id": held_user, "hold": True})})
        accepted = upload(conn, any_store, consent_user(conn), received=received, derived_rows=False)
    now = REAL + timedelta(hours=2)

    report = retention.purge_rejected_uploads(engine, any_store, now=now, actor=ACTOR)

    def keys(job):
        return sorted(info.key.rsplit("/", 1)[1] for info in any_store.list(f"uploads/{job}/"))
    assert keys(trial) == [] and keys(unknown) == []
    assert keys(standard_young) == sorted(files) and keys(held) == sorted(files)  # 4 of 7 days; a hold
    assert keys(accepted) == ["inst.wav", "manifest.json", "vocal.wav"]  # vault items go by their own expiry
    assert (report.expired, report.purged, report.objects_deleted) == (3, 2, 5)
    assert report.bytes_freed == sum(map(len, files.values())) + 2 and report.held == [held]
    with engine.connect() as conn:
        rows = {r.job_id: r for r in conn.execute(text(
            "SELECT job_id::text AS job_id, status, reject_reason, files_purged_at FROM jobs"))}
    assert rows[trial].files_purged_at == now and rows[trial].reject_reason == "inst.wav is corrupt"
    assert rows[standard_young].files_purged_at is None and rows[held].files_purged_at is None
    entries = audits(engine, "object.deleted_unregistered")
    assert {e["target_id"] for e in entries} == {trial, unknown}
    assert all(e["details"]["cause"] == "retention_rejected" for e in entries)
    assert sorted(i["path"] for e in entries for i in e["details"]["items"]) == sorted(
        [f"uploads/{trial}/{name}" for name in files] + [f"uploads/{unknown}/inst.wav", f"uploads/{unknown}/notes.txt"])

    again = retention.purge_rejected_uploads(engine, any_store, now=now, actor=ACTOR)
    assert (again.expired, again.purged, again.objects_deleted) == (1, 0, 0) and again.held == [held]
    assert len(audits(engine, "object.deleted_unregistered")) == 2
    # a day window: only what expired within it
    later = REAL + timedelta(days=4)
    window = (REAL - timedelta(days=1), REAL + timedelta(days=2))
    inside = retention.purge_rejected_uploads(engine, any_store, now=later, actor=ACTOR, window=window)
    assert inside.purged == 0 and keys(standard_young) == sorted(files)  # it expires at REAL + 3 d
    assert retention.purge_rejected_uploads(engine, any_store, now=later, actor=ACTOR).purged == 1
    assert keys(standard_young) == []


def test_rejected_upload_files_with_hostile_names_are_reported_not_deleted_and_the_job_stays_open(
        engine, local_store):
    with engine.begin() as conn:
        job = rejected_upload(conn, local_store, received=REAL - timedelta(days=30), user=None, plan=None,
                              files={"inst.wav": b"x"})
    hostile = local_store.root / f"uploads/{job}" / "evil\nname.wav"
    hostile.write_bytes(b"y")
    report = retention.purge_rejected_uploads(engine, local_store, now=REAL + timedelta(hours=2), actor=ACTOR)
    assert report.objects_deleted == 1 and report.purged == 0
    assert report.unaddressable == [f"uploads/{job}/evil\nname.wav"] and hostile.exists()


def test_young_files_of_an_expired_rejected_upload_wait_for_a_later_run(engine, local_store):
    """A file written just now under an old rejected upload (a retry in progress?) is left for a later run."""
    with engine.begin() as conn:
        job = rejected_upload(conn, local_store, received=REAL - timedelta(days=30), user=None, plan=None,
                              files={"inst.wav": b"x"})
    report = retention.purge_rejected_uploads(engine, local_store, now=REAL + timedelta(minutes=5), actor=ACTOR)
    assert report.purged == 0 and report.left_for_later == [f"uploads/{job}/inst.wav"]
    later = retention.purge_rejected_uploads(engine, local_store, now=REAL + timedelta(hours=2), actor=ACTOR)
    assert later.purged == 1 and list(local_store.list(f"uploads/{job}/")) == []
