"""Loudness and peak measurement: ITU-R BS.1770-4 integrated loudness, EBU Tech 3342 loudness range,
true peak with oversampling (BS.1770 Annex 2), sample peak, crest factor and PLR.

The K-weighting filters are pyloudnorm's; the gating is vectorised here (block energies from 100 ms
step sums) because pyloudnorm loops over blocks in Python, which dominates feature extraction.
Audio is ``(samples,)`` or ``(samples, channels)`` float in [-1, 1]; up to five channels in the order
L, R, C, Ls, Rs (surrounds weighted 1.41); six channels are read as 5.1 with the LFE (4th) dropped.
Loudness is always measured on all channels, never on a mono downmix.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import resample_poly, sosfilt

CHANNEL_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.41, 1.41])
ABSOLUTE_GATE_LUFS = -70.0
SILENCE = float("-inf")


def as_channels(x: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` float64; 5.1 loses its LFE channel; more channels are refused."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {x.shape}")
    if x.shape[1] == 6:
        x = np.delete(x, 3, axis=1)
    if x.shape[1] > 5:
        raise ValueError(f"{x.shape[1]} channels: BS.1770 weights are defined for up to 5 (+LFE)")
    return x


@functools.lru_cache(maxsize=16)
def _k_weighting_sos(sr: int) -> tuple[np.ndarray, float]:
    """pyloudnorm's two K-weighting stages as second-order sections (one sosfilt pass is ~2x faster)."""
    from pyloudnorm.iirfilter import IIRfilter

    stages = (IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sr, "high_shelf"), IIRfilter(0.0, 0.5, 38.0, sr, "high_pass"))
    sos = np.array([np.concatenate([st.b, st.a]) / st.a[0] for st in stages])
    return sos, float(np.prod([st.passband_gain for st in stages]))


def k_weight(x: np.ndarray, sr: int) -> np.ndarray:
    """The K-weighting pre-filter (high shelf + high pass) of BS.1770, per channel."""
    sos, gain = _k_weighting_sos(int(sr))
    return gain * sosfilt(sos, as_channels(x), axis=0)


def _block_loudness(weighted: np.ndarray, sr: int, steps_per_block: int) -> np.ndarray:
    """Loudness of each gating block (BS.1770 eq. 4), blocks advancing by 100 ms steps.

    The channel-weighted power is summed once per 100 ms step and a block is the sum of its whole
    steps: 400 ms = 4 steps, Tech 3342's 3 s = 30. That is exactly round(0.4 · sr) samples whenever
    0.1 · sr is an integer (every common rate) and within a sample of it otherwise, and it replaces a
    cumulative sum over every sample (2x slower, and float64 round-off grows with the clip length)."""
    step = int(round(0.1 * sr))
    n_steps = weighted.shape[0] // step
    if n_steps < steps_per_block:
        return np.empty(0)
    power = np.square(weighted[: n_steps * step]) @ CHANNEL_WEIGHTS[: weighted.shape[1]]
    step_energy = np.concatenate([[0.0], np.cumsum(power.reshape(n_steps, step).sum(axis=1))])
    block_energy = step_energy[steps_per_block:] - step_energy[:-steps_per_block]
    with np.errstate(divide="ignore"):
        return -0.691 + 10 * np.log10(block_energy / (steps_per_block * step))


def _power_mean_lufs(loudness: np.ndarray) -> float:
    return 10 * math.log10(np.mean(10 ** (loudness / 10)))


def integrated_loudness(x: np.ndarray, sr: int, *, weighted: np.ndarray | None = None) -> float:
    """Gated integrated loudness in LUFS (-inf for silence or audio shorter than one 400 ms block)."""
    blocks = _block_loudness(k_weight(x, sr) if weighted is None else weighted, sr, 4)
    gated = blocks[blocks >= ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return SILENCE
    relative_gate = _power_mean_lufs(gated) - 10.0
    gated = gated[gated > relative_gate]
    return _power_mean_lufs(gated) if gated.size else SILENCE


def loudness_range(x: np.ndarray, sr: int, *, weighted: np.ndarray | None = None) -> float:
    """EBU Tech 3342 loudness range in LU: 3 s short-term blocks at 10 Hz, gates -70 LUFS and -20 LU,
    10th to 95th percentile. NaN when fewer than two blocks pass the gates."""
    blocks = _block_loudness(k_weight(x, sr) if weighted is None else weighted, sr, 30)
    gated = blocks[blocks >= ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return float("nan")
    gated = gated[gated >= _power_mean_lufs(gated) - 20.0]
    if gated.size < 2:
        return float("nan")
    low, high = np.percentile(gated, [10, 95])
    return float(high - low)


TRUE_PEAK_OVERSAMPLING = 4


def true_peak_dbtp(x: np.ndarray, sr: int) -> float:
    """Maximum inter-sample peak in dBTP, oversampled 4x (ITU-R BS.1770-4 Annex 2). The inter-sample
    error depends on the factor, not on the rate reached: 4x at 44.1 kHz is as exact as 4x at 48 kHz (EBU
    Tech 3341 cases 15-23 pass), and a higher factor at 44.1 kHz only cost time (5x was 25 % slower)."""
    y = as_channels(x)
    factor = TRUE_PEAK_OVERSAMPLING
    peak = float(np.max(np.abs(resample_poly(y, factor, 1, axis=0)))) if y.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else SILENCE


def sample_peak_dbfs(x: np.ndarray) -> float:
    peak = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return 20 * math.log10(peak) if peak > 0 else SILENCE


def crest_factor_db(x: np.ndarray) -> float:
    """Sample peak over RMS (all channels together), in dB; 0 for silence."""
    y = as_channels(x)
    rms = math.sqrt(float(np.mean(y ** 2))) if y.size else 0.0
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return 20 * math.log10(peak / rms) if rms > 0 else 0.0


@dataclass(frozen=True)
class LoudnessStats:
    integrated_lufs: float
    loudness_range_lu: float
    true_peak_dbtp: float
    sample_peak_dbfs: float
    crest_db: float
    plr_db: float  # peak-to-loudness ratio: true peak minus integrated loudness

    def as_dict(self) -> dict[str, float | None]:
        """JSON-safe: non-finite values become None."""
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


def measure(x: np.ndarray, sr: int) -> LoudnessStats:
    """Every statistic above, sharing one K-weighting pass."""
    weighted = k_weight(x, sr)
    lufs = integrated_loudness(x, sr, weighted=weighted)
    tp = true_peak_dbtp(x, sr)
    return LoudnessStats(
        integrated_lufs=lufs,
        loudness_range_lu=loudness_range(x, sr, weighted=weighted),
        true_peak_dbtp=tp,
        sample_peak_dbfs=sample_peak_dbfs(x),
        crest_db=crest_factor_db(x),
        plr_db=tp - lufs if math.isfinite(lufs) and math.isfinite(tp) else float("nan"),
    )
