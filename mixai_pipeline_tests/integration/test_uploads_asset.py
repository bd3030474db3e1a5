"""The ``uploads`` asset materialized with real resources: PostgreSQL, the object store, ffmpeg."""

import json
import os
import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
from sqlalchemy import text

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.ingestion.checks import uploads_registered_whole
from mixai_pipeline.lib.ingestion.inbox import partition_key
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline.settings import BUSINESS_TIMEZONE
from mixai_pipeline_tests.conftest import make_audio, manifest_for, set_mtime, write_upload


def today() -> str:
    return partition_key(datetime.now(timezone.utc), BUSINESS_TIMEZONE)


def materialize(db_url, store, day=None, **config):
    resources = {"database": Database(url=db_url),
                 "object_store": ObjectStoreResource(backend="local", root=str(store.root))}
    run_config = {"ops": {"uploads": {"config": config}}} if config else None
    result = dg.materialize([uploads, uploads_registered_whole], partition_key=day or today(),
                            resources=resources, run_config=run_config, raise_on_error=False)
    return result


def metadata(result) -> dict:
    [event] = result.asset_materializations_for_node("uploads")
    return {k: v.value for k, v in event.metadata.items()}


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).mappings().all()


def snapshot(engine) -> dict:
    return {table: [dict(r) for r in rows(engine, f"SELECT * FROM {table} ORDER BY 1")]
            for table in ("jobs", "vault_items", "ml_consent", "audit_logs")}


def test_accepted_upload_is_registered_whole(engine, db_url, local_store, audio_dir):
    user = uuid.uuid4()
    job = write_upload(local_store, {
        "inst.flac": make_audio(audio_dir / "a.flac", 4.0).read_bytes(),
        "vocal.mp3": make_audio(audio_dir / "a.mp3", 4.0, channels=1).read_bytes(),
    }, user_id=user, plan="freetrial", consent={"qa": True, "training": False}, bpm=100, key="Am")
    result = materialize(db_url, local_store)
    assert result.success
    md = metadata(result)
    assert (md["accepted"], md["rejected"], md["newly_registered"]) == (1, 0, 1)
    assert md["bytes_accepted"] > 0

    [job_row] = rows(engine, "SELECT * FROM jobs")
    assert job_row["job_id"] == job and job_row["user_id"] == user
    assert job_row["status"] == "registered" and job_row["plan"] == "freetrial"
    assert job_row["partition_date"].isoformat() == today()
    assert (job_row["bpm"], job_row["musical_key"], job_row["consent_training"]) == (100.0, "Am", False)

    items = {r["kind"]: r for r in rows(engine, "SELECT * FROM vault_items")}
    assert set(items) == {"inst", "vocal"}
    assert items["inst"]["codec"] == "flac" and items["vocal"]["codec"] == "mp3"
    assert items["vocal"]["channels"] == 1 and items["inst"]["channels"] == 2
    assert items["inst"]["sample_rate"] == 44100
    assert abs(items["inst"]["duration_s"] - 4.0) < 0.05
    assert items["inst"]["sha256"] == local_store.sha256(items["inst"]["path"])
    # freetrial keeps raw stems 3 days
    assert items["inst"]["expires_at"] - job_row["received_at"] == timedelta(days=3)
    assert items["vocal"]["consent_training"] is False

    [consent] = rows(engine, "SELECT * FROM ml_consent")
    assert (consent["user_id"], consent["qa"], consent["training"]) == (user, True, False)
    actions = [r["action"] for r in rows(engine, "SELECT action FROM audit_logs ORDER BY id")]
    assert actions == ["consent.set", "upload.registered"]
    [check] = result.get_asset_check_evaluations()
    assert check.passed


def test_rematerializing_and_backfilling_write_the_same_rows(engine, db_url, local_store, tone_wav):
    now = datetime.now(timezone.utc)
    yesterday = partition_key(now - timedelta(days=1), BUSINESS_TIMEZONE)
    for _ in range(3):
        write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    old = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    set_mtime(local_store, f"uploads/{old}/manifest.json", now - timedelta(days=1))
    write_upload(local_store, {"inst.wav": tone_wav}, job_id=uuid.uuid4())  # rejected: no vocal

    first = [materialize(db_url, local_store, day) for day in (yesterday, today())]
    assert all(r.success for r in first)
    assert [metadata(r)["accepted"] for r in first] == [1, 3]
    before = snapshot(engine)
    assert len(before["jobs"]) == 5 and len(before["vault_items"]) == 8

    again = [materialize(db_url, local_store, day) for day in (yesterday, today())]
    assert [metadata(r)["unchanged"] for r in again] == [1, 4]
    assert [metadata(r)["newly_registered"] for r in again] == [0, 0]
    assert snapshot(engine) == before  # same rows, and no second audit entry
    by_job = {r["job_id"]: r["partition_date"].isoformat() for r in before["jobs"]}
    assert by_job[old] == yesterday


def test_accepted_job_survives_its_stems_being_purged(engine, db_url, local_store, tone_wav):
    job = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    assert materialize(db_url, local_store).success
    before = snapshot(engine)
    local_store.delete(f"uploads/{job}/inst.wav")  # retention purge after 7 days
    result = materialize(db_url, local_store)
    assert result.success and metadata(result)["kept_existing"] == 1
    assert snapshot(engine) == before


def test_rewritten_manifest_is_not_registered_twice(engine, db_url, local_store, tone_wav):
    now = datetime.now(timezone.utc)
    job = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    set_mtime(local_store, f"uploads/{job}/manifest.json", now - timedelta(days=1))
    yesterday = partition_key(now - timedelta(days=1), BUSINESS_TIMEZONE)
    assert materialize(db_url, local_store, yesterday).success
    # The app writes the manifest again today: the upload now "arrives" today too.
    local_store.put_bytes(f"uploads/{job}/manifest.json", json.dumps(manifest_for(job)).encode())
    result = materialize(db_url, local_store)
    assert metadata(result)["kept_existing"] == 1
    assert [r["partition_date"].isoformat() for r in rows(engine, "SELECT partition_date FROM jobs")] == [yesterday]


def test_abandoned_upload_is_rejected_then_registered_when_its_manifest_arrives(engine, db_url, local_store, tone_wav):
    now = datetime.now(timezone.utc)
    job = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav}, with_manifest=False)
    for name in ("inst.wav", "vocal.wav"):
        set_mtime(local_store, f"uploads/{job}/{name}", now - timedelta(hours=30))
    stale_day = partition_key(now - timedelta(hours=30), BUSINESS_TIMEZONE)
    fresh = write_upload(local_store, {"inst.wav": tone_wav}, with_manifest=False)  # still uploading

    result = materialize(db_url, local_store, stale_day)
    assert metadata(result)["rejected"] == 1
    [row] = rows(engine, "SELECT * FROM jobs")
    assert row["job_id"] == job and row["reject_code"] == "manifest_missing"
    assert "never arrived" in row["reject_reason"]
    assert metadata(materialize(db_url, local_store))["incomplete"] == 1
    assert not rows(engine, "SELECT 1 FROM jobs WHERE job_id = :j", j=fresh)

    write_upload(local_store, {}, job_id=job)  # the manifest finally comes, today
    result = materialize(db_url, local_store)
    assert metadata(result)["accepted"] == 1 and metadata(result)["updated"] == 1
    [row] = rows(engine, "SELECT * FROM jobs")
    assert row["status"] == "registered" and row["partition_date"].isoformat() == today()
    assert len(rows(engine, "SELECT 1 FROM vault_items WHERE job_id = :j", j=job)) == 2


def test_older_manifest_never_overrides_newer_consent(engine, db_url, local_store, tone_wav):
    user = uuid.uuid4()
    now = datetime.now(timezone.utc)
    write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav}, user_id=user,
                 consent={"qa": False, "training": False}, created_at=now.isoformat())
    assert materialize(db_url, local_store).success
    # A backfill registers an older upload of the same user, which had granted consent.
    old = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav}, user_id=user,
                       consent={"qa": True, "training": True}, created_at=(now - timedelta(days=2)).isoformat())
    set_mtime(local_store, f"uploads/{old}/manifest.json", now - timedelta(days=2))
    assert materialize(db_url, local_store, partition_key(now - timedelta(days=2), BUSINESS_TIMEZONE)).success
    [consent] = rows(engine, "SELECT qa, training FROM ml_consent")
    assert (consent["qa"], consent["training"]) == (False, False)


# ------------------------------------------------------------------------------------- bad uploads

def _raw_file(store, key: str | bytes, data: bytes) -> None:
    """Write a file the store's API would refuse (what another client could leave in the inbox)."""
    root = os.fsencode(store.root)
    path = os.path.join(root, key if isinstance(key, bytes) else key.encode())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _empty_wav() -> bytes:
    """A well-formed WAV with zero frames."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
    return buffer.getvalue()


def _bad_cases(audio_dir, tone_wav):
    mp3 = make_audio(audio_dir / "bad.mp3", 3.0).read_bytes()
    short = make_audio(audio_dir / "short.wav", 0.4).read_bytes()
    big = make_audio(audio_dir / "big.wav", 15.0).read_bytes()  # > 2 MiB
    good = {"inst.wav": tone_wav, "vocal.wav": tone_wav}

    def manifest_bytes(job, **kw):
        return json.dumps(manifest_for(job, **kw)).encode()

    cases = {
        "invalid_json": (dict(good), lambda j: b'{"job_id": "', "manifest_unreadable", "not valid JSON"),
        "manifest_not_object": (dict(good), lambda j: b"[]", "manifest_invalid", "JSON object"),
        "manifest_empty": (dict(good), lambda j: b"", "manifest_unreadable", "empty"),
        "manifest_huge": (dict(good), lambda j: b" " * 100_000, "manifest_unreadable", "limit"),
        "manifest_binary": (dict(good), lambda j: b"\x00\xff" * 10, "manifest_unreadable", "UTF-8"),
        "missing_field": (dict(good), lambda j: json.dumps(
            {k: v for k, v in manifest_for(j).items() if k != "user_id"}).encode(), "manifest_invalid", "user_id"),
        "unknown_plan": (dict(good), lambda j: manifest_bytes(j, plan="platinum"), "unknown_plan", "platinum"),
        "job_mismatch": (dict(good), lambda j: manifest_bytes(uuid.uuid4()), "job_id_mismatch", "names job"),
        "missing_inst": ({"vocal.wav": tone_wav}, None, "stem_missing", "no inst file"),
        "two_vocals": ({**good, "vocal.mp3": mp3}, None, "stem_ambiguous", "vocal.mp3, vocal.wav"),
        "unsupported": ({"inst.wav": tone_wav, "vocal.aiff": tone_wav}, None, "unsupported_format", ".aiff"),
        "wrong_content": ({"inst.wav": mp3, "vocal.wav": tone_wav}, None, "unsupported_format", "contains mp3"),
        "corrupt": ({"inst.wav": os.urandom(50_000), "vocal.wav": tone_wav}, None, "audio_corrupt", "inst.wav"),
        "zero_length": ({"inst.wav": tone_wav, "vocal.wav": b""}, None, "audio_empty", "vocal.wav is empty"),
        "no_samples": ({"inst.wav": _empty_wav(), "vocal.wav": tone_wav}, None, "audio_empty", "inst.wav"),
        "header_only": ({"inst.wav": tone_wav[:40], "vocal.wav": tone_wav}, None, "audio_corrupt", "inst.wav"),
        "truncated": ({"inst.wav": tone_wav, "vocal.wav": tone_wav[: len(tone_wav) // 3 + 1]}, None,
                      "audio_corrupt", "vocal.wav"),
        "too_short": ({"inst.wav": tone_wav, "vocal.wav": short}, None, "audio_too_short", "minimum"),
        "too_large": ({"inst.wav": big, "vocal.wav": tone_wav}, None, "file_too_large", "limit is 2 MiB"),
    }
    return cases


def test_every_bad_upload_is_rejected_with_a_reason_and_the_batch_goes_on(
        engine, db_url, local_store, audio_dir, tone_wav):
    expected = {}
    for name, (files, manifest, code, words) in _bad_cases(audio_dir, tone_wav).items():
        job = uuid.uuid4()
        write_upload(local_store, files, job_id=job, manifest=manifest(job) if manifest else None)
        expected[job] = (name, code, words)
    # Hostile names, written behind the store's back.
    control = uuid.uuid4()
    write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav}, job_id=control)
    _raw_file(local_store, f"uploads/{control}/evil\n.wav", b"x")
    expected[control] = ("control_char", "hostile_name", "U+000A")
    not_utf8 = uuid.uuid4()
    write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav}, job_id=not_utf8)
    _raw_file(local_store, f"uploads/{not_utf8}/".encode() + b"\xff\xfe.wav", b"x")
    expected[not_utf8] = ("not_utf8", "hostile_name", "UTF-8")
    _raw_file(local_store, "uploads/not-a-uuid/manifest.json", b"{}")
    _raw_file(local_store, "uploads/esc\x1bdir/manifest.json", b"{}")
    good = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav, "notes.txt": b"hi"})

    result = materialize(db_url, local_store, max_file_mib=2)
    assert result.success
    md = metadata(result)
    assert md["accepted"] == 1 and md["rejected"] == len(expected) + 2

    jobs = {r["job_id"]: r for r in rows(engine, "SELECT * FROM jobs")}
    assert jobs[good]["status"] == "registered"
    for job, (name, code, words) in expected.items():
        row = jobs[job]
        assert (name, row["status"], row["reject_code"]) == (name, "rejected", code)
        assert words in row["reject_reason"], (name, row["reject_reason"])
    by_prefix = {r["upload_prefix"]: r for r in jobs.values()}
    assert by_prefix["uploads/not-a-uuid/"]["reject_code"] in ("manifest_invalid", "job_id_mismatch")
    assert by_prefix["uploads/esc\x1bdir/"]["reject_code"] == "hostile_name"

    # Nothing half-written: only the good upload has vault items; every reject is audited.
    assert {r["job_id"] for r in rows(engine, "SELECT job_id FROM vault_items")} == {good}
    audited = rows(engine, "SELECT target_id FROM audit_logs WHERE action = 'upload.rejected'")
    assert len(audited) == len(expected) + 2
    [check] = result.get_asset_check_evaluations()
    assert check.passed


def test_too_long_audio_is_rejected_by_the_configured_limit(engine, db_url, local_store, tone_wav):
    job = write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    result = materialize(db_url, local_store, max_duration_s=2.0)
    assert metadata(result)["rejected"] == 1
    [row] = rows(engine, "SELECT reject_code, reject_reason FROM jobs WHERE job_id = :j", j=job)
    assert row["reject_code"] == "audio_too_long" and "limit" in row["reject_reason"]


def test_infrastructure_failure_fails_the_run_and_writes_nothing_half(db_url, local_store, tone_wav, engine):
    write_upload(local_store, {"inst.wav": tone_wav, "vocal.wav": tone_wav})
    with engine.begin() as conn:  # break the database under the asset: vault_items is gone
        conn.execute(text("ALTER TABLE vault_items RENAME TO vault_items_moved"))
    result = materialize(db_url, local_store)
    assert not result.success
    assert rows(engine, "SELECT * FROM jobs") == []  # the job row rolled back with its vault items
