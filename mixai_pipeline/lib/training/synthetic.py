"""Synthetic but realistic uploads, for tests, benchmarks and the demo: one generator, two views.

- ``synthetic_uploads``: the uploads as records (``SyntheticUpload``: owner, plan, bpm, inst/vocal/mix
  feature vectors, alignment, labels and their quality);
- ``synthetic_training_set`` (= ``training_frame(synthetic_uploads(...))``): their rows in the
  training-set format (``dataset.TRAINING_SET_SCHEMA``, inputs built by the same ``dataset.*_input``
  functions as real rows);
- ``insert_synthetic_cohort`` writes them into the application database as finished, labelled jobs
  marked synthetic, so that ``dataset.load_training_set`` returns the same rows next to the real ones;
  ``delete_synthetic_cohort`` removes them again.

Structure: users (each with a plan) → songs → uploads. Uploads of one song are near-duplicates: the
song's inst and vocal feature vectors plus a small jitter (``dup_jitter`` × each dimension's spread),
with the song's own label "taste" shared by all of them — what a user re-uploading a re-export looks
like. The group of every row is its user, as in ``dataset.song_groups``.

Features. The inst and vocal clip vectors are drawn from a multivariate normal: the mean and covariance
of a sample of real rows when given (``fit_distribution``), else ``default_distribution(clip)``: every
dimension's typical value and spread (below), correlated through three latent factors — loudness
(log-mel levels, RMS, LUFS, flux, onsets), brightness (high bands up and low bands down, centroid,
rolloff, bandwidth, ZCR, energy ratios) and density (crest factor, LRA, contrast and level spread down,
flatness up) — then clipped to what each dimension can physically be (energy ratios sum to 1, ...).
The mix vector is derived from both, as a mix of the two stems: levels add as powers, the tempo and
stereo image come from the instrumental, other dimensions are power-weighted averages.

Labels (``learnable=True``), each plus noise:

- ``master_reg``: the master rule in feature space (``feature_rules.master_params_from_mix``, the rule
  shapes of ``lib.dsp.master.estimate_master_params`` on the mix's features: shelves against the tonal
  balance with a 1 dB dead band, half the excess corrected, capped at ±6 dB; compression from the crest
  factor, ``0.5 · (crest_factor_db - 10)`` within 0..6 dB; -14 LUFS). Noise: a per-song taste
  (``song_noise_db``, shared by the song's uploads) and a per-upload term (``row_noise_db``).
- ``preset_cls``: the product's own rules (``lib.pipeline.labels.preset_label``: tempo, vocal
  brightness, vocal-vs-inst level, the plan), then with probability ``label_noise`` another preset the
  plan allows.
- ``align_conf``: alignment statistics drawn per song the way each aligner method reports them, then
  ``lib.pipeline.labels.align_conf_label``, then with probability ``label_noise`` another class.

Label quality: 10 % human (no label noise), 80 % auto, 10 % low (three times the noise).
``learnable=False`` gives pure-noise labels: the same rules applied to an independent draw (features,
alignment, and for presets the plan too), so the labels have their usual distribution but nothing to do
with the inputs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
from mixai_pipeline.lib.mix.presets import catalog
from mixai_pipeline.lib.pipeline.labels import align_conf_label, preset_label
from mixai_pipeline.lib.training import dataset
from mixai_pipeline.lib.training.feature_rules import master_params_from_mix

N = len(DIM_NAMES)
IDX = {name: i for i, name in enumerate(DIM_NAMES)}

PLAN_SHARES = {"freetrial": 0.1, "lite": 0.2, "standard": 0.4, "creator": 0.3}
QUALITY_SHARES = {"human": 0.1, "auto": 0.8, "low": 0.1}
NOISE_FACTOR = {"human": 0.0, "auto": 1.0, "low": 3.0}


@dataclass(frozen=True)
class FeatureDistribution:
    mean: np.ndarray  # (160,)
    cov: np.ndarray   # (160, 160)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 1e-12, None))


# Typical value and spread per dimension (full stems of pop songs; vocal differs where noted).
def _default_stats(clip: str) -> tuple[np.ndarray, np.ndarray]:
    vocal = clip == "vocal"
    mean, std = np.zeros(N), np.zeros(N)

    def put(name: str, m: float, s: float) -> None:
        mean[IDX[name]], std[IDX[name]] = m, s

    for i in range(64):  # log-mel level falls with frequency (a pink-ish tilt), vocal thinner at the bottom
        low_cut = 15.0 * max(0.0, 1 - i / 8) if vocal else 0.0
        put(f"logmel_mean_{i:02d}", -28.0 - 0.45 * i - low_cut, 6.0)
        put(f"logmel_std_{i:02d}", 9.0 if vocal else 7.0, 2.0)
    for name, m, s in (("rms_mean", 0.08 if vocal else 0.12, 0.04), ("rms_std", 0.06, 0.02),
                       ("zcr_mean", 0.09, 0.03), ("zcr_std", 0.05, 0.02),
                       ("spectral_centroid_mean", 2100.0 if vocal else 1800.0, 650.0 if vocal else 500.0),
                       ("spectral_centroid_std", 700.0, 200.0),
                       ("spectral_rolloff_mean", 4200.0, 1200.0), ("spectral_rolloff_std", 1500.0, 400.0),
                       ("spectral_flux_mean", 3.0, 1.0), ("spectral_flux_std", 1.5, 0.5),
                       ("integrated_loudness_lufs", -18.0 if vocal else -15.0, 4.0 if vocal else 3.0),
                       ("loudness_range_lu", 7.0 if vocal else 5.0, 2.5), ("crest_factor_db", 14.0, 3.0),
                       ("spectral_bandwidth_mean", 2200.0, 500.0), ("spectral_bandwidth_std", 600.0, 150.0),
                       ("spectral_flatness_mean", 0.02, 0.015), ("spectral_flatness_std", 0.03, 0.015),
                       ("onset_strength_mean", 1.2, 0.4), ("onset_strength_std", 1.0, 0.3),
                       ("tempo_bpm", 112.0, 26.0),
                       ("energy_ratio_low", 0.10 if vocal else 0.30, 0.05 if vocal else 0.10),
                       ("energy_ratio_mid", 0.75 if vocal else 0.58, 0.08),
                       ("energy_ratio_high", 0.15 if vocal else 0.12, 0.06),
                       ("stereo_correlation", 0.95 if vocal else 0.8, 0.05 if vocal else 0.12),
                       ("stereo_side_ratio", 0.03 if vocal else 0.1, 0.03 if vocal else 0.06)):
        put(name, m, s)
    for i in range(7):
        put(f"spectral_contrast_mean_{i}", 20.0, 4.0)
    return mean, std


def _factor_loadings() -> np.ndarray:
    """(160, 3) loadings on loudness, brightness, density (standardised units)."""
    f = np.zeros((N, 3))
    for i in range(64):
        f[IDX[f"logmel_mean_{i:02d}"]] = (0.7, 1.2 * (i / 63 - 0.5), 0.0)
        f[IDX[f"logmel_std_{i:02d}"], 2] = -0.4
    for name, load in (("rms_mean", 0.7), ("integrated_loudness_lufs", 0.8), ("spectral_flux_mean", 0.5),
                       ("onset_strength_mean", 0.4)):
        f[IDX[name], 0] = load
    for name, load in (("spectral_centroid_mean", 0.8), ("spectral_rolloff_mean", 0.8), ("zcr_mean", 0.6),
                       ("spectral_bandwidth_mean", 0.6), ("energy_ratio_high", 0.6), ("energy_ratio_low", -0.6)):
        f[IDX[name], 1] = load
    for name, load in (("crest_factor_db", -0.7), ("loudness_range_lu", -0.5), ("spectral_flatness_mean", 0.4),
                       ("rms_std", -0.3), *((f"spectral_contrast_mean_{i}", -0.5) for i in range(7))):
        f[IDX[name], 2] = load
    norm = np.sqrt((f ** 2).sum(axis=1, keepdims=True))
    return np.where(norm > 0.95, f * 0.95 / np.maximum(norm, 1e-12), f)


def default_distribution(clip: str = "inst") -> FeatureDistribution:
    """The documented default for an ``inst`` or ``vocal`` clip (module docstring)."""
    if clip not in ("inst", "vocal"):
        raise ValueError(f"clip must be inst or vocal, got {clip!r}")
    mean, std = _default_stats(clip)
    loadings = _factor_loadings()
    corr = loadings @ loadings.T
    np.fill_diagonal(corr, 1.0)
    return FeatureDistribution(mean, corr * np.outer(std, std))


def fit_distribution(vectors: np.ndarray, shrinkage: float = 0.1) -> FeatureDistribution:
    """Mean and covariance of a sample of real clip vectors ``(n, 160)``, the covariance shrunk towards
    its diagonal by ``shrinkage`` so that a small sample still gives a usable (positive definite) one."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != N or x.shape[0] < 2:
        raise ValueError(f"need at least 2 vectors of {N} dimensions, got shape {x.shape}")
    cov = np.cov(x, rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
    cov += np.eye(N) * 1e-9 * max(float(np.trace(cov)) / N, 1e-12)
    return FeatureDistribution(x.mean(axis=0), cov)


def physical(vectors: np.ndarray) -> np.ndarray:
    """Clip drawn vectors to what each dimension can be (in place); returns them as float32."""
    v = vectors
    nonneg = [i for name, i in IDX.items() if not name.startswith(("logmel_mean", "integrated", "stereo_corr"))]
    v[:, nonneg] = np.maximum(v[:, nonneg], 0.0)
    logmel = [IDX[f"logmel_mean_{i:02d}"] for i in range(64)]
    v[:, logmel] = np.clip(v[:, logmel], -100.0, 0.0)
    v[:, IDX["integrated_loudness_lufs"]] = np.clip(v[:, IDX["integrated_loudness_lufs"]], -70.0, -1.0)
    v[:, IDX["spectral_flatness_mean"]] = np.clip(v[:, IDX["spectral_flatness_mean"]], 1e-4, 1.0)
    v[:, IDX["tempo_bpm"]] = np.clip(v[:, IDX["tempo_bpm"]], 50.0, 220.0)
    v[:, IDX["stereo_correlation"]] = np.clip(v[:, IDX["stereo_correlation"]], -1.0, 1.0)
    v[:, IDX["stereo_side_ratio"]] = np.clip(v[:, IDX["stereo_side_ratio"]], 0.0, 1.0)
    bands = [IDX["energy_ratio_low"], IDX["energy_ratio_mid"], IDX["energy_ratio_high"]]
    ratios = np.clip(v[:, bands], 0.01, None)
    v[:, bands] = ratios / ratios.sum(axis=1, keepdims=True)
    return v.astype(np.float32)


def draw(rng: np.random.Generator, n: int, dist: FeatureDistribution) -> np.ndarray:
    """``n`` physical clip vectors (float64 before the final clip) from ``dist``."""
    return rng.multivariate_normal(dist.mean, dist.cov, size=n, method="eigh")


def mix_of(inst: np.ndarray, vocal: np.ndarray) -> np.ndarray:
    """The feature vector of a mix of the two stems, row-wise (see the module docstring)."""
    lufs = IDX["integrated_loudness_lufs"]
    p_inst, p_vocal = 10 ** (inst[:, lufs] / 10), 10 ** (vocal[:, lufs] / 10)
    w = (p_inst / (p_inst + p_vocal))[:, None]
    mix = w * inst + (1 - w) * vocal
    logmel = [IDX[f"logmel_mean_{i:02d}"] for i in range(64)]
    mix[:, logmel] = 10 * np.log10(10 ** (inst[:, logmel] / 10) + 10 ** (vocal[:, logmel] / 10))
    mix[:, lufs] = 10 * np.log10(p_inst + p_vocal)
    for name in ("tempo_bpm", "stereo_side_ratio"):
        mix[:, IDX[name]] = inst[:, IDX[name]]
    return physical(mix.astype(np.float64))


# The label rule is shared with the serving fallback; kept under this name for synthetic's callers.
master_labels = master_params_from_mix


def _alignment(rng: np.random.Generator) -> dict:
    """One song's alignment statistics, the way lib.alignment reports them per method."""
    method = rng.choice(dataset.ALIGN_METHODS, p=[0.5, 0.35, 0.15])
    offset = float(rng.uniform(-500, 2500))
    tempo_ratio = float(1 + np.clip(rng.normal(0, 0.004), -0.0099, 0.0099)) if rng.random() < 0.3 else None
    a = {"method": str(method), "offset_ms": offset, "dtw_cost": float(rng.uniform(0.05, 0.45)),
         "drift_inliers": float(rng.uniform(0.5, 1.0)), "beat_period_ms": float(60000 / rng.uniform(70, 170)),
         "tempo_ratio": tempo_ratio,
         "drift_ms_per_min": (tempo_ratio - 1) * 60000 if tempo_ratio is not None else None}
    if method == "gcc_phat":
        a["gcc_psr"] = float(rng.uniform(25, 42))
        a["gcc_offset_ms"] = offset
    else:
        a["gcc_psr"] = float(rng.uniform(3, 25))
        a["gcc_offset_ms"] = offset + float(rng.uniform(-3000, 3000))
    if method != "gcc_phat" or rng.random() < 0.5:
        a.update(onset_offset_ms=offset + float(rng.normal(0, 8)), onset_peak_ratio=float(rng.uniform(1.05, 3.0)),
                 beat_ambiguity=float(rng.uniform(0.0, 0.9)), onset_z=float(rng.normal(4, 1.5)),
                 harmony_z=float(rng.normal(2, 1.5)))
    if method == "assume_shared_start":
        a["dtw_cost"] = float(rng.uniform(0.3, 0.7))
    return _with_confidence(a)


def _with_confidence(a: dict) -> dict:
    if a["method"] == "gcc_phat":
        a["confidence"] = 0.5 + 0.5 * float(np.clip((a["gcc_psr"] - 25) / 10, 0, 1))
    elif a["method"] == "onset_xcorr":
        ambiguity = max(a.get("beat_ambiguity") or 0.0, 1 / a["onset_peak_ratio"])
        a["confidence"] = 0.55 if ambiguity >= 0.65 else 0.75
    else:
        a["confidence"] = 0.1
    return a


def _jitter_alignment(rng: np.random.Generator, base: dict, scale: float) -> dict:
    a = {k: (v * (1 + rng.normal(0, scale)) if isinstance(v, float) and k not in ("tempo_ratio", "confidence")
             else v) for k, v in base.items()}
    return _with_confidence(a)


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


@dataclass(frozen=True)
class SyntheticUpload:
    """One synthetic upload: what the database holds for a finished, labelled job, and what its training
    rows are built from (``training_frame``)."""

    job_id: str
    user_id: str
    plan: str
    song: int                  # index of its song in the cohort (a song's uploads are one user's near-duplicates)
    quality: str               # the quality of every label of the upload
    bpm: float | None          # the tempo the manifest gave (None: not given)
    inst: np.ndarray           # clip feature vectors: (160,) float32 in DIM_NAMES order
    vocal: np.ndarray
    mix: np.ndarray
    alignment: dict | None     # the aligner's statistics (AlignmentResult fields); None unless align_conf is a task
    labels: dict[str, tuple[float, ...] | str]  # per task: the four master params (MASTER_PARAMS order) or the class


def synthetic_uploads(n_jobs: int, *, tasks: Iterable[str] = dataset.TASKS, seed: int = 0,
                      learnable: bool = True, label_noise: float = 0.1, song_noise_db: float = 0.75,
                      row_noise_db: float = 0.25, dup_jitter: float = 0.02,
                      songs_per_user: tuple[int, int] = (1, 6), uploads_per_song: tuple[int, int] = (1, 4),
                      distributions: Mapping[str, FeatureDistribution] | None = None) -> list[SyntheticUpload]:
    """``n_jobs`` synthetic uploads (module docstring), in generation order, labelled for ``tasks``.
    Deterministic for a given ``seed`` and parameters; ``songs_per_user`` and ``uploads_per_song`` are
    inclusive ranges. The random stream depends on every parameter, ``tasks`` included."""
    tasks = list(tasks)
    if n_jobs < 0:
        raise ValueError(f"n_jobs must be >= 0, got {n_jobs}")
    if n_jobs == 0:
        return []
    rng = np.random.default_rng(seed)
    dists = {clip: (distributions or {}).get(clip) or default_distribution(clip) for clip in ("inst", "vocal")}
    allowed = {plan: catalog().allowed(plan) for plan in PLAN_SHARES}

    # structure: users -> songs -> uploads
    song_user: list[int] = []
    upload_song: list[int] = []
    users: list[tuple[str, str]] = []
    while len(upload_song) < n_jobs:
        users.append((_uuid(rng), str(rng.choice(list(PLAN_SHARES), p=list(PLAN_SHARES.values())))))
        for _ in range(rng.integers(songs_per_user[0], songs_per_user[1] + 1)):
            song_user.append(len(users) - 1)
            upload_song += [len(song_user) - 1] * int(rng.integers(uploads_per_song[0], uploads_per_song[1] + 1))
    upload_song = np.asarray(upload_song[:n_jobs])
    n_songs = int(upload_song.max()) + 1

    # features: one draw per song, a jitter per upload; an independent decoy draw for noise labels
    def stems(n_rows_of_song: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for clip in ("inst", "vocal"):
            base = draw(rng, n_songs, dists[clip])
            rows = base[n_rows_of_song] + rng.normal(0, dup_jitter, (len(n_rows_of_song), N)) * dists[clip].std
            out.append(physical(rows))
        return out[0], out[1]

    inst, vocal = stems(upload_song)
    mix = mix_of(inst.astype(np.float64), vocal.astype(np.float64))
    label_inst, label_vocal, label_mix = (inst, vocal, mix) if learnable else (*stems(upload_song), None)
    if label_mix is None:
        label_mix = mix_of(label_inst.astype(np.float64), label_vocal.astype(np.float64))

    quality = rng.choice(list(QUALITY_SHARES), size=n_jobs, p=list(QUALITY_SHARES.values()))
    noise = np.array([NOISE_FACTOR[q] for q in quality])
    song_bpm_given = rng.random(n_songs) < 0.5

    # master_reg labels
    song_taste = rng.normal(0, song_noise_db, (n_songs, 3))
    master = master_params_from_mix(label_mix)
    master[:, :3] += song_taste[upload_song] + rng.normal(0, row_noise_db, (n_jobs, 3)) * noise[:, None]
    for k, name in enumerate(dataset.MASTER_PARAMS):
        master[:, k] = np.clip(master[:, k], *dataset.MASTER_PARAM_RANGES[name])

    align_base = [_alignment(rng) for _ in range(n_songs)]
    label_align_base = align_base if learnable else [_alignment(rng) for _ in range(n_songs)]
    flip = rng.random((n_jobs, 2)) < label_noise * noise[:, None]
    decoy_plans = rng.choice(list(PLAN_SHARES), size=n_jobs, p=list(PLAN_SHARES.values())).tolist()
    job_ids = [_uuid(rng) for _ in range(n_jobs)]

    # Per upload, in this order: the draws below consume the stream, so the order is part of the output.
    uploads = []
    for j in range(n_jobs):
        song = int(upload_song[j])
        user_id, plan = users[song_user[song]]
        labels: dict[str, tuple[float, ...] | str] = {}
        alignment = None
        if "master_reg" in tasks:
            labels["master_reg"] = tuple(master[j].tolist())
        if "preset_cls" in tasks:
            label_bpm = float(round(label_inst[j, IDX["tempo_bpm"]])) if song_bpm_given[song] else None
            label_plan = plan if learnable else decoy_plans[j]
            preset, _ = preset_label(label_plan, label_inst[j].tolist(), label_vocal[j].tolist(), label_bpm)
            if flip[j, 0]:
                preset = str(rng.choice(allowed[label_plan]))
            labels["preset_cls"] = preset
        if "align_conf" in tasks:
            alignment = _jitter_alignment(rng, align_base[song], dup_jitter)
            label_source = alignment if learnable else _jitter_alignment(rng, label_align_base[song], dup_jitter)
            label = align_conf_label(label_source)
            if flip[j, 1]:
                label = str(rng.choice([c for c in dataset.ALIGN_CLASSES if c != label]))
            labels["align_conf"] = label
        bpm = float(round(inst[j, IDX["tempo_bpm"]])) if song_bpm_given[song] else None
        uploads.append(SyntheticUpload(job_id=job_ids[j], user_id=user_id, plan=plan, song=song,
                                       quality=str(quality[j]), bpm=bpm, inst=inst[j], vocal=vocal[j], mix=mix[j],
                                       alignment=alignment, labels=labels))
    return uploads


def model_input(upload: SyntheticUpload, task: str) -> np.ndarray:
    """The upload's input for ``task``, by the ``dataset.*_input`` builders (as for real rows)."""
    if task == "master_reg":
        return dataset.master_input(upload.mix)
    if task == "preset_cls":
        return dataset.preset_input(upload.vocal, upload.mix, bpm=upload.bpm, plan=upload.plan)
    if task == "align_conf":
        return dataset.align_input(upload.alignment)
    raise ValueError(f"unknown task {task!r}")


def training_frame(uploads: Iterable[SyntheticUpload]) -> pd.DataFrame:
    """The training-set rows of ``uploads``: one per upload and labelled task, validated, sorted by key. The
    group of a row is its user (what ``dataset.song_groups`` gives when no instrumental is shared)."""
    no_reg = dict.fromkeys(dataset.MASTER_PARAMS, math.nan)
    rows = []
    for upload in uploads:
        common = {"job_id": upload.job_id, "user_id": upload.user_id, "group": f"u:{upload.user_id}",
                  "plan": upload.plan, "quality": upload.quality, "weight": dataset.QUALITY_WEIGHTS[upload.quality]}
        for task, label in upload.labels.items():
            targets = (dict(zip(dataset.MASTER_PARAMS, label, strict=True)) | {"y_cls": None}
                       if task == "master_reg" else no_reg | {"y_cls": label})
            rows.append({**common, "task": task, "x": model_input(upload, task), **targets})
    if not rows:
        return dataset.empty_frame()
    frame = pd.DataFrame.from_records(rows, columns=list(dataset.COLUMNS))
    return dataset.validate(frame.sort_values(["job_id", "task"], kind="stable").reset_index(drop=True))


def synthetic_training_set(n_jobs: int, *, tasks: Iterable[str] = dataset.TASKS, seed: int = 0,
                           learnable: bool = True, label_noise: float = 0.1, song_noise_db: float = 0.75,
                           row_noise_db: float = 0.25, dup_jitter: float = 0.02,
                           songs_per_user: tuple[int, int] = (1, 6), uploads_per_song: tuple[int, int] = (1, 4),
                           distributions: Mapping[str, FeatureDistribution] | None = None) -> pd.DataFrame:
    """``n_jobs`` synthetic uploads, one row per job and task, valid for ``dataset.TRAINING_SET_SCHEMA``:
    ``training_frame(synthetic_uploads(...))`` with the same parameters."""
    return training_frame(synthetic_uploads(
        n_jobs, tasks=tasks, seed=seed, learnable=learnable, label_noise=label_noise, song_noise_db=song_noise_db,
        row_noise_db=row_noise_db, dup_jitter=dup_jitter, songs_per_user=songs_per_user,
        uploads_per_song=uploads_per_song, distributions=distributions))


# ------------------------------------------------------------------------------- in the database

SYNTHETIC_SOURCE = "synthetic"      # jobs.manifest->>'source', ml_consent.source, labels.details->>'source'
SYNTHETIC_PREFIX = "synthetic/"     # jobs.upload_prefix (real uploads live under uploads/<job_id>/)
# Both marks must hold: the manifest is the uploader's document, so its "source" alone proves nothing.
_SYNTHETIC_JOBS_SQL = (f"SELECT job_id FROM jobs WHERE manifest->>'source' = '{SYNTHETIC_SOURCE}' "
                       f"AND upload_prefix LIKE '{SYNTHETIC_PREFIX}%'")

_INSERT_CONSENT_SQL = """
INSERT INTO ml_consent (user_id, qa, training, qa_updated_at, training_updated_at, training_granted_at, source)
VALUES (CAST(:user AS uuid), false, true, :at, :at, :at, :source)
ON CONFLICT (user_id) DO NOTHING"""
_INSERT_JOB_SQL = """
INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at, uploaded_at,
                  consent_qa, consent_training, bpm, manifest)
VALUES (CAST(:job AS uuid), :prefix, CAST(:user AS uuid), :plan, 'done', :day, :at, :at, false, true, :bpm,
        CAST(:manifest AS jsonb))
ON CONFLICT (job_id) DO NOTHING"""
_INSERT_LABEL_SQL = """
INSERT INTO labels (job_id, task, y_reg, y_cls, quality, details)
VALUES (CAST(:job AS uuid), :task, :y_reg, :y_cls, :quality, CAST(:details AS jsonb))
ON CONFLICT (job_id, task) DO NOTHING"""


def _cohort_id(n_jobs: int, seed: int, distributions: Mapping[str, FeatureDistribution] | None,
               generator: dict) -> str:
    """A short hash of everything that decides the cohort's rows (not its dates): the same seed with other
    parameters or distributions gives the same job ids but other content, which a re-insert must not hide."""
    bound = inspect.signature(synthetic_uploads).bind(n_jobs, seed=seed, **generator)
    bound.apply_defaults()
    params = {name: list(value) if name == "tasks" else value for name, value in bound.arguments.items()
              if name != "distributions"}
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=list).encode())
    for clip in ("inst", "vocal"):
        dist = (distributions or {}).get(clip) or default_distribution(clip)
        h.update(np.ascontiguousarray(dist.mean, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(dist.cov, dtype="<f8").tobytes())
    return h.hexdigest()[:16]


def insert_synthetic_cohort(conn: Connection, n_jobs: int, *, seed: int, received_at: datetime,
                            partition_date: date, distributions: Mapping[str, FeatureDistribution] | None = None,
                            **generator) -> dict:
    """Write ``synthetic_uploads(n_jobs, seed=seed, distributions=distributions, **generator)`` into the
    application database, inside the caller's transaction, so that ``dataset.load_training_set`` returns
    exactly ``synthetic_training_set`` of the same parameters (master labels rounded to float32 by
    ``labels.y_reg real[]``, as for every real label) next to the real uploads.

    Written per upload: a ``jobs`` row (status ``done``, upload prefix ``synthetic/<job_id>/``, the manifest
    ``{"source": "synthetic", "seed": ..., "cohort": ...}``, ``cohort`` a hash of the generator's
    parameters), its user's ``ml_consent`` row (training on, granted at ``received_at``, source
    ``synthetic``), the inst/vocal/mix ``features_store`` rows and the ``alignments`` row through the audio
    pipeline's own ``lib.pipeline.records`` writers (which also create the ``feature_layouts`` row), and its
    ``labels`` with their quality. No ``vault_items``: there is no audio, and the training set needs none
    (without an inst sha256 a row's group is its user, as in the synthetic frame); stages and retention
    that work on stored objects thereby pass the synthetic jobs by.

    Idempotent: jobs already in the database are left as they are (re-running with the same arguments
    writes nothing); a job id held by anything but this very cohort raises ``ValueError``. Returns a
    summary: cohort, seed, jobs, jobs_written, users, songs, labels per task, seconds."""
    # imported here, not for every user of this module: records pulls in the pipeline's resources (Dagster)
    from mixai_pipeline.lib.alignment.align import AlignmentResult
    from mixai_pipeline.lib.pipeline import records

    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    started = time.perf_counter()
    if "tasks" in generator:
        generator["tasks"] = tuple(generator["tasks"])  # read twice: by the generator and for the cohort id
    uploads = synthetic_uploads(n_jobs, seed=seed, distributions=distributions, **generator)
    marker = {"source": SYNTHETIC_SOURCE, "seed": seed,
              "cohort": _cohort_id(n_jobs, seed, distributions, generator)}
    present = dict(conn.execute(
        text("SELECT job_id::text, manifest FROM jobs WHERE job_id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": [u.job_id for u in uploads]}).all())
    foreign = sorted(job for job, manifest in present.items() if manifest != marker)
    if foreign:
        raise ValueError(f"{len(foreign)} job ids of synthetic cohort {marker} are already taken by other rows "
                         f"(e.g. {foreign[0]}): the same seed written with other parameters or distributions? "
                         "delete_synthetic_cohort first")
    new = [u for u in uploads if u.job_id not in present]

    if new:
        conn.execute(text(_INSERT_CONSENT_SQL), [{"user": user, "at": received_at, "source": SYNTHETIC_SOURCE}
                                                 for user in sorted({u.user_id for u in new})])
        manifest = json.dumps(marker)
        conn.execute(text(_INSERT_JOB_SQL), [
            {"job": u.job_id, "prefix": f"{SYNTHETIC_PREFIX}{u.job_id}/", "user": u.user_id, "plan": u.plan,
             "day": partition_date, "at": received_at, "bpm": u.bpm, "manifest": manifest} for u in new])
    stats = {"source": SYNTHETIC_SOURCE}
    for u in new:  # the writers take one job at a time: ~1.5 ms per upload, most of it binding 3 × 160 floats
        records.record_features(conn, u.job_id, {"feature_version": FEATURE_VERSION, "clips": {
            clip: {"vec": getattr(u, clip).tolist(), "stats": stats} for clip in ("inst", "vocal", "mix")}},
            DIM_NAMES)
        if u.alignment is not None:
            records.record_alignment(conn, u.job_id, AlignmentResult(**u.alignment).as_dict())
    label_rows = [{"job": u.job_id, "task": task, "quality": u.quality, "details": json.dumps(stats),
                   "y_reg": list(label) if task == "master_reg" else None,
                   "y_cls": None if task == "master_reg" else label}
                  for u in new for task, label in u.labels.items()]
    if label_rows:
        conn.execute(text(_INSERT_LABEL_SQL), label_rows)
    labels_per_task: dict[str, int] = {}
    for u in uploads:
        for task in u.labels:
            labels_per_task[task] = labels_per_task.get(task, 0) + 1
    return {"cohort": marker["cohort"], "seed": seed, "jobs": len(uploads), "jobs_written": len(new),
            "users": len({u.user_id for u in uploads}), "songs": len({u.song for u in uploads}),
            "labels": labels_per_task, "seconds": round(time.perf_counter() - started, 3)}


def delete_synthetic_cohort(conn: Connection) -> int:
    """Remove every row ``insert_synthetic_cohort`` wrote, whatever its seed, inside the caller's
    transaction: the synthetic jobs' labels, features, alignments and exclusions, the jobs, then the
    synthetic consent rows and the exclusions of users left without jobs. Returns the number of jobs
    removed. The ``feature_layouts`` row stays (the pipeline's, shared with real vectors). A row of another
    table still pointing at a synthetic job (a stage run on it) fails the deletion by its foreign key."""
    for table in ("labels", "features_store", "alignments", "ml_exclusions"):
        conn.execute(text(f"DELETE FROM {table} WHERE job_id IN ({_SYNTHETIC_JOBS_SQL})"))
    users = conn.execute(text(f"DELETE FROM jobs WHERE job_id IN ({_SYNTHETIC_JOBS_SQL}) RETURNING user_id")
                         ).scalars().all()
    orphaned = "NOT EXISTS (SELECT 1 FROM jobs j WHERE j.user_id = {0}.user_id)"
    conn.execute(text(f"DELETE FROM ml_consent c WHERE c.source = :source AND {orphaned.format('c')}"),
                 {"source": SYNTHETIC_SOURCE})
    # a person's exclusion of a synthetic user (no foreign key, but nothing left to exclude)
    conn.execute(text(f"DELETE FROM ml_exclusions e WHERE e.job_id IS NULL AND e.user_id = ANY(:users) "
                      f"AND {orphaned.format('e')}"), {"users": sorted(set(users))})
    return len(users)
