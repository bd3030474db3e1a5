"""What each audio stage does for one job: read its inputs from the object store, call the science,
write its outputs back. The Dagster assets choose the jobs, run these in a worker pool and record
the results; bad input raises ``StageFailure`` with a reason a person understands.

Object layout: ``derived/<job_id>/mix.wav`` and ``master.wav`` (24-bit stereo),
``previews/<job_id>/<clip>.m4a`` (mono AAC 96 kbps), ``<clip>.waveform.png`` and ``.json``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixai_pipeline.lib.audio.io import decode, resample, write_wav
from mixai_pipeline.lib.ingestion.manifest import RejectError
from mixai_pipeline.lib.storage.object_store import ObjectNotFound, ObjectStore

ANALYSIS_SR = 22050


class StageFailure(Exception):
    """This job cannot go through this stage (bad or missing input); the batch goes on."""


@dataclass(frozen=True)
class JobInput:
    job_id: str
    plan: str
    preset: str | None
    inst_path: str
    vocal_path: str
    extra: dict[str, Any] = field(default_factory=dict)  # results of earlier stages


@dataclass(frozen=True)
class StoredObject:
    kind: str                 # vault_items.kind
    path: str
    clip_kind: str | None
    local_file: Path | None   # what to upload; None once uploaded
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    codec: str | None = None


@dataclass(frozen=True)
class StageResult:
    job_id: str
    data: dict[str, Any]
    objects: tuple[StoredObject, ...] = ()


def load(store: ObjectStore, key: str, *, sr: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    label = Path(key).name
    try:
        with store.local_path(key) as path:
            return decode(path, sr=sr, mono=mono, label=label)
    except ObjectNotFound:
        raise StageFailure(f"{label} is no longer in the store (purged by retention?)") from None
    except RejectError as err:
        raise StageFailure(err.reason) from None


def require_sound(audio: np.ndarray, label: str, floor_db: float = -70.0) -> None:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 10 ** (floor_db / 20):
        raise StageFailure(f"{label} is silent (peak below {floor_db:g} dBFS)")


def align_stage(store: ObjectStore, job: JobInput) -> StageResult:
    from mixai_pipeline.lib.alignment.align import align

    inst, sr = load(store, job.inst_path, sr=ANALYSIS_SR, mono=True)
    vocal, _ = load(store, job.vocal_path, sr=ANALYSIS_SR, mono=True)
    require_sound(inst, "the instrumental")
    require_sound(vocal, "the vocal")
    bpm = job.extra.get("bpm")
    result = align(inst[:, 0], vocal[:, 0], sr, bpm_hint=bpm)
    return StageResult(job.job_id, result.as_dict())


def _upload(store: ObjectStore, objects: list[StoredObject]) -> tuple[StoredObject, ...]:
    stored = []
    for obj in objects:
        store.put_file(obj.path, obj.local_file)
        stored.append(StoredObject(obj.kind, obj.path, obj.clip_kind, None, obj.duration_s, obj.sample_rate,
                                   obj.channels, obj.codec))
    return tuple(stored)


def mix_stage(store: ObjectStore, job: JobInput) -> StageResult:
    from mixai_pipeline.lib.mix.presets import catalog
    from mixai_pipeline.lib.mix.vocal_chain import mix

    try:
        preset = catalog().choose(job.plan, job.preset)
    except ValueError as err:
        raise StageFailure(str(err)) from None
    inst, sr = load(store, job.inst_path)
    vocal, _ = load(store, job.vocal_path, sr=sr)  # the mix runs at the instrumental's rate
    require_sound(inst, "the instrumental")
    # A DC offset in the instrumental would pass into the mix and the master (the vocal chain high-passes
    # the vocal; nothing filters the instrumental), where loudness normalisation scales it up into the headroom.
    inst = inst - inst.mean(axis=0, dtype=np.float64).astype(np.float32)
    result = mix(inst, vocal, sr, preset, offset_ms=float(job.extra.get("offset_ms") or 0.0))
    with tempfile.TemporaryDirectory(prefix="mixai-mix-") as tmp:
        out = write_wav(Path(tmp) / "mix.wav", result.audio, sr)
        objects = _upload(store, [StoredObject("mix", f"derived/{job.job_id}/mix.wav", None, out,
                                               result.audio.shape[0] / sr, sr, 2, "pcm_s24le")])
    return StageResult(job.job_id, {"preset": preset.id,
                                    "preset_source": "manifest" if job.preset else "plan_default",
                                    "sample_peak": result.sample_peak,
                                    "trim_db": result.clipped_prevented_db}, objects)


def master_stage(store: ObjectStore, job: JobInput) -> StageResult:
    """The master of the job's mix with the served model's parameters when ``master_params`` has them, else
    the rules' estimate from the audio; the rules' estimate is always kept (it is the master_reg label)."""
    from mixai_pipeline.lib.dsp.master import MasterParams, estimate_master_params, input_stats, master

    mixed, sr = load(store, f"derived/{job.job_id}/mix.wav")
    stats = input_stats(mixed, sr)
    rule_params = estimate_master_params(mixed, sr, job.plan, stats=stats)
    model_params = job.extra.get("model_master_params")
    params = MasterParams(*model_params) if model_params else rule_params
    mastered, report = master(mixed, sr, params, stats=stats)
    with tempfile.TemporaryDirectory(prefix="mixai-master-") as tmp:
        out = write_wav(Path(tmp) / "master.wav", mastered, sr)
        objects = _upload(store, [StoredObject("master", f"derived/{job.job_id}/master.wav", None, out,
                                               mastered.shape[0] / sr, sr, mastered.shape[1], "pcm_s24le")])
    return StageResult(job.job_id, {"params": params.as_list(), "params_source": "model" if model_params else "rules",
                                    "rule_params": rule_params.as_list(), "model": job.extra.get("master_model"),
                                    "report": report}, objects)


def preview_stage(store: ObjectStore, job: JobInput) -> StageResult:
    from mixai_pipeline.lib.preview import preview as pv

    sources = {"inst": job.inst_path, "vocal": job.vocal_path, "mix": f"derived/{job.job_id}/mix.wav"}
    data: dict[str, Any] = {}
    objects: list[StoredObject] = []
    with tempfile.TemporaryDirectory(prefix="mixai-preview-") as tmp:
        segments = {}
        for clip, key in sources.items():
            mono, sr = load(store, key, mono=True)
            analysis = resample(mono, sr, ANALYSIS_SR)
            excerpt = pv.representative_excerpt(analysis[:, 0], ANALYSIS_SR)
            segments[clip] = (pv.fade(mono[int(excerpt.start_s * sr): int(excerpt.end_s * sr), 0], sr), sr)
            data[clip] = {"start_s": excerpt.start_s, "end_s": excerpt.end_s, "score": round(excerpt.score, 4)}
        encoded = pv.encode_aac_many([(segment, sr, Path(tmp) / f"{clip}.m4a")
                                      for clip, (segment, sr) in segments.items()])
        for (clip, (segment, sr)), m4a in zip(segments.items(), encoded, strict=True):
            base = f"previews/{job.job_id}/{clip}"
            peaks = pv.waveform_peaks(segment, sr)
            objects += _upload(store, [
                StoredObject("preview", f"{base}.m4a", clip, m4a, segment.shape[0] / sr, pv.preview_sample_rate(sr),
                             1, "aac"),
                StoredObject("waveform", f"{base}.waveform.png", clip,
                             pv.waveform_png(peaks, Path(tmp) / f"{clip}.png")),
                StoredObject("waveform", f"{base}.waveform.json", clip,
                             pv.write_peaks_json(peaks, Path(tmp) / f"{clip}.json")),
            ])
    return StageResult(job.job_id, data, tuple(objects))


def features_stage(store: ObjectStore, job: JobInput) -> StageResult:
    from mixai_pipeline.lib.features.extract import FEATURE_VERSION, extract_features

    sources = {"inst": job.inst_path, "vocal": job.vocal_path, "mix": f"derived/{job.job_id}/mix.wav"}
    vectors = {}
    for clip, key in sources.items():
        audio, sr = load(store, key)
        vector, stats = extract_features(audio, sr)
        vectors[clip] = {"vec": vector.tolist(), "stats": stats}
    return StageResult(job.job_id, {"feature_version": FEATURE_VERSION, "clips": vectors})
