"""The straightforward reference for ``mixai_pipeline.lib.features.extract``: the same vector, one librosa
(or pyloudnorm) call per feature, each recomputing its own STFT, as seed 000 §8 describes it.

Where librosa has no function for a feature it is written out with numpy: spectral flux and the energy
ratios from ``librosa.stft``, crest factor and the stereo dimensions from the samples. Loudness uses
pyloudnorm's Meter (at most 5 channels); its loudness range appends 1.5 s of silence and steps its 3 s
blocks by 90 ms, so it reads a little differently from lib/dsp/loudness (about 0.1 LU on music). The
silence rules (loudness floor, LRA 0, tempo 0) are part of the feature definitions and apply here too.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import pyloudnorm

from mixai_pipeline.lib.features import extract as fx

STFT = {"n_fft": fx.N_FFT, "hop_length": fx.HOP}


def _mean_std(values: np.ndarray) -> list[float]:
    return [float(np.mean(values)), float(np.std(values))]


def loudness_baseline(channels: np.ndarray, sr: int) -> tuple[float, float, float]:
    """(integrated loudness, loudness range, crest factor) with the silence rules applied."""
    meter = pyloudnorm.Meter(sr)
    lufs = meter.integrated_loudness(channels)
    lra = meter.loudness_range(channels)
    rms_all = math.sqrt(float(np.mean(channels ** 2)))
    crest = 20 * math.log10(float(np.max(np.abs(channels))) / rms_all) if rms_all > 0 else 0.0
    return (lufs if math.isfinite(lufs) else fx.LOUDNESS_FLOOR_LUFS, lra if math.isfinite(lra) else 0.0, crest)


def extract_features_baseline(x: np.ndarray, sr: int) -> np.ndarray:
    channels = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = librosa.resample(librosa.to_mono(channels.T), orig_sr=sr, target_sr=fx.SR)
    sr_y = fx.SR

    logmel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr_y, n_mels=fx.N_MELS, **STFT),
                                 ref=1.0, amin=fx.AMIN, top_db=None)
    rms = librosa.feature.rms(y=y, frame_length=fx.N_FFT, hop_length=fx.HOP)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=fx.N_FFT, hop_length=fx.HOP)[0]
    centroid = librosa.feature.spectral_centroid(y=y, sr=sr_y, **STFT)[0]
    rolloff = librosa.feature.spectral_rolloff(y=y, sr=sr_y, roll_percent=fx.ROLL_PERCENT, **STFT)[0]
    magnitude = np.abs(librosa.stft(y, **STFT))
    flux = np.linalg.norm(np.diff(magnitude, axis=1), axis=0) if magnitude.shape[1] > 1 else np.zeros(1)

    lufs, lra, crest = loudness_baseline(channels, sr)

    bandwidth = librosa.feature.spectral_bandwidth(y=y, sr=sr_y, **STFT)[0]
    flatness = librosa.feature.spectral_flatness(y=y, amin=fx.AMIN, **STFT)[0]
    contrast = librosa.feature.spectral_contrast(y=y, sr=sr_y, fmin=fx.CONTRAST_FMIN, n_bands=fx.CONTRAST_BANDS,
                                                 quantile=fx.CONTRAST_QUANTILE, **STFT)
    onset_env = librosa.onset.onset_strength(y=y, sr=sr_y, n_mels=fx.N_MELS, **STFT)
    tempo = float(librosa.feature.tempo(onset_envelope=onset_env, sr=sr_y, hop_length=fx.HOP)[0]) \
        if onset_env.any() else 0.0

    power = magnitude ** 2
    freqs = librosa.fft_frequencies(sr=sr_y, n_fft=fx.N_FFT)
    low, high = fx.ENERGY_SPLITS_HZ
    energy = np.array([power[freqs < low].sum(), power[(freqs >= low) & (freqs < high)].sum(),
                       power[freqs >= high].sum()])
    energy_ratio = energy / energy.sum() if energy.sum() > 0 else np.zeros(3)

    if channels.shape[1] < 2 or not np.any(channels[:, :2]):
        correlation, side_ratio = 1.0, 0.0
    else:
        left, right = channels[:, 0], channels[:, 1]
        norms = np.sqrt(np.sum(left ** 2) * np.sum(right ** 2))
        correlation = float(np.sum(left * right) / norms) if norms > 0 else 0.0
        side_ratio = float(np.sum((left - right) ** 2) / (np.sum((left + right) ** 2) + np.sum((left - right) ** 2)))

    vector = [
        *logmel.mean(axis=1), *logmel.std(axis=1),
        *_mean_std(rms), *_mean_std(zcr), *_mean_std(centroid), *_mean_std(rolloff), *_mean_std(flux),
        lufs, lra, crest,
        *_mean_std(bandwidth), *_mean_std(flatness),
        *contrast.mean(axis=1),
        *_mean_std(onset_env),
        tempo,
        *energy_ratio,
        correlation, side_ratio,
    ]
    return np.asarray(vector, dtype=np.float32)
