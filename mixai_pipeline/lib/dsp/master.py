"""The HQ master chain: loudness normalisation, compressor, shelving EQ, loudness trim and true-peak limiter.

Chain (``master``)::

    normalise to target (ITU-R BS.1770 integrated loudness, all channels)
    -> compressor (ratio 2.5, attack 10 ms, release 120 ms, 6 dB knee; threshold solved so that the mean
       gain reduction equals ``comp_db``)
    -> low shelf at 120 Hz, high shelf at 8 kHz (RBJ cookbook, slope 1)
    -> loudness trim + look-ahead true-peak limiter at -1 dBTP, repeated until both hold on the output:
       integrated loudness within +-0.5 LU of the target and true peak <= -1 dBTP.

The compressor's 10 ms attack lets transients through (that is its job on a mix bus), so on percussive
material it raises the peak-to-loudness ratio and leaves more work to the limiter; clicks shorter than the
attack barely move its gain (see dynamics' detector).

The product's original order put the EQ after the limiter; here the shelves come before it, because any
filter after a limiter can push peaks back over the ceiling, and the ceiling is a promise.

Trim search: the output loudness rises with the trim gain into the limiter, but not at a fixed rate (the
limiter eats the peaks first; BS.1770's relative gate can even hold the loudness still while quiet parts
climb towards it). Each candidate trim is previewed: the limiter's unverified gain curve
(``dynamics.limiter_gain``) applied after the K-weighting of the pre-limiter signal, within hundredths of a
LU of the real thing at a fraction of the cost. Candidates: ``target - loudness before the limiter`` (exact
if the limiter does nothing); while too quiet, up to ``SECANT_STEPS`` steps that give back what the limiter
took, at the rate the last two previews showed (1 LU per dB at first, never less than 0.1); then the largest
trim allowed. Once the target is bracketed, Brent's method (scipy.optimize.brentq) closes in on it. The
trim never exceeds what makes the limiter take ``MAX_PEAK_REDUCTION_DB`` (40 dB) off the highest peak: by
then the output is pinned to the ceiling and more gain buys almost no loudness. The real,
verified limiter then runs at the chosen trim (touched up if its loudness differs by more than 0.1 LU).
Its output is always under the ceiling; if the loudness is more than 0.5 LU off the target, the report says
``target_reached: False`` (the closest loudness the ceiling and the limiting cap allow).

Parameter estimation (``estimate_master_params``), rule by rule:

- Tonal balance against the tilt of commercial masters, taken as pink (-3 dB/octave). Power spectrum:
  Welch, summed over channels (never a mono downmix). Band powers: LOW 30-120 Hz, MID 200 Hz-5 kHz,
  HIGH 6-16 kHz (upper edges capped at 0.49 x sample rate). Deviation of each outer band from pink:
  ``10 log10(P_band / P_mid) - 10 log10(pink_band / pink_mid)``, the pink ratios integrated over the same
  frequency bins. Shelf gain: ``-sign(dev) * clip(SHELF_CORRECTION * (|dev| - TONAL_TOLERANCE_DB), 0, 6)``,
  i.e. within +-3 dB of pink nothing happens (normal variation between arrangements), beyond that half of
  the excess is corrected (a master nudges the balance, it does not re-arrange), at most +-6 dB. No energy
  in MID (or a band above Nyquist): that shelf is 0.
- Compression from the peak-to-loudness ratio PLR = true peak - integrated loudness (the crest factor that
  matters under a true-peak ceiling): ``comp_db = clip(COMP_PER_PLR_DB * (PLR - DENSE_PLR_DB), 0, 6)``.
  At PLR <= 12 dB the mix is already dense (a -14 LUFS master under a -1 dBTP ceiling has a PLR of at
  most 13 dB) and is not compressed; every dB of PLR above that asks for 0.5 dB of mean gain reduction.
  Unmeasurable loudness (silence, under 400 ms): 0.
- Target loudness from the plan: -14 LUFS for every plan (standard, creator, lite, freetrial), the
  loudness the main streaming services normalise to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.signal import welch

from mixai_pipeline.lib.dsp import dynamics, filters, loudness

PLAN_TARGET_LUFS = {"standard": -14.0, "creator": -14.0, "lite": -14.0, "freetrial": -14.0}

# estimator
LOW_BAND_HZ = (30.0, 120.0)
MID_BAND_HZ = (200.0, 5000.0)
HIGH_BAND_HZ = (6000.0, 16000.0)
TONAL_TOLERANCE_DB = 3.0
SHELF_CORRECTION = 0.5
MAX_SHELF_DB = 6.0
DENSE_PLR_DB = 12.0
COMP_PER_PLR_DB = 0.5
MAX_COMP_DB = 6.0
WELCH_SEGMENT_S = 0.37  # 2^14 samples at 44.1 kHz: 2.7 Hz bins, enough to resolve 30-120 Hz

# chain
LOW_SHELF_HZ = 120.0
HIGH_SHELF_HZ = 8000.0
COMP_RATIO = 2.5
COMP_ATTACK_MS = 10.0
COMP_RELEASE_MS = 120.0
COMP_KNEE_DB = 6.0
CEILING_DBTP = -1.0
LOUDNESS_TOLERANCE_LU = 0.5  # the promise
LOUDNESS_AIM_LU = 0.1  # what the trim loop aims for, well inside the promise
TRIM_TOLERANCE_DB = 0.02
SECANT_STEPS = 3
MIN_SECANT_SLOPE = 0.1  # a flatter secant (the gate holding the loudness still) would step too far at once
MAX_PEAK_REDUCTION_DB = 40.0
FINAL_ROUNDS = 3  # verified limiter passes after the previewed search


@dataclass(frozen=True)
class MasterParams:
    low_shelf_db: float
    high_shelf_db: float
    comp_db: float  # target mean gain reduction of the compressor, dB, >= 0
    target_lufs: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.comp_db < 0:
            raise ValueError(f"comp_db is a gain reduction and must be >= 0, got {self.comp_db}")
        if not -70.0 <= self.target_lufs <= 0.0:
            raise ValueError(f"target loudness must be within -70..0 LUFS, got {self.target_lufs}")

    def as_list(self) -> list[float]:
        return [self.low_shelf_db, self.high_shelf_db, self.comp_db, self.target_lufs]


def _checked_audio(x: np.ndarray) -> np.ndarray:
    audio = np.asarray(x, dtype=np.float64)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {audio.shape}")
    bad = np.count_nonzero(~np.isfinite(audio))
    if bad:
        raise ValueError(f"audio contains {bad} NaN or infinite samples: refusing to master it")
    return audio


# ------------------------------------------------------------------------------------------- estimator

def _band_sum(freqs: np.ndarray, values: np.ndarray, band: tuple[float, float], sr: float) -> float:
    low, high = band[0], min(band[1], filters.NYQUIST_LIMIT * sr)
    return float(values[(freqs >= low) & (freqs < high)].sum())


def _shelf_from_deviation(deviation_db: float) -> float:
    excess = max(abs(deviation_db) - TONAL_TOLERANCE_DB, 0.0)
    return -math.copysign(min(SHELF_CORRECTION * excess, MAX_SHELF_DB), deviation_db) if excess else 0.0


def tonal_deviations(audio: np.ndarray, sr: float) -> tuple[float, float]:
    """(low, high) band power relative to the mid band, minus the same ratios for pink noise, in dB."""
    channels = audio if audio.ndim == 2 else audio[:, None]
    segment = min(channels.shape[0], 2 ** round(math.log2(WELCH_SEGMENT_S * sr)))
    # no per-segment detrend: it only touches the bins below ~8 Hz, and the bands start at 30 Hz
    freqs, psd = welch(channels, fs=sr, nperseg=segment, axis=0, detrend=False)
    power = psd.sum(axis=1)
    pink = np.divide(1.0, freqs, out=np.zeros_like(freqs), where=freqs > 0)
    mid, pink_mid = _band_sum(freqs, power, MID_BAND_HZ, sr), _band_sum(freqs, pink, MID_BAND_HZ, sr)
    deviations = []
    for band in (LOW_BAND_HZ, HIGH_BAND_HZ):
        level, pink_level = _band_sum(freqs, power, band, sr), _band_sum(freqs, pink, band, sr)
        if mid <= 0 or pink_level <= 0:
            deviations.append(0.0)  # nothing to compare against, or the band is beyond Nyquist
        elif level <= 0:
            deviations.append(-math.inf)
        else:
            deviations.append(10 * math.log10(level / mid) - 10 * math.log10(pink_level / pink_mid))
    return deviations[0], deviations[1]


def estimate_master_params(x: np.ndarray, sr: float, plan: str, *,
                           stats: loudness.LoudnessStats | None = None) -> MasterParams:
    """Rule-based parameters for ``master`` (the rules and their constants are in the module docstring).
    ``stats`` may pass ``input_stats(x, sr)`` when the caller has it (``master`` needs it too)."""
    if plan not in PLAN_TARGET_LUFS:
        raise ValueError(f"unknown plan {plan!r} (expected one of {', '.join(PLAN_TARGET_LUFS)})")
    audio = _checked_audio(x)
    low_dev, high_dev = tonal_deviations(audio, sr) if audio.shape[0] else (0.0, 0.0)
    stats = input_stats(audio, sr) if stats is None else stats
    comp = 0.0
    if math.isfinite(stats.integrated_lufs):
        comp = min(max(COMP_PER_PLR_DB * (stats.plr_db - DENSE_PLR_DB), 0.0), MAX_COMP_DB)
    return MasterParams(low_shelf_db=round(_shelf_from_deviation(low_dev), 1),
                        high_shelf_db=round(_shelf_from_deviation(high_dev), 1),
                        comp_db=round(comp, 1), target_lufs=PLAN_TARGET_LUFS[plan])


# ----------------------------------------------------------------------------------------------- chain

def input_stats(x: np.ndarray, sr: float) -> loudness.LoudnessStats:
    """What ``estimate_master_params`` and ``master`` measure on their input, computed once for both."""
    return _stats(_checked_audio(x), sr)


def _stats(audio: np.ndarray, sr: float, *, weighted: np.ndarray | None = None,
           true_peak: float | None = None) -> loudness.LoudnessStats:
    """loudness.measure, with the true peak taken over every channel by the faster chunked envelope;
    the K-weighted signal and the true peak are reused when the caller has them."""
    weighted = loudness.k_weight(audio, sr) if weighted is None else weighted
    lufs = loudness.integrated_loudness(audio, sr, weighted=weighted)
    true_peak = dynamics.true_peak_all_channels_dbtp(audio, sr) if true_peak is None else true_peak
    return loudness.LoudnessStats(
        integrated_lufs=lufs,
        loudness_range_lu=loudness.loudness_range(audio, sr, weighted=weighted),
        true_peak_dbtp=true_peak,
        sample_peak_dbfs=loudness.sample_peak_dbfs(audio),
        crest_db=loudness.crest_factor_db(audio),
        plr_db=true_peak - lufs if math.isfinite(lufs) and math.isfinite(true_peak) else float("nan"),
    )


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _trim_for_target(pre: np.ndarray, sr: float, target: float, envelope: np.ndarray,
                     max_trim: float) -> tuple[float, float, int]:
    """The trim gain (dB, at most ``max_trim``) that puts the limited ``pre * trim`` on the target loudness,
    searched on previews (see the module docstring); returns it, its previewed loudness and the number of
    previews."""
    weighted = loudness.k_weight(pre, sr)
    previewed: dict[float, float] = {}  # trim -> loudness

    def excess(trim: float) -> float:
        if trim not in previewed:
            scale = 10 ** (trim / 20)
            gain = dynamics.limiter_gain(envelope * scale, sr, CEILING_DBTP)
            previewed[trim] = loudness.integrated_loudness(pre, sr, weighted=weighted * (scale * gain)[:, None])
        return previewed[trim] - target

    def on_target() -> bool:
        return any(abs(lufs - target) <= LOUDNESS_AIM_LU for lufs in previewed.values())

    trim = min(target - loudness.integrated_loudness(pre, sr, weighted=weighted), max_trim)
    if excess(trim) > LOUDNESS_AIM_LU:
        excess(trim - 2 * excess(trim))  # too loud (the limiter cannot add loudness, so rarely): bracket it
    for _ in range(SECANT_STEPS):
        miss = excess(trim)
        if miss >= -LOUDNESS_AIM_LU or trim >= max_trim:
            break
        # too quiet: give back what the limiter took, at the rate the last two previews showed
        slope = 1.0
        if len(previewed) > 1:
            (t0, l0), (t1, l1) = list(previewed.items())[-2:]
            slope = min(max((l1 - l0) / (t1 - t0), MIN_SECANT_SLOPE), 1.0)
        trim = min(trim - miss / slope, max_trim)
    else:
        if excess(trim) < -LOUDNESS_AIM_LU:
            excess(max_trim)  # can the target be reached at all?
    quiet = [t for t, lufs in previewed.items() if lufs < target]
    loud = [t for t, lufs in previewed.items() if lufs > target]
    if not on_target() and quiet and loud and max(quiet) < min(loud):
        # within the aim counts as a root, so Brent stops there instead of polishing further
        brentq(lambda t: 0.0 if abs(excess(t)) <= LOUDNESS_AIM_LU else excess(t), max(quiet), min(loud),
               xtol=TRIM_TOLERANCE_DB)
    best = min(previewed, key=lambda t: abs(previewed[t] - target))
    return best, previewed[best], len(previewed)


def _unmeasurable(audio: np.ndarray, sr: float, before: loudness.LoudnessStats,
                  report: dict) -> tuple[np.ndarray, dict]:
    """Silence comes back as it went in; audio too short or too quiet for BS.1770 is only peak-limited."""
    silent = not np.any(audio)
    output = audio.copy() if silent else dynamics.limit(audio, sr, CEILING_DBTP)
    after = _stats(output, sr)
    peak_reduction = 0.0 if silent else max(before.true_peak_dbtp - after.true_peak_dbtp, 0.0)
    report.update({f"output_{key}": value for key, value in after.as_dict().items()})
    report.update(
        silent=silent, target_reached=False, normalize_gain_db=0.0, trim_gain_db=0.0, applied_gain_db=0.0,
        compressor_threshold_db=None, compressor_gain_reduction_db=0.0,
        limiter_peak_reduction_db=_json_number(peak_reduction), loudness_rounds=0,
        note="input is silent: returned unchanged" if silent else
        "loudness not measurable (shorter than 400 ms or below the -70 LUFS gate): only peak-limited")
    return output, report


def master(x: np.ndarray, sr: float, params: MasterParams, *,
           stats: loudness.LoudnessStats | None = None) -> tuple[np.ndarray, dict]:
    """Master ``x`` (``(samples,)`` or ``(samples, channels)`` float) with ``params``; returns the output
    (float64, same shape) and a JSON-safe report (non-finite numbers are None). NaN/inf samples are a
    ValueError.

    Report: ``input_*`` and ``output_*`` for each field of loudness.LoudnessStats (integrated_lufs,
    loudness_range_lu, true_peak_dbtp over all channels, sample_peak_dbfs, crest_db, plr_db);
    ``target_lufs``, ``ceiling_dbtp``, ``params``; ``normalize_gain_db`` + ``trim_gain_db`` =
    ``applied_gain_db``; ``compressor_threshold_db`` (None when not compressing) and
    ``compressor_gain_reduction_db`` (mean); ``limiter_peak_reduction_db`` (off the highest peak);
    ``loudness_rounds`` (limiter previews + verified passes); ``target_reached``; ``silent``; ``note``
    (None, or why the target was not reached). ``stats`` may pass ``input_stats(x, sr)``.
    """
    audio = _checked_audio(x)
    before = _stats(audio, sr) if stats is None else stats
    report: dict = {
        "target_lufs": params.target_lufs,
        "ceiling_dbtp": CEILING_DBTP,
        "params": asdict(params),
        **{f"input_{key}": value for key, value in before.as_dict().items()},
    }
    if not math.isfinite(before.integrated_lufs):
        return _unmeasurable(audio, sr, before, report)

    channels = audio if audio.ndim == 2 else audio[:, None]
    normalize_gain = params.target_lufs - before.integrated_lufs
    staged = channels * 10 ** (normalize_gain / 20)
    threshold, reduction = None, 0.0
    if params.comp_db > 0:
        threshold = dynamics.threshold_for_mean_reduction(staged, sr, params.comp_db, COMP_RATIO, COMP_ATTACK_MS,
                                                          COMP_RELEASE_MS, COMP_KNEE_DB)
        staged, reduction = dynamics.compress(staged, sr, threshold, COMP_RATIO, COMP_ATTACK_MS, COMP_RELEASE_MS,
                                              knee_db=COMP_KNEE_DB)
    staged = filters.apply_sos(staged, np.vstack([filters.design_low_shelf(sr, LOW_SHELF_HZ, params.low_shelf_db),
                                                  filters.design_high_shelf(sr, HIGH_SHELF_HZ, params.high_shelf_db)]))
    envelope = dynamics.true_peak_envelope(staged, sr)  # once: the trims only scale it
    staged_peak_db = 20 * math.log10(float(envelope.max()))
    max_trim = CEILING_DBTP - staged_peak_db + MAX_PEAK_REDUCTION_DB

    trim, preview_lufs, rounds = _trim_for_target(staged, sr, params.target_lufs, envelope, max_trim)
    previewed_on_target = abs(params.target_lufs - preview_lufs) <= LOUDNESS_AIM_LU
    verified: list[tuple[float, float, np.ndarray, np.ndarray, float]] = []  # miss, trim, output, weighted, peak
    for _ in range(FINAL_ROUNDS):
        scale = 10 ** (trim / 20)
        output, output_peak = dynamics.limit_and_measure(staged * scale, sr, CEILING_DBTP,
                                                         peak_envelope=envelope * scale)
        weighted = loudness.k_weight(output, sr)
        miss = params.target_lufs - loudness.integrated_loudness(output, sr, weighted=weighted)
        verified.append((miss, trim, output, weighted, output_peak))
        # the verified limiter may differ from its preview by hundredths of a dB: touch up if that matters
        if abs(miss) <= LOUDNESS_AIM_LU or not previewed_on_target:
            break
        trim = min(trim + miss, max_trim)
    rounds += len(verified)
    _, trim, output, weighted, output_peak = min(verified, key=lambda attempt: abs(attempt[0]))
    output = output.reshape(audio.shape)
    after = _stats(output, sr, weighted=weighted, true_peak=output_peak)
    reached = abs(after.integrated_lufs - params.target_lufs) <= LOUDNESS_TOLERANCE_LU
    report.update({f"output_{key}": value for key, value in after.as_dict().items()})
    report.update(
        silent=False,
        target_reached=reached,
        normalize_gain_db=normalize_gain,
        trim_gain_db=trim,
        applied_gain_db=normalize_gain + trim,
        compressor_threshold_db=threshold,
        compressor_gain_reduction_db=reduction,
        limiter_peak_reduction_db=max(staged_peak_db + trim - after.true_peak_dbtp, 0.0),
        loudness_rounds=rounds,
        note=None if reached else
        f"target {params.target_lufs:g} LUFS not reachable under the {CEILING_DBTP:g} dBTP ceiling "
        f"(with at most {MAX_PEAK_REDUCTION_DB:g} dB of limiting): closest was {after.integrated_lufs:.1f} LUFS",
    )
    return output, report
