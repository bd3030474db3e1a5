"""The audio stages materialized on rendered uploads with real resources (PostgreSQL, ffmpeg, store)."""

import json
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pytest
from sqlalchemy import text

from mixai_pipeline.defs.audio.assets import aligned_stems, features_store, labels, masters, mixes, previews
from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.lib.demo.uploads import GOOD_UPLOADS, write_good_upload
from mixai_pipeline.lib.ingestion.inbox import partition_key
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline.settings import BUSINESS_TIMEZONE
from mixai_pipeline_tests.conftest import make_audio, write_upload

pytestmark = pytest.mark.slow
ASSETS = [uploads, aligned_stems, mixes, masters, previews, features_store, labels]


@pytest.fixture
def day_with_uploads(local_store, tmp_path, audio_dir):
    truth = {}
    for index in (0, 3):  # bwv66.6 shared start (wav/wav), bwv153.1 vocal +1200 ms (m4a/ogg)
        upload = write_good_upload(local_store, index, GOOD_UPLOADS[index], tmp_path)
        truth[str(upload.job_id)] = GOOD_UPLOADS[index][4]
    silent = tmp_path / "silent.wav"
    import soundfile as sf

    sf.write(silent, np.zeros((44100 * 3, 2), dtype=np.float32), 44100)
    tone = make_audio(audio_dir / "tone.wav", 3.0).read_bytes()
    silent_job = write_upload(local_store, {"inst.wav": tone, "vocal.wav": silent.read_bytes()})
    return truth, str(silent_job)


def materialize(db_url, store):
    resources = {"database": Database(url=db_url),
                 "object_store": ObjectStoreResource(backend="local", root=str(store.root))}
    return dg.materialize(ASSETS, partition_key=partition_key(datetime.now(timezone.utc), BUSINESS_TIMEZONE),
                          resources=resources)


def rows(engine, sql):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql)).mappings()]


def test_stages_produce_alignment_mix_master_previews(engine, db_url, local_store, day_with_uploads):
    truth, silent_job = day_with_uploads
    result = materialize(db_url, local_store)
    assert result.success

    alignments = {str(r["job_id"]): r for r in rows(engine, "SELECT * FROM alignments")}
    assert set(alignments) == set(truth)
    for job, offset in truth.items():
        a = alignments[job]
        if a["confidence"] >= 0.5:
            assert abs(a["offset_ms"] - offset) < 50, a

    [failed] = rows(engine, "SELECT job_id, status, failed_stage, failure_reason FROM jobs WHERE status = 'failed'")
    assert str(failed["job_id"]) == silent_job and failed["failed_stage"] == "aligned_stems"
    assert "silent" in failed["failure_reason"]

    mixes_ = rows(engine, "SELECT * FROM mixes")
    assert {r["preset"] for r in mixes_} <= {"wide_pop", "studio_shine", "clean_light"}
    for m in rows(engine, "SELECT * FROM masters"):
        assert m["true_peak_dbtp"] <= -1.0 + 1e-6
        assert abs(m["lufs_out"] - m["params"][3]) <= 0.5
        assert local_store.exists(m["path"])

    items = rows(engine, "SELECT kind, clip_kind, path, sha256, expires_at FROM vault_items "
                         "WHERE kind NOT IN ('inst', 'vocal')")
    by_kind = {}
    for item in items:
        by_kind.setdefault(item["kind"], []).append(item)
        assert local_store.sha256(item["path"]) == item["sha256"]
    assert len(by_kind["mix"]) == len(by_kind["master"]) == 2
    assert len(by_kind["preview"]) == 6 and len(by_kind["waveform"]) == 12
    peaks = json.loads(local_store.get_bytes(next(i["path"] for i in by_kind["waveform"]
                                                  if i["path"].endswith(".json"))))
    assert 25 <= peaks["duration_s"] <= 60

    vectors = rows(engine, "SELECT clip_kind, n_dim, vec FROM features_store")
    assert sorted(v["clip_kind"] for v in vectors) == ["inst", "inst", "mix", "mix", "vocal", "vocal"]
    assert all(v["n_dim"] == len(v["vec"]) == 160 and np.isfinite(v["vec"]).all() for v in vectors)
    [layout] = rows(engine, "SELECT feature_version, n_dim, dim_names FROM feature_layouts")
    assert layout["dim_names"][0] == "logmel_mean_00" and len(layout["dim_names"]) == layout["n_dim"]
    labels_ = rows(engine, "SELECT job_id, task, y_reg, y_cls, quality FROM labels")
    assert len(labels_) == 6 and {r["quality"] for r in labels_} == {"auto"}
    from mixai_pipeline.lib.mix.presets import PRESET_IDS

    for label in labels_:
        if label["task"] == "master_reg":
            assert len(label["y_reg"]) == 4 and label["y_reg"][3] == -14.0
        elif label["task"] == "preset_cls":
            assert label["y_cls"] in PRESET_IDS
        else:
            assert label["y_cls"] in ("ok", "warn", "fail")
    assert {r["status"] for r in rows(engine, "SELECT status FROM jobs")} == {"done", "failed"}

    # Re-materializing the day gives the same rows.
    before = rows(engine, "SELECT path, sha256, expires_at FROM vault_items ORDER BY path")
    assert materialize(db_url, local_store).success
    assert rows(engine, "SELECT path, sha256, expires_at FROM vault_items ORDER BY path") == before
    assert len(rows(engine, "SELECT * FROM alignments")) == 2
