"""Dynamics: a feed-forward compressor, a split-band de-esser and a look-ahead true-peak limiter.

All three are linked: one gain curve for every channel, so the stereo (or surround) image never shifts.
All three are vectorised; no Python loop runs over samples:

- Levels are taken on 1 ms blocks (peak over the block and over all channels), gains are computed and
  smoothed at block rate, then interpolated linearly back to the sample rate.
- Smoothing of the gain reduction in dB (Giannoulis, Massberg & Reiss, "Digital Dynamic Range Compressor
  Design", JAES 2012): a one-pole attack filter (``scipy.signal.lfilter``), then a peak hold with exponential
  release ``y[n] = max(a[n], d * y[n-1])``, which in the log domain is a running maximum because the decay
  ``d`` becomes a constant step (``np.maximum.accumulate``). Rises follow the attack time constant and falls
  the release one, like their "smooth branching" detector; their "decoupled" order (hold first) would let a
  3 ms click hold the full gain reduction for a whole release time and duck everything after it.
- The limiter works at the sample rate on a true-peak envelope (see ``true_peak_envelope``).

Audio is ``(samples,)`` or ``(samples, channels)`` float; any channel count is accepted (an LFE channel is
processed and peak-limited like the others). Outputs are float64 with the input's shape. NaN or infinite
samples are a ``ValueError``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d
from scipy.optimize import brentq
from scipy.signal import butter, firwin, lfilter, sosfiltfilt

from mixai_pipeline.lib.dsp.filters import NYQUIST_LIMIT
from mixai_pipeline.lib.dsp.loudness import TRUE_PEAK_OVERSAMPLING

BLOCK_S = 0.001
# Blocks whose peak is below this are silence: they do not count in a compressor's mean gain reduction.
SILENCE_GATE_DBFS = -60.0
_LEVEL_FLOOR = 1e-10  # -200 dBFS: the level of digital silence, so that logs stay finite

# De-esser: a 5-10 kHz band (4th-order Butterworth band-pass run forwards and backwards: zero phase, so inside
# the band ``x - (1 - g) * band`` is ``g * x`` and the band's gain is the gain heard) is reduced by
#   strength / 10 * MAX_DEESS_DB * clip((band level - full-band level - SIBILANCE_ONSET_DB) / SIBILANCE_SPAN_DB, 0, 1)
# per 1 ms block: a block is not sibilant while its band peak is more than 15 dB under its full-band peak,
# and fully sibilant once the band carries the whole peak (an "s" does; voiced speech and most music do not).
SIBILANCE_BAND_HZ = (5000.0, 10000.0)
SIBILANCE_ONSET_DB = -15.0
SIBILANCE_SPAN_DB = 15.0
MAX_DEESS_DB = 12.0
DEESS_ATTACK_MS = 0.5
DEESS_RELEASE_MS = 60.0

# Limiter. The true-peak envelope reproduces loudness.true_peak_dbtp exactly: scipy.signal.resample_poly's
# default anti-imaging filter (Kaiser window, beta 5, half-length 10 x factor), at the same oversampling factor.
_RESAMPLE_SPAN = 10  # input samples each side that one oversampled point depends on
_CHUNK = 1 << 14  # rows per true-peak chunk: cache-sized, and fine-grained for skipping
# The limiter aims this far under the ceiling and accepts an output whose true peak is within half of it:
# the other half absorbs float rounding (1e-13 dB) and the rare tiny overshoot of the first gain curve.
CEILING_MARGIN_DB = 0.01
MAX_LIMIT_ROUNDS = 4


# ----------------------------------------------------------------------------------------------- helpers

def _as_2d(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(samples, channels)`` float64 and the original shape; refuses NaN/inf."""
    audio = np.asarray(x, dtype=np.float64)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {audio.shape}")
    # one sum is non-finite whenever a sample is (and is much cheaper than an elementwise test)
    if not math.isfinite(float(audio.sum())) and not np.isfinite(audio).all():
        raise ValueError(f"audio contains {np.count_nonzero(~np.isfinite(audio))} NaN or infinite samples")
    return (audio[:, None] if audio.ndim == 1 else audio), audio.shape


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive, got {value}")


def _block_size(sr: float) -> int:
    return max(1, round(BLOCK_S * sr))


def _block_levels_db(audio: np.ndarray, block: int) -> np.ndarray:
    """Peak level of each block over all channels, in dBFS (the last block may be short)."""
    n = audio.shape[0]
    full = n // block
    # max and -min of reshaped views: no |x| copy of the whole signal
    body = audio[: full * block].reshape(full, block * audio.shape[1])
    peaks = np.maximum(body.max(axis=1, initial=0.0), -body.min(axis=1, initial=0.0))
    if n > full * block:
        peaks = np.append(peaks, np.abs(audio[full * block:]).max())
    return 20 * np.log10(np.maximum(peaks, _LEVEL_FLOOR))


def _per_sample(block_values: np.ndarray, block: int, n: int) -> np.ndarray:
    """Block-rate values linearly interpolated to every sample: each block ramps from its own value to the
    next block's, so a block's gain is in place when the block after it starts. A broadcast, not np.interp,
    because the grid is regular (several times faster on long audio)."""
    ends = np.append(block_values[1:], block_values[-1])
    ramp = np.arange(block) / block
    return (block_values[:, None] + (ends - block_values)[:, None] * ramp).reshape(-1)[:n]


def _decay(time_s: float, rate: float) -> float:
    """One-pole coefficient for a time constant, at ``rate`` updates per second."""
    return math.exp(-1.0 / (time_s * rate))


def _release_hold(reduction_db: np.ndarray, decay: float) -> np.ndarray:
    """``y[n] = max(r[n], decay * y[n-1])`` for r >= 0: instant attack, exponential release to 0 dB.

    In the log domain the decay is a constant step, so the recursion is a running maximum.
    """
    # in place where possible: on long audio at the sample rate, fresh temporaries cost more than the maths
    step = np.arange(reduction_db.size, dtype=np.float64)
    step *= math.log(decay)
    with np.errstate(divide="ignore"):
        held = np.log(reduction_db)
    held -= step
    np.maximum.accumulate(held, out=held)
    held += step
    return np.exp(held, out=held)


def _smooth_reduction(reduction_db: np.ndarray, rate: float, attack_ms: float, release_ms: float) -> np.ndarray:
    """One-pole attack, then peak hold with exponential release (see the module docstring)."""
    attack = _decay(attack_ms / 1000, rate)
    attacked = lfilter([1 - attack], [1, -attack], reduction_db)
    return _release_hold(np.maximum(attacked, 0.0, out=attacked), _decay(release_ms / 1000, rate))


# ------------------------------------------------------------------------------------------- compressor

def _static_reduction_db(level_db: np.ndarray, threshold_db: float, ratio: float, knee_db: float) -> np.ndarray:
    """Gain reduction of the soft-knee static curve (Giannoulis et al. eq. 4), >= 0 dB."""
    over = level_db - threshold_db
    slope = 1 - 1 / ratio
    hard = slope * np.maximum(over, 0.0)
    if knee_db <= 0:
        return hard
    in_knee = np.abs(over) < knee_db / 2
    return np.where(in_knee, slope * (over + knee_db / 2) ** 2 / (2 * knee_db), hard)


def _check_compressor(ratio: float, attack_ms: float, release_ms: float, knee_db: float) -> None:
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    _check_positive(attack_ms=attack_ms, release_ms=release_ms)
    if not (math.isfinite(knee_db) and knee_db >= 0):
        raise ValueError(f"knee must be >= 0 dB, got {knee_db}")


def _compressor_reduction(levels_db: np.ndarray, rate: float, threshold_db: float, ratio: float,
                          attack_ms: float, release_ms: float, knee_db: float) -> np.ndarray:
    static = _static_reduction_db(levels_db, threshold_db, ratio, knee_db)
    return _smooth_reduction(static, rate, attack_ms, release_ms)


def _mean_over_sound(reduction_db: np.ndarray, levels_db: np.ndarray) -> float:
    sounding = levels_db > SILENCE_GATE_DBFS
    return float(reduction_db[sounding].mean()) if sounding.any() else 0.0


def compress(x: np.ndarray, sr: float, threshold_db: float, ratio: float, attack_ms: float, release_ms: float,
             makeup_db: float = 0.0, knee_db: float = 6.0) -> tuple[np.ndarray, float]:
    """Feed-forward, linked, soft-knee compressor on block peaks.

    Returns the output and the mean gain reduction in dB over the blocks that are not silent
    (peak above ``SILENCE_GATE_DBFS``); 0 when everything is silent.
    """
    audio, shape = _as_2d(x)
    _check_compressor(ratio, attack_ms, release_ms, knee_db)
    if audio.shape[0] == 0:
        return audio.reshape(shape).copy(), 0.0
    block = _block_size(sr)
    levels = _block_levels_db(audio, block)
    reduction = _compressor_reduction(levels, sr / block, threshold_db, ratio, attack_ms, release_ms, knee_db)
    gain = _per_sample(10 ** ((makeup_db - reduction) / 20), block, audio.shape[0])
    return (audio * gain[:, None]).reshape(shape), _mean_over_sound(reduction, levels)


def threshold_for_mean_reduction(x: np.ndarray, sr: float, reduction_db: float, ratio: float, attack_ms: float,
                                 release_ms: float, knee_db: float = 6.0) -> float:
    """The threshold at which ``compress`` (same settings) reduces the gain by ``reduction_db`` on average.

    The mean reduction falls monotonically as the threshold rises, so Brent's method finds it to 0.01 dB.
    Returns a threshold above every peak (no reduction) when ``reduction_db`` is 0 or the input is silent.
    """
    audio, _ = _as_2d(x)
    _check_compressor(ratio, attack_ms, release_ms, knee_db)
    if not (math.isfinite(reduction_db) and reduction_db >= 0):
        raise ValueError(f"gain reduction must be >= 0 dB, got {reduction_db}")
    if audio.shape[0] == 0:
        return 0.0
    block = _block_size(sr)
    levels = _block_levels_db(audio, block)
    no_reduction = float(levels.max()) + knee_db / 2
    if reduction_db == 0 or not (levels > SILENCE_GATE_DBFS).any():
        return no_reduction
    if ratio == 1:
        raise ValueError("a 1:1 compressor reduces nothing")

    def excess(threshold_db: float) -> float:
        reduction = _compressor_reduction(levels, sr / block, threshold_db, ratio, attack_ms, release_ms, knee_db)
        return _mean_over_sound(reduction, levels) - reduction_db

    lowest = no_reduction - 1000.0  # every sounding block hundreds of dB over: far past any useful target
    return float(brentq(excess, lowest, no_reduction, xtol=0.01))


# ------------------------------------------------------------------------------------------- de-esser

def deess(x: np.ndarray, sr: float, strength: float) -> np.ndarray:
    """Split-band de-esser: only the 5-10 kHz band is turned down, and only while it dominates the signal.

    ``strength`` 0-10 scales the reduction linearly (0 is a no-op, 10 takes up to ``MAX_DEESS_DB`` off a
    fully sibilant block). The output is ``x - (1 - g) * band``, so wherever ``g`` is 1 it is ``x`` exactly.
    """
    audio, shape = _as_2d(x)
    if not (math.isfinite(strength) and 0 <= strength <= 10):
        raise ValueError(f"de-esser strength must be within 0-10, got {strength}")
    low_edge, high_edge = SIBILANCE_BAND_HZ
    if strength == 0 or audio.shape[0] == 0 or low_edge >= NYQUIST_LIMIT * sr:
        return audio.reshape(shape).copy()
    if high_edge < NYQUIST_LIMIT * sr:
        band_sos = butter(4, [low_edge, high_edge], btype="bandpass", fs=sr, output="sos")
    else:  # the band's top is past Nyquist: everything above its bottom edge
        band_sos = butter(4, low_edge, btype="highpass", fs=sr, output="sos")
    band = sosfiltfilt(band_sos, audio, axis=0, padlen=min(audio.shape[0] - 1, 3 * (2 * len(band_sos) + 1)))
    block = _block_size(sr)
    full_db = _block_levels_db(audio, block)
    band_over_full_db = _block_levels_db(band, block) - full_db
    sibilance = np.clip((band_over_full_db - SIBILANCE_ONSET_DB) / SIBILANCE_SPAN_DB, 0.0, 1.0)
    sibilance[full_db <= SILENCE_GATE_DBFS] = 0.0
    reduction = _smooth_reduction(strength / 10 * MAX_DEESS_DB * sibilance, sr / block,
                                  DEESS_ATTACK_MS, DEESS_RELEASE_MS)
    band_gain = _per_sample(10 ** (-reduction / 20), block, audio.shape[0])
    return (audio - band * (1 - band_gain)[:, None]).reshape(shape)


# -------------------------------------------------------------------------------------------- true peak

@functools.lru_cache(maxsize=8)
def _polyphase_taps(factor: int) -> np.ndarray:
    """resample_poly's interpolation filter split into ``factor`` phases: ``(2 * span + 1, factor)``.

    Oversampled point ``n * factor + p`` is ``taps[:, p] @ x[n - span : n + span + 1]`` (zeros outside x).
    """
    half_len = _RESAMPLE_SPAN * factor
    prototype = firwin(2 * half_len + 1, 1.0 / factor, window=("kaiser", 5.0)) * factor
    offsets = np.arange(2 * _RESAMPLE_SPAN + 1)[:, None]
    index = (2 * _RESAMPLE_SPAN - offsets) * factor + np.arange(factor)[None, :]
    return np.where(index <= 2 * half_len, prototype[np.minimum(index, 2 * half_len)], 0.0)


def _envelope_rows(audio: np.ndarray, start: int, stop: int, taps: np.ndarray) -> np.ndarray:
    """True-peak envelope rows ``start:stop``: the largest |oversampled point| in [n, n + 1), all channels."""
    n = audio.shape[0]
    span = _RESAMPLE_SPAN
    lo, hi = max(0, start - span), min(n, stop + span)
    padded = np.zeros((stop - start + 2 * span, audio.shape[1]))
    padded[lo - (start - span): hi - (start - span)] = audio[lo:hi]
    peak = np.zeros(stop - start)
    centre = taps[_RESAMPLE_SPAN, 0]
    for channel in padded.T:
        # phase 0 falls on the sinc's zeros: it is the sample itself, times the centre tap (the other taps
        # are ~1e-17, far below the limiter's margin), so it needs no correlation
        np.maximum(peak, np.abs(centre * channel[span:span + stop - start]), out=peak)
        for phase in taps.T[1:]:
            np.maximum(peak, np.abs(np.correlate(channel, phase, "valid")), out=peak)
    return peak


def true_peak_envelope(x: np.ndarray, sr: float) -> np.ndarray:
    """Per input sample n, the largest absolute oversampled value in [n, n + 1) over all channels.

    Its maximum is the true peak of loudness.true_peak_dbtp (same filter, same factor), computed in chunks
    with one correlation per phase instead of one long resample_poly, so memory stays small and it is faster.
    """
    audio, _ = _as_2d(x)
    taps = _polyphase_taps(TRUE_PEAK_OVERSAMPLING)
    n = audio.shape[0]
    envelope = np.empty(n)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        envelope[start:stop] = _envelope_rows(audio, start, stop, taps)
    return envelope


def true_peak_all_channels_dbtp(x: np.ndarray, sr: float) -> float:
    """True peak in dBTP over every channel (an LFE too, unlike BS.1770 loudness); -inf for silence."""
    envelope = true_peak_envelope(x, sr)
    peak = float(envelope.max()) if envelope.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


# ---------------------------------------------------------------------------------------------- limiter

def _limiter_gain(envelope: np.ndarray, ceiling: float, lookahead: int, release_decay: float) -> np.ndarray:
    """A gain curve <= ceiling / peak everywhere, ramping down over ``lookahead`` samples before each peak.

    The gain at n bounds the output on (n - 1, n + 1), so it must satisfy the envelope of both intervals.
    Forward minimum over the look-ahead window, release hold, then a backward moving average of the same
    length: every value averaged at n comes from a window that contains n, so the average stays under the
    requirement at n while the gain ramps linearly into each peak. A last centred minimum over the
    interpolation filter's span holds the gain flat for +-10 samples around each peak, so the filter sees
    no gain change there and the oversampled output peak is exactly the gain times the input's.
    """
    around = envelope.copy()
    np.maximum(around[1:], envelope[:-1], out=around[1:])
    np.maximum(around, _LEVEL_FLOOR, out=around)
    required = np.divide(ceiling, around, out=around)
    np.minimum(required, 1.0, out=required)
    ahead = minimum_filter1d(required, lookahead, mode="nearest", origin=-(lookahead // 2))
    reduction_db = np.log10(ahead, out=ahead)
    reduction_db *= -20.0
    gain = _release_hold(reduction_db, release_decay)
    gain *= -1 / 20
    np.power(10.0, gain, out=gain)
    ramped = uniform_filter1d(gain, lookahead, mode="nearest", origin=(lookahead - 1) // 2, output=reduction_db)
    return minimum_filter1d(ramped, 2 * _RESAMPLE_SPAN + 1, mode="nearest", output=gain)


def limiter_gain(peak_envelope: np.ndarray, sr: float, ceiling_dbtp: float = -1.0, lookahead_ms: float = 5.0,
                 release_ms: float = 80.0) -> np.ndarray:
    """``limit``'s first-pass gain curve for a signal with this ``true_peak_envelope``, without the output
    verification: cheap, and within a few hundredths of a dB of the final gain (e.g. to preview loudness)."""
    _check_positive(lookahead_ms=lookahead_ms, release_ms=release_ms)
    envelope = np.asarray(peak_envelope, dtype=np.float64)
    target = 10 ** ((ceiling_dbtp - CEILING_MARGIN_DB) / 20)
    if envelope.size == 0 or envelope.max() <= target:
        return np.ones_like(envelope)
    return _limiter_gain(envelope, target, max(1, round(lookahead_ms / 1000 * sr)), _decay(release_ms / 1000, sr))


def _output_true_peak(output: np.ndarray, gain: np.ndarray, input_envelope: np.ndarray, taps: np.ndarray) -> float:
    """The true peak (linear) of ``output = input * gain``, recomputed only in the chunks where the gain is
    below 1: elsewhere (gain exactly 1 for +-span samples) the output's oversampled points are the input's."""
    touched = maximum_filter1d((gain < 1).view(np.uint8), 2 * _RESAMPLE_SPAN + 1) > 0
    peak = 0.0
    for start in range(0, output.shape[0], _CHUNK):
        stop = min(output.shape[0], start + _CHUNK)
        rows = _envelope_rows(output, start, stop, taps) if touched[start:stop].any() else input_envelope[start:stop]
        peak = max(peak, float(rows.max()))
    return peak


def limit_and_measure(x: np.ndarray, sr: float, ceiling_dbtp: float = -1.0, lookahead_ms: float = 5.0,
                      release_ms: float = 80.0, *,
                      peak_envelope: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``limit``, also returning the output's true peak in dBTP over all channels (which the limiter measures
    anyway, so callers need not measure it again)."""
    audio, shape = _as_2d(x)
    _check_positive(lookahead_ms=lookahead_ms, release_ms=release_ms)
    if not (math.isfinite(ceiling_dbtp) and ceiling_dbtp <= 0):
        raise ValueError(f"ceiling must be <= 0 dBTP, got {ceiling_dbtp}")
    envelope = true_peak_envelope(audio, sr) if peak_envelope is None else np.asarray(peak_envelope, np.float64)
    if envelope.shape != (audio.shape[0],):
        raise ValueError(f"peak envelope has shape {envelope.shape}, expected ({audio.shape[0]},)")
    target = 10 ** ((ceiling_dbtp - CEILING_MARGIN_DB) / 20)
    accepted = 10 ** ((ceiling_dbtp - CEILING_MARGIN_DB / 2) / 20)
    peak = float(envelope.max()) if envelope.size else 0.0
    if peak <= accepted:
        output = audio.copy()
    else:
        taps = _polyphase_taps(TRUE_PEAK_OVERSAMPLING)
        lookahead = max(1, round(lookahead_ms / 1000 * sr))
        release_decay = _decay(release_ms / 1000, sr)
        aim = target
        for _ in range(MAX_LIMIT_ROUNDS):
            gain = _limiter_gain(envelope, aim, lookahead, release_decay)
            output = audio * gain[:, None]
            peak = _output_true_peak(output, gain, envelope, taps)
            if peak <= accepted:
                break
            aim *= target / peak
        else:
            output *= target / peak
            peak = target
    return output.reshape(shape), (20 * math.log10(peak) if peak > 0 else float("-inf"))


def limit(x: np.ndarray, sr: float, ceiling_dbtp: float = -1.0, lookahead_ms: float = 5.0,
          release_ms: float = 80.0, *, peak_envelope: np.ndarray | None = None) -> np.ndarray:
    """Look-ahead brick-wall limiter: ``loudness.true_peak_dbtp(output, sr) <= ceiling_dbtp``, guaranteed.

    How the guarantee holds:
    1. the gain is computed from the true-peak envelope (the oversampled signal), so inter-sample peaks
       are limited too, not just samples;
    2. the output's true peak is then measured, with the very filter loudness.true_peak_dbtp uses, wherever
       the gain moved (elsewhere the output is the input, already under the ceiling); an overshoot (the
       gain curve itself modulates the signal) tightens the internal ceiling by that much and the gain is
       recomputed, at most ``MAX_LIMIT_ROUNDS`` times;
    3. if it is still over after that, the whole output is scaled by the remaining overshoot, which is
       exact because the true peak of a scaled signal is the scaled true peak.
    Everything aims ``CEILING_MARGIN_DB`` under the ceiling so rounding cannot cross it.

    ``peak_envelope`` may pass ``true_peak_envelope(x, sr)`` when the caller has it already (or has it for
    a signal that ``x`` is a plain scaled copy of, scaled the same way).
    """
    return limit_and_measure(x, sr, ceiling_dbtp, lookahead_ms, release_ms, peak_envelope=peak_envelope)[0]
