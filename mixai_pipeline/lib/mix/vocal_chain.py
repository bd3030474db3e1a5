"""The product's mix: the preset's vocal chain, then vocal and instrumental summed with its weights.

Vocal chain (``presets.yaml`` order): high-pass → optional low-pass → de-esser → compressor →
peaking EQ bands → reverb. The vocal is first shifted by the alignment offset (positive offset: the
vocal file starts late, so its first ``offset`` ms are dropped; negative: silence is prepended).
Everything is rendered as stereo at the instrumental's sample rate and length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixai_pipeline.lib.dsp import dynamics, filters
from mixai_pipeline.lib.mix.presets import Preset
from mixai_pipeline.lib.mix.reverb import reverb

_SQRT_HALF = float(np.sqrt(0.5))


def to_stereo(x: np.ndarray) -> np.ndarray:
    """Mono is duplicated; 5.0/5.1 (L R C [LFE] Ls Rs) folded down with the ITU-R BS.775 coefficients;
    other layouts keep their first two channels."""
    x = x[:, None] if x.ndim == 1 else x
    if x.shape[1] == 1:
        return np.repeat(x, 2, axis=1)
    if x.shape[1] in (5, 6):
        c, ls, rs = (2, 3, 4) if x.shape[1] == 5 else (2, 4, 5)
        left = x[:, 0] + _SQRT_HALF * (x[:, c] + x[:, ls])
        right = x[:, 1] + _SQRT_HALF * (x[:, c] + x[:, rs])
        return np.stack([left, right], axis=1)
    return x[:, :2]


def shift(x: np.ndarray, offset_ms: float, sr: int, length: int) -> np.ndarray:
    """Undo the vocal's offset and fit it to ``length`` samples."""
    samples = int(round(offset_ms * sr / 1000))
    if samples > 0:
        x = x[samples:]
    elif samples < 0:
        x = np.vstack([np.zeros((-samples, x.shape[1]), dtype=x.dtype), x])
    if x.shape[0] >= length:
        return x[:length]
    return np.vstack([x, np.zeros((length - x.shape[0], x.shape[1]), dtype=x.dtype)])


def vocal_chain(vocal: np.ndarray, sr: int, preset: Preset) -> np.ndarray:
    # Consecutive filters run as one cascade: the same result as one pass each, with one pass over the audio.
    cuts = [filters.design_highpass(sr, preset.hpf_hz)]
    if preset.lpf_hz:
        cuts.append(filters.design_lowpass(sr, preset.lpf_hz))
    y = filters.apply_sos(vocal, np.vstack(cuts))
    y = dynamics.deess(y, sr, preset.deesser)
    y, _ = dynamics.compress(y, sr, preset.threshold_db, preset.ratio, preset.attack_ms, preset.release_ms)
    bands = [filters.design_peaking(sr, band.hz, band.gain_db, band.q) for band in preset.eq]
    y = filters.apply_sos(y, np.vstack(bands or [filters.IDENTITY]))
    return reverb(y, sr, preset.reverb_decay, preset.reverb_mix)


@dataclass(frozen=True)
class MixResult:
    audio: np.ndarray  # (samples, 2) float32 at the instrumental's rate
    sample_peak: float
    clipped_prevented_db: float  # gain taken off the sum so that it does not clip (0 when none)


def mix(inst: np.ndarray, vocal: np.ndarray, sr: int, preset: Preset, offset_ms: float = 0.0) -> MixResult:
    """Both stems at ``sr``; the result never clips: an over-full sum is scaled down and says by how much."""
    inst2 = to_stereo(np.asarray(inst, dtype=np.float64))
    vocal2 = shift(to_stereo(np.asarray(vocal, dtype=np.float64)), offset_ms, sr, inst2.shape[0])
    total = preset.inst_weight * inst2 + preset.vocal_weight * vocal_chain(vocal2, sr, preset)
    peak = float(np.max(np.abs(total))) if total.size else 0.0
    trim_db = 0.0
    if peak > 0.999:  # the master stage sets the final level; here only keep the float mix in range
        trim_db = 20 * np.log10(peak / 0.999)
        total = total * (0.999 / peak)
    return MixResult(total.astype(np.float32), min(peak, 0.999), float(trim_db))
