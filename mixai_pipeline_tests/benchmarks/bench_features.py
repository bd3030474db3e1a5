"""Feature extraction benchmark: ``extract_features`` against the one-call-per-feature librosa baseline
(``baseline_features``), side by side on the same clips in the same run.

Clips: four chorales rendered with the demo renderer (piano, strings, organ, choir; fluidsynth, stereo
44.1 kHz), each repeated until it lasts 60 s and cut there. Both implementations run on one thread
(BLAS limited to 1), alternating per repeat so that machine load hits both alike; the time per clip is
the median over repeats of the time for all clips. Deviations are over all clips: the log-mel block in
dB, every other dimension relative to the baseline.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from threadpoolctl import threadpool_limits

from mixai_pipeline.lib.demo import render
from mixai_pipeline.lib.dsp import loudness
from mixai_pipeline.lib.features import extract as fx
from mixai_pipeline_tests.benchmarks.baseline_features import extract_features_baseline, loudness_baseline

CLIPS = (  # corpus path, instrument, bpm: taken from the demo uploads
    ("bach/bwv66.6", "piano", 92),
    ("bach/bwv269", "strings", 84),
    ("bach/bwv347", "organ", 76),
    ("bach/bwv153.1", "choir", 96),
)
CLIP_SECONDS = 60.0
REPEATS = 3
LOGMEL = slice(0, 2 * fx.N_MELS)


def _render(tmp: Path, corpus_path: str, instrument: str, bpm: int) -> tuple[np.ndarray, int]:
    score = render.load_chorale(corpus_path)
    one_pass_s = float(score.highestTime) * 60.0 / bpm
    repeats = math.ceil(CLIP_SECONDS / one_pass_s)
    stem = tmp / corpus_path.replace("/", "_")
    midi_path, wav_path = stem.with_suffix(".mid"), stem.with_suffix(".wav")
    render.write_midi(score, list(range(len(score.parts))), render.PROGRAMS[instrument], bpm, repeats, midi_path)
    render.synthesize(midi_path, wav_path)
    x, sr = sf.read(wav_path, always_2d=True)
    n = int(CLIP_SECONDS * sr)
    return np.ascontiguousarray(np.resize(x, (n, x.shape[1])) if x.shape[0] < n else x[:n]), sr


def _fast(x: np.ndarray, sr: int) -> np.ndarray:
    return fx.extract_features(x, sr)[0]


def _loudness_only(x: np.ndarray, sr: int) -> None:
    """The lib/dsp/loudness calls extract_features makes, alone, to split its time."""
    weighted = loudness.k_weight(x, sr)
    loudness.integrated_loudness(x, sr, weighted=weighted)
    loudness.loudness_range(x, sr, weighted=weighted)
    loudness.crest_factor_db(x)


def _time_all(fn, clips) -> float:
    start = time.perf_counter()
    for x, sr in clips:
        fn(x, sr)
    return time.perf_counter() - start


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="mixai-bench-features-") as tmp:
        clips = [_render(Path(tmp), *clip) for clip in CLIPS]
    with threadpool_limits(limits=1):
        ours = [_fast(x, sr) for x, sr in clips]  # also the warm-up (numba, caches)
        reference = [extract_features_baseline(x, sr) for x, sr in clips]
        fast_times, baseline_times, loudness_times, baseline_loudness_times = [], [], [], []
        for _ in range(REPEATS):
            fast_times.append(_time_all(_fast, clips))
            baseline_times.append(_time_all(extract_features_baseline, clips))
            loudness_times.append(_time_all(_loudness_only, clips))
            baseline_loudness_times.append(_time_all(loudness_baseline, clips))

    ours, reference = np.stack(ours).astype(np.float64), np.stack(reference).astype(np.float64)
    logmel_dev = float(np.max(np.abs(ours[:, LOGMEL] - reference[:, LOGMEL])))
    relative = np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-9)
    relative[:, LOGMEL] = 0.0
    per_dim = relative.max(axis=0)
    worst = int(np.argmax(per_dim))
    lra = fx.DIM_NAMES.index("loudness_range_lu")
    per_dim_without_lra = per_dim.copy()
    per_dim_without_lra[lra] = 0.0
    worst_without_lra = int(np.argmax(per_dim_without_lra))

    fast_s = statistics.median(fast_times) / len(clips)
    baseline_s = statistics.median(baseline_times) / len(clips)
    loudness_s = statistics.median(loudness_times) / len(clips)
    baseline_loudness_s = statistics.median(baseline_loudness_times) / len(clips)
    return {
        "clips": [f"{path} ({instrument}, {bpm} bpm)" for path, instrument, bpm in CLIPS],
        "clip": {"seconds": CLIP_SECONDS, "sample_rate": clips[0][1], "channels": int(clips[0][0].shape[1])},
        "repeats": REPEATS,
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "n_dim": fx.N_DIM,
        "extract_features": {"seconds_per_clip": round(fast_s, 4), "clips_per_s_per_core": round(1 / fast_s, 2)},
        "librosa_baseline": {"seconds_per_clip": round(baseline_s, 4),
                             "clips_per_s_per_core": round(1 / baseline_s, 2)},
        "speedup": round(baseline_s / fast_s, 2),
        # Where the time goes: the loudness part (K-weighting, integrated loudness, LRA, crest) timed alone
        # on the same clips, lib/dsp/loudness for extract_features and pyloudnorm for the baseline; the
        # rest is the mono/resample/STFT path.
        "split_seconds_per_clip": {
            "extract_features": {"loudness": round(loudness_s, 4), "spectral": round(fast_s - loudness_s, 4)},
            "librosa_baseline": {"loudness": round(baseline_loudness_s, 4),
                                 "spectral": round(baseline_s - baseline_loudness_s, 4)},
        },
        "spectral_speedup": round((baseline_s - baseline_loudness_s) / (fast_s - loudness_s), 2),
        "max_logmel_deviation_db": logmel_dev,
        "max_relative_deviation_other_dims": {"value": float(per_dim[worst]), "dim": fx.DIM_NAMES[worst]},
        "max_relative_deviation_other_dims_except_lra": {"value": float(per_dim_without_lra[worst_without_lra]),
                                                         "dim": fx.DIM_NAMES[worst_without_lra]},
        "max_loudness_range_deviation_lu": float(np.max(np.abs(ours[:, lra] - reference[:, lra]))),
    }
