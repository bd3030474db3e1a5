"""The audio chain on bad and unusual audio *content*: one day partition holding one upload per case,
materialized once (registration and every stage), so it also shows that no case crashes the batch.

Each case either processes (job ``done`` with its alignment, mix, master, previews, features and labels)
or is turned away with a reason that names the problem: rejected at registration (``jobs.reject_reason``)
or failed at a stage (``jobs.failure_reason``). ``pytest -s`` prints the table of outcomes.

Upload-level problems (missing files, wrong extensions, truncated or empty files, manifests) are
``test_uploads_asset.py``'s; here the files are valid and their samples are the point.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import soundfile as sf
import soxr
from sqlalchemy import text

from mixai_pipeline.defs.audio.assets import aligned_stems, features_store, labels, masters, mixes, previews
from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.lib.demo import render
from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.ingestion.inbox import partition_key
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.lib.storage.object_store import LocalObjectStore
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline.resources.embedded_postgres import with_database
from mixai_pipeline.settings import BUSINESS_TIMEZONE
from mixai_pipeline_tests.conftest import _create_database, _drop_database, write_upload

pytestmark = pytest.mark.slow
ASSETS = [uploads, aligned_stems, mixes, masters, previews, features_store, labels]
SR = render.SAMPLE_RATE
STEM_S = 10.0
TARGET_LUFS = -14.0  # every plan's master target (lib/dsp/master.py)


# ------------------------------------------------------------------------------------------ the audio

@dataclass(frozen=True)
class Stem:
    audio: np.ndarray            # (samples, channels) float64
    sr: int = SR
    subtype: str = "PCM_16"      # soundfile subtype of the WAV (or FLAC)
    fmt: str = "wav"

    def encode(self) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, self.audio, self.sr, subtype=self.subtype, format=self.fmt.upper())
        return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    inst: Stem
    vocal: Stem
    expect: str                  # "done", "rejected" or "failed"
    reason: tuple[str, ...] = ()  # rejected: (code, text in the reason); failed: (stage, text in the reason)
    checks: dict = field(default_factory=dict)  # extra facts a processed case must show


CASE_NAMES = ("pcm_16bit", "pcm_u8", "pcm_24bit", "float32", "float_over_0dbfs", "silent_inst", "silent_vocal",
              "clipped_inst", "dc_offset", "mono_inst_stereo_vocal", "surround_5_1_inst", "seven_one_inst",
              "rate_8k", "rate_192k", "rate_4k", "three_seconds", "twenty_minutes", "over_twenty_minutes",
              "nan_float", "inf_float", "vocal_longer")


def _resampled(x: np.ndarray, sr: int) -> np.ndarray:
    return x if sr == SR else soxr.resample(x, SR, sr, quality="HQ")


def _cases(inst: np.ndarray, vocal: np.ndarray) -> dict[str, Case]:
    """``inst`` and ``vocal``: a rendered chorale's stems (stereo, 44.1 kHz, shared start), STEM_S long."""

    def tile(x: np.ndarray, seconds: float, sr: int) -> np.ndarray:
        x = _resampled(x.mean(axis=1, keepdims=True), sr)
        n = int(round(seconds * sr))
        return np.tile(x, (n // len(x) + 1, 1))[:n]

    nan_vocal = vocal.copy()
    nan_vocal[1000:1010] = np.nan                     # 10 frames x 2 channels
    inf_inst = inst.copy()
    inf_inst[5000, 0], inf_inst[7000, 1] = np.inf, -np.inf
    surround = np.stack([inst[:, 0], inst[:, 1], 0.5 * inst.mean(axis=1), 0.3 * inst.mean(axis=1),
                         0.3 * inst[:, 0], 0.3 * inst[:, 1]], axis=1)   # L R C LFE Ls Rs
    short = int(3.0 * SR)
    return {
        "pcm_16bit": Case(Stem(inst), Stem(vocal), "done", checks={"inst_codec": "pcm_s16le"}),
        "pcm_u8": Case(Stem(inst, subtype="PCM_U8"), Stem(vocal, subtype="PCM_U8"), "done",
                       checks={"inst_codec": "pcm_u8"}),
        "pcm_24bit": Case(Stem(inst, subtype="PCM_24"), Stem(vocal, subtype="PCM_24"), "done",
                          checks={"inst_codec": "pcm_s24le"}),
        "float32": Case(Stem(inst, subtype="FLOAT"), Stem(vocal, subtype="FLOAT"), "done",
                        checks={"inst_codec": "pcm_f32le"}),
        "float_over_0dbfs": Case(Stem(inst * 6.0, subtype="FLOAT"), Stem(vocal * 6.0, subtype="FLOAT"), "done",
                                 checks={"mix_trimmed": True}),       # +9.5 dBFS peaks: float does not clip
        "silent_inst": Case(Stem(np.zeros_like(inst)), Stem(vocal), "failed",
                            ("aligned_stems", "the instrumental is silent")),
        "silent_vocal": Case(Stem(inst), Stem(np.zeros_like(vocal)), "failed",
                             ("aligned_stems", "the vocal is silent")),
        "clipped_inst": Case(Stem(np.clip(inst * 10.0, -1.0, 1.0)), Stem(vocal), "done",
                             checks={"clipped_fraction": 0.2}),
        "dc_offset": Case(Stem(inst + 0.3), Stem(vocal + 0.3), "done", checks={"dc_free": True}),
        "mono_inst_stereo_vocal": Case(Stem(inst.mean(axis=1, keepdims=True)), Stem(vocal), "done",
                                       checks={"channels": (1, 2)}),
        "surround_5_1_inst": Case(Stem(surround), Stem(vocal), "done", checks={"channels": (6, 2)}),
        "seven_one_inst": Case(Stem(np.hstack([inst] * 4) * 0.5), Stem(vocal), "rejected",
                               ("unsupported_channels", "inst.wav has 8 channels; at most 6 (5.1) are supported")),
        "rate_8k": Case(Stem(_resampled(inst, 8000), 8000), Stem(_resampled(vocal, 8000), 8000), "done",
                        checks={"rate": 8000, "preview_rate": 8000}),
        "rate_192k": Case(Stem(_resampled(inst, 192000), 192000, "PCM_24"),
                          Stem(_resampled(vocal, 192000), 192000, "PCM_24"), "done",
                          checks={"rate": 192000, "preview_rate": 48000}),
        "rate_4k": Case(Stem(_resampled(inst, 4000), 4000), Stem(_resampled(vocal, 4000), 4000), "rejected",
                        ("unsupported_sample_rate", "inst.wav is sampled at 4,000 Hz; supported rates are "
                                                    "8,000-384,000 Hz")),
        "three_seconds": Case(Stem(inst[:short]), Stem(vocal[:short]), "done", checks={"duration_s": 3.0}),
        # 20 minutes is the limit, so it is processed; 16 kHz mono keeps it to about a minute of CPU
        # (44.1 kHz stereo takes ~2 min and ~8 GB at the mix's peak).
        "twenty_minutes": Case(Stem(tile(inst, 1200.0, 16000), 16000, fmt="flac"),
                               Stem(tile(vocal, 1200.0, 16000), 16000, fmt="flac"), "done",
                               checks={"duration_s": 1200.0, "preview_s": 60.0}),
        "over_twenty_minutes": Case(Stem(inst), Stem(tile(vocal, 1201.0, 8000), 8000, fmt="flac"), "rejected",
                                    ("audio_too_long", "vocal.flac lasts 1,201.0 s; the limit is 1,200 s (20 min)")),
        "nan_float": Case(Stem(inst, subtype="FLOAT"), Stem(nan_vocal, subtype="FLOAT"), "rejected",
                          ("audio_corrupt", "vocal.wav contains 20 NaN samples")),
        "inf_float": Case(Stem(inf_inst, subtype="FLOAT"), Stem(vocal, subtype="FLOAT"), "rejected",
                          ("audio_corrupt", "inst.wav contains 2 infinite samples")),
        "vocal_longer": Case(Stem(inst[: int(6.0 * SR)]), Stem(vocal), "done",
                             checks={"duration_s": 6.0}),   # the mix is the instrumental's length
    }


def _chorale_stems(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """BWV 66.6 rendered once: alto/tenor/bass on piano (inst), soprano on choir (vocal), first STEM_S."""
    score = render.load_chorale("bach/bwv66.6")
    info = render.chorale_info(score, "bach/bwv66.6")
    stems = []
    for name, parts, program in (("inst", list(range(1, len(info.part_names))), render.PROGRAMS["piano"]),
                                 ("vocal", [0], render.PROGRAMS["choir"])):
        midi, wav = workdir / f"{name}.mid", workdir / f"{name}.wav"
        render.write_midi(score, parts, program, 92, 1, midi)
        render.synthesize(midi, wav)
        audio, _ = sf.read(wav, always_2d=True)
        audio = audio[: int(STEM_S * SR)]
        stems.append(audio * (0.5 / np.abs(audio).max()))   # peaks at -6 dBFS
    return stems[0], stems[1]


# ----------------------------------------------------------------------------------- one materialization

@dataclass
class Day:
    cases: dict[str, Case]
    jobs: dict[str, str]          # case -> job id
    success: bool
    seconds: float
    rows: dict[str, dict[str, list[dict]]]  # case -> table -> rows of its job
    store: LocalObjectStore


TABLES = {
    "jobs": "SELECT * FROM jobs",
    "alignments": "SELECT * FROM alignments",
    "mixes": "SELECT * FROM mixes",
    "masters": "SELECT * FROM masters",
    "vault_items": "SELECT * FROM vault_items",
    "features_store": "SELECT * FROM features_store",
    "labels": "SELECT * FROM labels",
}


@pytest.fixture(scope="module")
def day(pg_admin_uri, migrated_template, tmp_path_factory) -> Iterator[Day]:
    name = f"badin_{uuid.uuid4().hex[:12]}"
    _create_database(pg_admin_uri, name, template=migrated_template)
    url = with_database(pg_admin_uri, name, "psycopg")
    workdir = tmp_path_factory.mktemp("bad_inputs")
    store = LocalObjectStore(workdir / "objects")
    try:
        cases = _cases(*_chorale_stems(workdir))
        jobs = {}
        for case_name, case in cases.items():
            files = {f"inst.{case.inst.fmt}": case.inst.encode(), f"vocal.{case.vocal.fmt}": case.vocal.encode()}
            jobs[case_name] = str(write_upload(store, files, plan="standard"))
        resources = {"database": Database(url=url),
                     "object_store": ObjectStoreResource(backend="local", root=str(store.root))}
        started = time.monotonic()
        result = dg.materialize(ASSETS, partition_key=partition_key(datetime.now(timezone.utc), BUSINESS_TIMEZONE),
                                resources=resources, raise_on_error=False)
        seconds = time.monotonic() - started
        by_job = {job: case_name for case_name, job in jobs.items()}
        found: dict[str, dict[str, list[dict]]] = {case_name: {t: [] for t in TABLES} for case_name in cases}
        engine = engine_for(url)
        with engine.connect() as conn:
            for table, sql in TABLES.items():
                for row in conn.execute(text(sql)).mappings():
                    found[by_job[str(row["job_id"])]][table].append(dict(row))
        engine.dispose()
        yield Day(cases, jobs, result.success, seconds, found, store)
    finally:
        engine_for(url).dispose()
        _drop_database(pg_admin_uri, name)


def _outcome(rows: dict[str, list[dict]]) -> tuple[str, str]:
    [job] = rows["jobs"]
    if job["status"] == "rejected":
        return "rejected", f"[{job['reject_code']}] {job['reject_reason']}"
    if job["status"] == "failed":
        return "failed", f"[{job['failed_stage']}] {job['failure_reason']}"
    if job["status"] == "done" and rows["masters"]:
        m = rows["masters"][0]
        return "done", f"master {m['lufs_out']:.2f} LUFS, {m['true_peak_dbtp']:.2f} dBTP"
    return job["status"], ""


def test_the_batch_survives_every_case_and_prints_the_table(day):
    lines = [f"\n{'case':<24} {'outcome':<9} reason", f"{'-' * 24} {'-' * 9} {'-' * 60}"]
    for case_name in day.cases:
        outcome, reason = _outcome(day.rows[case_name])
        lines.append(f"{case_name:<24} {outcome:<9} {reason}")
    lines.append(f"(materialized {len(day.cases)} uploads through {len(ASSETS)} assets in {day.seconds:.0f} s)")
    print("\n".join(lines))
    assert day.success, "the day's run failed: a case crashed the batch"
    assert tuple(day.cases) == CASE_NAMES and all(len(day.rows[c]["jobs"]) == 1 for c in day.cases)


# ---------------------------------------------------------------------------------------- per case

def _probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "stream=sample_rate,channels:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    return {**info["streams"][0], **info["format"]}


def _check_done(day: Day, case: Case, rows: dict[str, list[dict]]) -> None:
    [job] = rows["jobs"]
    assert job["status"] == "done", (job["status"], job["failed_stage"], job["failure_reason"])
    assert job["reject_reason"] is None and job["failure_reason"] is None
    assert len(rows["alignments"]) == len(rows["mixes"]) == len(rows["masters"]) == 1

    [master] = rows["masters"]
    assert master["true_peak_dbtp"] <= -1.0 + 1e-6
    assert abs(master["lufs_out"] - TARGET_LUFS) <= 0.5 and master["report"]["target_reached"] is True
    assert master["params"][3] == TARGET_LUFS

    items = {(i["kind"], i["clip_kind"], Path(i["path"]).suffix): i for i in rows["vault_items"]}
    for item in rows["vault_items"]:
        assert day.store.sha256(item["path"]) == item["sha256"]
    assert {k[:2] for k in items} == {("inst", None), ("vocal", None), ("mix", None), ("master", None),
                                      *((kind, clip) for kind in ("preview", "waveform")
                                        for clip in ("inst", "vocal", "mix"))}
    assert len(rows["vault_items"]) == 4 + 3 + 6

    vectors = rows["features_store"]
    assert sorted(v["clip_kind"] for v in vectors) == ["inst", "mix", "vocal"]
    for v in vectors:
        assert v["n_dim"] == len(v["vec"]) == len(DIM_NAMES)
        assert np.isfinite(np.asarray(v["vec"], dtype=np.float64)).all(), v["clip_kind"]
    assert sorted(r["task"] for r in rows["labels"]) == ["align_conf", "master_reg", "preset_cls"]

    inst, mix = items[("inst", None, f".{case.inst.fmt}")], items[("mix", None, ".wav")]
    master_item = items[("master", None, ".wav")]
    assert mix["channels"] == master_item["channels"] == 2
    assert mix["sample_rate"] == master_item["sample_rate"] == case.inst.sr  # the mix runs at the inst's rate
    assert abs(mix["duration_s"] - case.inst.audio.shape[0] / case.inst.sr) < 1e-3

    checks = case.checks
    if "inst_codec" in checks:
        assert inst["codec"] == checks["inst_codec"]
    if "channels" in checks:
        assert (inst["channels"], items[("vocal", None, f".{case.vocal.fmt}")]["channels"]) == checks["channels"]
    if "rate" in checks:
        assert inst["sample_rate"] == checks["rate"]
    if "preview_rate" in checks:
        preview = items[("preview", "mix", ".m4a")]
        assert preview["sample_rate"] == checks["preview_rate"]
        assert int(_probe(day.store.root / preview["path"])["sample_rate"]) == checks["preview_rate"]
    if "duration_s" in checks:
        assert abs(mix["duration_s"] - checks["duration_s"]) < 1e-3
    if "preview_s" in checks:
        assert abs(items[("preview", "mix", ".m4a")]["duration_s"] - checks["preview_s"]) < 0.01
    if checks.get("mix_trimmed"):
        assert rows["mixes"][0]["stats"]["trim_db"] > 0   # the sum was scaled into range, not clipped
    if "clipped_fraction" in checks:
        assert np.mean(np.abs(case.inst.audio) >= 1.0) >= checks["clipped_fraction"]  # the input really is clipped
    if checks.get("dc_free"):
        for kind in ("mix", "master"):
            audio, _ = sf.read(day.store.root / items[(kind, None, ".wav")]["path"], always_2d=True)
            assert np.abs(audio.mean(axis=0)).max() < 1e-3, (kind, audio.mean(axis=0))


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_case_is_processed_or_turned_away_with_its_reason(day, case_name):
    case, rows = day.cases[case_name], day.rows[case_name]
    [job] = rows["jobs"]
    if case.expect == "done":
        _check_done(day, case, rows)
    elif case.expect == "rejected":
        code, reason = case.reason
        assert (job["status"], job["reject_code"]) == ("rejected", code), job
        assert reason in job["reject_reason"]
        assert not rows["alignments"] and not [i for i in rows["vault_items"] if i["kind"] not in ("inst", "vocal")]
    else:
        stage, reason = case.reason
        assert (job["status"], job["failed_stage"]) == ("failed", stage), job
        assert reason in job["failure_reason"]
        assert not rows["mixes"] and not rows["features_store"] and not rows["labels"]
