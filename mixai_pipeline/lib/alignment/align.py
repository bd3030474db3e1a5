"""Vocal-to-instrumental alignment: GCC-PHAT, then a rhythm + harmony cross-correlation with a beat
guard, then banded DTW on rhythm and harmony context for drift.

The method, every threshold and the reasons for them are in the package docstring
(``mixai_pipeline.lib.alignment``). Time model: a moment ``t`` of the instrumental sounds in the
vocal file at ``offset + tempo_ratio · t`` (seconds), so ``offset_ms > 0`` means the vocal file
starts later and is aligned by dropping its first ``offset_ms``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy.ndimage import gaussian_filter1d, uniform_filter1d
from scipy.signal import correlate, correlation_lags, find_peaks, resample_poly

# Thresholds: what each is and why is in the package docstring (numbered steps 0–4).
# --- 0. input --------------------------------------------------------------------------------------
ANALYSIS_SR = 16_000            # every analysis runs on a mono 16 kHz copy
SILENCE_DBFS = -75.0            # RMS below this: a silent stem
MIN_OVERLAP_FRACTION = 0.5      # a candidate lag must overlap half of the shorter stem
STFT_CHUNK_VALUES = 1 << 21     # spectrograms are built this many STFT values (16 MB) at a time
RESAMPLE_CHUNK_S = 30.0         # the downmix and resampling run this much input at a time...
RESAMPLE_PAD = 4096             # ...with this many input samples of context on each side
MAX_CHANNELS = 64               # more "channels" than this is a (channels, samples) array
# --- 1. GCC-PHAT -----------------------------------------------------------------------------------
GCC_FMIN_HZ, GCC_FMAX_HZ = 150.0, 7_500.0   # phase kept in this band
GCC_BLOCK_S = 30.0              # cross-spectra summed over blocks of this length (bounded memory)
GCC_PEAK_EXCLUDE_MS = 1.0       # the peak's own lobe, left out of the sidelobe statistics
GCC_PSR_ACCEPT_DB = 25.0        # accepted from here (confidence 0.5)...
GCC_PSR_FULL_DB = 35.0          # ...to confidence 1.0 here
# --- 2. rhythm + harmony ---------------------------------------------------------------------------
ONSET_N_FFT, ONSET_HOP = 1024, 160          # 64 ms windows, 100 frames/s
ONSET_N_MELS = 64
ONSET_FPS = ANALYSIS_SR / ONSET_HOP
ATTACK_FMIN_HZ = 1000.0         # the attack band used to refine the lag
FINE_SEARCH_S = 0.04            # the refined lag stays within this of the coarse one
MIN_PEAK_SEPARATION_S = 0.15    # peaks closer than this (or half a beat) are one lobe
TEMPO_EXCERPT_S = 60.0          # tempo is estimated on at most this much of the instrumental
BEAT_TOLERANCE = 0.15           # "one beat away" = within ±15 % of the beat period
BEAT_AMBIGUITY_WARN = 0.65      # a rival this close (× best) makes the answer ambiguous...
BEAT_AMBIGUITY_REJECT = 0.75    # ...and this close, untrusted
ONSET_CONFIDENCE = (0.75, 0.55)  # clear, ambiguous
ONSET_MIN_OVERLAP_S = 30.0      # less overlapping music than this: untrusted
CHROMA_N_FFT, CHROMA_HOP = 4096, 640        # 256 ms windows, 25 frames/s
CHROMA_FPS = ANALYSIS_SR / CHROMA_HOP
CHROMA_ACTIVE_DB = -40.0        # frames this far below the stem's loud frames are rests
CONSONANCE = np.array([1, -1, -1, 1, 1, 1, -1, 1, 1, 1, -1, -1], dtype=np.float32)  # by interval 0..11
# --- 3. drift (DTW) --------------------------------------------------------------------------------
DTW_FPS = 10.0
CONTEXT_S = 6.0                 # each DTW frame sees ±6 s of rhythm and harmony
RHYTHM_FPS = 25.0
RHYTHM_SMOOTH_MS = 40.0
HARMONY_FPS = 5.0
CONTEXT_ACTIVE_FRACTION = 0.1   # contexts weaker than this × the 90th percentile are silent
MAX_DRIFT = 0.01                # the band allows 1 % drift; more is not reported
DTW_SLACK_S = 0.5
OFFSET_UNCERTAINTY_S = {"gcc_phat": 0.01, "onset_xcorr": 0.1}  # assume_shared_start: max_offset_s
MIN_DRIFT_SPAN_S = 10.0         # no tempo ratio from less path than this
DRIFT_FIT_POINTS = 1000         # the repeated-medians line is fitted on at most this many points
DRIFT_INLIER_FRAMES = 1.5       # path cells this close to it are inliers (a beat slip is not)
REFINE_STEP_S = 1.0             # the path is refined every second...
REFINE_WINDOW_S = 3.0           # ...by a local onset correlation over ±3 s...
REFINE_SEARCH_S = 0.2           # ...within ±200 ms...
REFINE_SMOOTH_MS = 20.0
REFINE_MIN_CORR = 0.3           # ...kept when it peaks at least this high
DRIFT_INLIER_S = 0.03           # refined points this close to the final line are inliers
DRIFT_MIN_INLIERS = 0.5         # a path less on its line than this gives no tempo ratio
DRIFT_REESTIMATE_MS = 20.0      # drift accumulating this much: the offset is measured again
# --- 4. nothing confident --------------------------------------------------------------------------
ASSUMED_CONFIDENCE = 0.1

METHODS = ("gcc_phat", "onset_xcorr", "assume_shared_start")


@dataclass(frozen=True)
class AlignmentResult:
    offset_ms: float            # > 0: the vocal file starts later; shift it earlier by this much
    method: str                 # one of METHODS
    confidence: float           # [0, 1]; >= 0.5 only for gcc_phat or a trusted onset_xcorr
    gcc_psr: float | None = None            # GCC-PHAT peak-to-sidelobe ratio, dB
    gcc_offset_ms: float | None = None
    onset_offset_ms: float | None = None    # rhythm+harmony estimate, refined on attack onsets
    onset_peak_ratio: float | None = None   # its best score / best rival (>= half a beat away)
    beat_period_ms: float | None = None
    beat_ambiguity: float | None = None     # best rival one beat away / best score, in [0, 1]
    onset_z: float | None = None            # rhythm and harmony standard scores at the best lag
    harmony_z: float | None = None
    dtw_cost: float | None = None           # mean cost per unit path weight, in [0, 1]
    drift_inliers: float | None = None      # fraction of the DTW path on its robust line
    tempo_ratio: float | None = None        # vocal seconds per instrumental second (path slope)
    drift_ms_per_min: float | None = None   # > 0: the vocal falls progressively later

    def as_dict(self) -> dict:
        """JSON-safe: plain floats, ints and strings; None for anything unknown or not finite."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, (float, np.floating)):
                value = float(value) if math.isfinite(value) else None
            elif isinstance(value, np.integer):
                value = int(value)
            out[key] = value
        return out


# --- input and features ----------------------------------------------------------------------------

def to_analysis_mono(x: np.ndarray, sr: int, name: str = "audio") -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` float → mono float32 at ANALYSIS_SR.

    Downmix and polyphase resampling (scipy ``resample_poly``) run RESAMPLE_CHUNK_S at a time, each
    chunk with RESAMPLE_PAD input samples of context on both sides and cut on the resampling grid,
    so the output equals one whole-signal ``resample_poly`` while no full-rate mono copy of a long
    stem ever exists."""
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
        raise ValueError(f"{name}: expected (samples,) or (samples, channels), got shape {x.shape}")
    if x.ndim == 2 and x.shape[1] > MAX_CHANNELS:
        raise ValueError(f"{name}: {x.shape[1]} channels; pass (samples, channels), not (channels, samples)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float samples, got {x.dtype}")
    g = math.gcd(int(sr), ANALYSIS_SR)
    up, down = ANALYSIS_SR // g, int(sr) // g
    n = x.shape[0]
    chunk = down * max(1, math.ceil(RESAMPLE_CHUNK_S * sr / down))
    pad = down * math.ceil(RESAMPLE_PAD / down)
    out = np.empty(math.ceil(n * up / down), dtype=np.float32)
    for start in range(0, n, chunk):
        lo, hi = max(0, start - pad), min(n, start + chunk + pad)
        part = x[lo:hi]
        mono = part.astype(np.float32) if part.ndim == 1 else part.mean(axis=1, dtype=np.float32)
        if not np.isfinite(mono).all():  # NaN and inf survive the downmix: one check on mono suffices
            raise ValueError(f"{name}: contains NaN or infinite samples")
        if lo > start - pad:  # the first chunk: zeros stand in for the context before the file
            mono = np.concatenate([np.zeros(lo - (start - pad), np.float32), mono])
        resampled = resample_poly(mono, up, down)
        first, at = pad * up // down, start * up // down
        take = min(len(out) - at, chunk * up // down)
        out[at:at + take] = resampled[first:first + take]
    return out


def _is_silent(y: np.ndarray) -> bool:
    rms = math.sqrt(float(np.mean(np.square(y, dtype=np.float64))))
    return rms == 0.0 or 20 * math.log10(rms) < SILENCE_DBFS


def _spectral_frames(y: np.ndarray, n_fft: int, hop: int, rows: int,
                     fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn(power spectrogram)`` → (rows, frames) float32 over centred, zero-padded frames, computed
    STFT_CHUNK_VALUES at a time: identical to one STFT, but a long stem's complex STFT (GBs for 20
    minutes) never exists at once."""
    import librosa

    half = n_fft // 2
    n_frames = 1 + len(y) // hop
    out = np.empty((rows, n_frames), dtype=np.float32)
    step = max(16, STFT_CHUNK_VALUES // (n_fft // 2 + 1))
    for first in range(0, n_frames, step):
        last = min(n_frames, first + step)
        lo, hi = first * hop - half, (last - 1) * hop + n_fft - half   # frame k spans k·hop ± n_fft/2
        segment = y[max(0, lo):min(len(y), hi)]
        if lo < 0 or hi > len(y):  # zero padding only where a frame reaches past the file
            segment = np.pad(segment, (max(0, -lo), max(0, hi - len(y))))
        spec = librosa.stft(segment, n_fft=n_fft, hop_length=hop, center=False)
        out[:, first:last] = fn(np.abs(spec) ** 2)
    return out


def _project(basis: np.ndarray, power: np.ndarray) -> np.ndarray:
    """``basis @ power``, computed transposed: several times faster in OpenBLAS for few rows."""
    return (power.T @ basis.T).T


def onset_envelopes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(full-band, attack-band) spectral-flux onset strength (librosa, log-mel) at ONSET_FPS, from
    one STFT pass. The attack band (mel bands from ATTACK_FMIN_HZ) times onsets more consistently
    across instruments: upper partials, consonants and hammers start abruptly where a pipe's or a
    bow's fundamental builds up slowly. Frames whose window reaches before the file are zeroed: a
    file that starts mid-sound would otherwise get an onset at 0 s, and two such files a false
    match at lag 0."""
    import librosa

    full = librosa.filters.mel(sr=ANALYSIS_SR, n_fft=ONSET_N_FFT, n_mels=ONSET_N_MELS)
    attack = librosa.filters.mel(sr=ANALYSIS_SR, n_fft=ONSET_N_FFT, n_mels=ONSET_N_MELS, fmin=ATTACK_FMIN_HZ)
    basis = np.vstack([full, attack])
    mel = _spectral_frames(y, ONSET_N_FFT, ONSET_HOP, 2 * ONSET_N_MELS, lambda power: _project(basis, power))
    envs = []
    for part in (mel[:ONSET_N_MELS], mel[ONSET_N_MELS:]):
        env = librosa.onset.onset_strength(S=librosa.power_to_db(part), sr=ANALYSIS_SR,
                                           n_fft=ONSET_N_FFT, hop_length=ONSET_HOP)
        env[: ONSET_N_FFT // ONSET_HOP + 2] = 0
        envs.append(env)
    return envs[0], envs[1]


def pitch_classes(y: np.ndarray) -> np.ndarray:
    """(12, frames) at CHROMA_FPS: each frame's chroma as a distribution (sums to 1); rests (frames
    more than CHROMA_ACTIVE_DB below the stem's 95th-percentile energy) are all zero."""
    import librosa

    basis = librosa.filters.chroma(sr=ANALYSIS_SR, n_fft=CHROMA_N_FFT, tuning=0.0)
    feats = _spectral_frames(y, CHROMA_N_FFT, CHROMA_HOP, 13,
                             lambda power: np.vstack([_project(basis, power), power.sum(axis=0, keepdims=True)]))
    chroma, energy = feats[:12], feats[12]
    active = energy > np.percentile(energy, 95) * 10 ** (CHROMA_ACTIVE_DB / 10) if energy.any() \
        else np.zeros(energy.shape, bool)
    total = chroma.sum(axis=0)
    active &= total > 0
    chroma[:, ~active] = 0
    chroma[:, active] /= total[active]
    return chroma


@dataclass(frozen=True)
class StemFeatures:
    signal: np.ndarray      # mono ANALYSIS_SR
    onset: np.ndarray       # ONSET_FPS
    attack: np.ndarray      # ONSET_FPS, attack band
    chroma: np.ndarray      # (12, frames) at CHROMA_FPS

    @classmethod
    def of(cls, y: np.ndarray) -> StemFeatures:
        return cls(y, *onset_envelopes(y), pitch_classes(y))


def _valid_lags(lags: np.ndarray, n_inst: int, n_vocal: int) -> np.ndarray:
    """Lags τ (inst[t] ↔ vocal[t + τ]) that overlap MIN_OVERLAP_FRACTION of the shorter stem."""
    overlap = np.minimum(n_inst, n_vocal - lags) - np.maximum(0, -lags)
    return overlap >= MIN_OVERLAP_FRACTION * min(n_inst, n_vocal)


def _parabolic(c: np.ndarray, p: int) -> float:
    """Sub-sample peak position from a parabola through the peak and its two neighbours."""
    if 0 < p < len(c) - 1:
        a, b, d = float(c[p - 1]), float(c[p]), float(c[p + 1])
        denom = a - 2 * b + d
        if denom < 0:
            return p + float(np.clip(0.5 * (a - d) / denom, -0.5, 0.5))
    return float(p)


def _xcorr(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_t a[t] · b[t + lag], lag) for every lag, by FFT."""
    return correlate(b, a, mode="full", method="fft"), correlation_lags(len(b), len(a), mode="full")


def _timescale(y: np.ndarray, ratio: float) -> np.ndarray:
    """``y`` played ``ratio`` times faster (y'(t) = y(ratio · t)): undoes a vocal's drift."""
    frac = Fraction(ratio).limit_denominator(2000)
    return resample_poly(y, frac.denominator, frac.numerator).astype(np.float32, copy=False)


# --- GCC-PHAT --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GccEstimate:
    lag_s: float
    psr_db: float


def gcc_phat(inst: np.ndarray, vocal: np.ndarray, max_lag: int) -> GccEstimate | None:
    """GCC-PHAT of two ANALYSIS_SR signals over lags ±max_lag samples (vocal later: positive).

    The cross-spectrum is summed over GCC_BLOCK_S blocks of the instrumental, each against the
    vocal segment spanning every lag, so the lag domain is exact (no circular wrap) and memory is
    O(block + lag range) for any length. PHAT weighting keeps only the phase, in the band
    GCC_FMIN_HZ–GCC_FMAX_HZ. The peak-to-sidelobe ratio, (peak − mean) / std of |correlation| over
    the valid lags outside ±GCC_PEAK_EXCLUDE_MS of the peak, is returned in dB (20·log10)."""
    block = int(GCC_BLOCK_S * ANALYSIS_SR)
    n_fft = 1 << math.ceil(math.log2(block + 2 * max_lag + 1))
    freqs = np.fft.rfftfreq(n_fft, 1 / ANALYSIS_SR)
    band = (freqs >= GCC_FMIN_HZ) & (freqs <= GCC_FMAX_HZ)
    cross = np.zeros(len(freqs), dtype=np.complex128)
    for start in range(0, len(inst), block):
        x = inst[start:start + block]
        lo, hi = start - max_lag, start + block + max_lag  # the vocal segment, zero before the file
        y = np.concatenate([np.zeros(max(0, -lo), np.float32), vocal[max(0, lo):max(0, hi)]])
        if x.any() and y.any():
            cross += np.conj(np.fft.rfft(x, n_fft)) * np.fft.rfft(y, n_fft)
    magnitude = np.abs(cross)
    usable = band & (magnitude > magnitude.max() * 1e-12)
    if not magnitude.any() or not usable.any():
        return None
    weighted = np.zeros_like(cross)
    weighted[usable] = cross[usable] / magnitude[usable]
    corr = np.fft.irfft(weighted, n_fft)[: 2 * max_lag + 1]  # index u ↔ lag u − max_lag
    valid = _valid_lags(np.arange(-max_lag, max_lag + 1), len(inst), len(vocal))
    peak_size = np.abs(corr)  # a polarity-inverted vocal mic peaks downwards
    p = int(np.argmax(np.where(valid, peak_size, -1.0)))
    exclude = int(round(GCC_PEAK_EXCLUDE_MS * ANALYSIS_SR / 1000))
    side = valid.copy()
    side[max(0, p - exclude): p + exclude + 1] = False
    if not valid[p] or side.sum() < 10:
        return None
    sidelobes = peak_size[side]
    spread = float(sidelobes.std())
    if spread == 0:
        return None
    psr = (float(peak_size[p]) - float(sidelobes.mean())) / spread
    psr_db = 20 * math.log10(psr) if psr > 0 else -math.inf
    return GccEstimate((_parabolic(corr * np.sign(corr[p]), p) - max_lag) / ANALYSIS_SR, psr_db)


# --- rhythm + harmony cross-correlation, beat guard --------------------------------------------------

def beat_period_s(inst_onset: np.ndarray, bpm_hint: float | None) -> float | None:
    """From the hint, else librosa's tempo estimate on (at most) TEMPO_EXCERPT_S of the middle."""
    import librosa

    if bpm_hint is not None:
        return 60.0 / bpm_hint
    excerpt = int(TEMPO_EXCERPT_S * ONSET_FPS)
    start = max(0, (len(inst_onset) - excerpt) // 2)
    env = inst_onset[start:start + excerpt]
    if len(env) < 4 * ONSET_FPS or not env.any():
        return None
    bpm = float(librosa.feature.tempo(onset_envelope=env, sr=ANALYSIS_SR, hop_length=ONSET_HOP)[0])
    return 60.0 / bpm if bpm > 0 else None


def _consonance_matrix() -> np.ndarray:
    """(12, 12): entry [a, b] is the consonance of vocal pitch class a over instrumental class b
    (CONSONANCE by interval), minus its mean so that chance scores 0."""
    k = CONSONANCE - CONSONANCE.mean()
    return k[(np.arange(12)[:, None] - np.arange(12)[None, :]) % 12].astype(np.float32)


@dataclass(frozen=True)
class RhythmHarmony:
    """Where the vocal's rhythm and harmony fit the instrumental's best (see rhythm_harmony_xcorr)."""
    lag_s: float                 # the best lag, at onset-frame resolution
    peak_ratio: float            # best / best rival peak (>= half a beat away) of the combined score
    beat_ambiguity: float | None  # best rival one beat away / best, in [0, 1]
    onset_z: float               # the two cues' standard scores at the best lag
    harmony_z: float
    overlap_s: float             # how much of the two stems overlaps at that lag


def _standard(x: np.ndarray) -> np.ndarray:
    spread = float(x.std())
    return (x - np.median(x)) / spread if spread > 0 else np.zeros_like(x)


def rhythm_harmony_xcorr(inst: StemFeatures, vocal: StemFeatures, max_lag_s: float,
                         beat_s: float | None, *, hinted: bool = True) -> RhythmHarmony | None:
    """Score every lag (ONSET_FPS grid, ±max_lag_s, overlapping MIN_OVERLAP_FRACTION) by two
    cross-correlations, each standardised over the lags (median removed, divided by its standard
    deviation) and summed:

    - rhythm: the mean-removed onset envelopes (librosa spectral flux), normalised;
    - harmony: the vocal's pitch classes against the instrumental's mapped through the centred
      consonance kernel (a melody sits on its chords), normalised. Onsets alone tie at every beat
      when the rhythm is even; chords change with the beat, so harmony breaks the tie.

    Rival peaks are those at least half a beat (MIN_PEAK_SEPARATION_S without a beat) from the
    best. ``beat_ambiguity`` takes the rivals one beat away (±BEAT_TOLERANCE of a hinted period;
    half to twice an estimated one, as tempo estimates are often off by a factor of 2 or 3/2)."""
    a = inst.onset - inst.onset.mean()
    b = vocal.onset - vocal.onset.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    if norm == 0:
        return None
    rhythm, lags = _xcorr(a, b)
    keep = (np.abs(lags) <= max_lag_s * ONSET_FPS) & _valid_lags(lags, len(a), len(b))
    if keep.sum() < 3:
        return None
    rhythm, lags = rhythm[keep] / norm, lags[keep]
    u = _consonance_matrix() @ inst.chroma
    u -= u.mean(axis=1, keepdims=True)
    v = vocal.chroma - vocal.chroma.mean(axis=1, keepdims=True)
    h_norm = math.sqrt(float((u * u).sum()) * float((v * v).sum()))
    harmony = np.zeros(len(lags))
    if h_norm > 0:
        h = sum(_xcorr(u[k], v[k])[0] for k in range(12)) / h_norm
        h_lags = correlation_lags(v.shape[1], u.shape[1], mode="full") / CHROMA_FPS
        harmony = np.interp(lags / ONSET_FPS, h_lags, h)
    onset_z, harmony_z = _standard(rhythm), _standard(harmony)
    score = onset_z + harmony_z
    p = int(np.argmax(score))
    best = float(score[p])
    if best <= 0:
        return None
    separation = max(MIN_PEAK_SEPARATION_S, 0.5 * beat_s if beat_s else 0.0) * ONSET_FPS
    peaks, _ = find_peaks(np.concatenate([[-np.inf], score, [-np.inf]]), distance=max(1, int(separation)))
    rivals = peaks - 1
    rivals = rivals[np.abs(rivals - p) >= separation]
    top_rival = float(score[rivals].max()) if rivals.size else -math.inf
    peak_ratio = best / top_rival if top_rival > 0 else math.inf
    ambiguity = None
    if beat_s:
        lo, hi = (1 - BEAT_TOLERANCE) * beat_s, (1 + BEAT_TOLERANCE) * beat_s
        if not hinted:
            lo, hi = lo / 2, hi * 2
        distance = np.abs(rivals - p) / ONSET_FPS
        near = score[rivals[(distance >= lo) & (distance <= hi)]]
        ambiguity = float(np.clip(near.max() / best, 0.0, 1.0)) if near.size else 0.0
    lag = int(lags[p])
    overlap = (min(len(a), len(b) - lag) - max(0, -lag)) / ONSET_FPS
    return RhythmHarmony((_parabolic(score, p) + float(lags[0])) / ONSET_FPS, peak_ratio, ambiguity,
                         float(onset_z[p]), float(harmony_z[p]), overlap)


def _refine(inst_attack: np.ndarray, vocal_attack: np.ndarray, lag_s: float) -> float:
    """The attack-band onset cross-correlation peak within ±FINE_SEARCH_S of ``lag_s``; ``lag_s``
    itself when the best is at the edge (not a peak of this search)."""
    a = inst_attack - inst_attack.mean()
    b = vocal_attack - vocal_attack.mean()
    centre = int(round(lag_s * ONSET_FPS))
    span = int(round(FINE_SEARCH_S * ONSET_FPS))
    lags = np.arange(centre - span, centre + span + 1)
    corr = np.full(len(lags), -np.inf)
    for k, lag in enumerate(lags):  # a few direct sums beat a full FFT correlation
        lo, hi = max(0, -lag), min(len(a), len(b) - lag)
        if hi > lo:
            corr[k] = float(a[lo:hi] @ b[lo + lag:hi + lag])
    p = int(np.argmax(corr))
    if p in (0, len(corr) - 1) or not np.isfinite(corr[p - 1:p + 2]).all():
        return lag_s
    return (_parabolic(corr, p) + float(lags[0])) / ONSET_FPS


# --- decision --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Estimate:
    method: str
    offset_s: float
    confidence: float
    stats: dict


def _estimate_offset(inst: StemFeatures, vocal: StemFeatures, max_offset_s: float,
                     beat_s: float | None, hinted: bool) -> _Estimate:
    stats: dict = {}
    gcc = gcc_phat(inst.signal, vocal.signal, int(round(max_offset_s * ANALYSIS_SR)))
    if gcc is not None:
        stats.update(gcc_offset_ms=gcc.lag_s * 1000, gcc_psr=gcc.psr_db)
    rh = rhythm_harmony_xcorr(inst, vocal, max_offset_s, beat_s, hinted=hinted)
    if rh is not None:
        lag_s = _refine(inst.attack, vocal.attack, rh.lag_s)
        stats.update(onset_offset_ms=lag_s * 1000, onset_peak_ratio=rh.peak_ratio,
                     beat_ambiguity=rh.beat_ambiguity, onset_z=rh.onset_z, harmony_z=rh.harmony_z)
    if gcc is not None and gcc.psr_db >= GCC_PSR_ACCEPT_DB:
        rise = (gcc.psr_db - GCC_PSR_ACCEPT_DB) / (GCC_PSR_FULL_DB - GCC_PSR_ACCEPT_DB)
        return _Estimate("gcc_phat", gcc.lag_s, 0.5 + 0.5 * float(np.clip(rise, 0, 1)), stats)
    if rh is None or rh.overlap_s < ONSET_MIN_OVERLAP_S:
        return _Estimate("assume_shared_start", 0.0, ASSUMED_CONFIDENCE, stats)
    # Any rival (one beat away, or anywhere else) too close to the best: not trusted.
    ambiguity = max(rh.beat_ambiguity or 0.0, 1 / rh.peak_ratio)
    if ambiguity >= BEAT_AMBIGUITY_REJECT:
        return _Estimate("assume_shared_start", 0.0, ASSUMED_CONFIDENCE, stats)
    confidence = ONSET_CONFIDENCE[ambiguity >= BEAT_AMBIGUITY_WARN]
    return _Estimate("onset_xcorr", lag_s, confidence, stats)


# --- drift: banded DTW on rhythm and harmony context -------------------------------------------------

def _unit_rows(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm in place; rows below CONTEXT_ACTIVE_FRACTION of the 90th-percentile
    norm (near-silent context) are zeroed and reported inactive."""
    norms = np.linalg.norm(feats, axis=1)
    active = norms > CONTEXT_ACTIVE_FRACTION * np.percentile(norms, 90) if norms.any() \
        else np.zeros(len(norms), bool)
    feats[~active] = 0
    feats[active] /= norms[active, None]
    return feats, active


def _context_times(n_frames: int, start_s: float, rate: float) -> np.ndarray:
    """(n_frames, 2·half + 1) times: DTW frame k's context, ±CONTEXT_S at ``rate``."""
    half = int(round(CONTEXT_S * rate))
    return start_s + np.arange(n_frames)[:, None] / DTW_FPS + np.arange(-half, half + 1)[None, :] / rate


def rhythm_context(onset: np.ndarray, n_frames: int, start_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per DTW frame: the onset envelope around it (±CONTEXT_S at RHYTHM_FPS, smoothed by a
    RHYTHM_SMOOTH_MS Gaussian, mean removed, unit norm), read at ``start_s + k / DTW_FPS``, so the
    cosine of two frames is the local correlation of the two rhythms."""
    smooth = gaussian_filter1d(onset.astype(np.float32), RHYTHM_SMOOTH_MS / 1000 * ONSET_FPS)
    t = _context_times(n_frames, start_s, RHYTHM_FPS) * ONSET_FPS
    feats = np.interp(t, np.arange(len(smooth)), smooth, left=0.0, right=0.0).astype(np.float32)
    feats -= feats.mean(axis=1, keepdims=True)
    return _unit_rows(feats)


def harmony_context(pitch: np.ndarray, n_frames: int, start_s: float = 0.0, *,
                    consonance: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per DTW frame: the pitch classes around it (±CONTEXT_S at HARMONY_FPS, each a 1/HARMONY_FPS
    average), unit norm. With ``consonance`` (the instrumental's side) each frame is first mapped
    through the centred consonance kernel, so the dot product with a vocal frame's context is the
    summed consonance of the vocal against it, above chance."""
    width = max(1, int(round(CHROMA_FPS / HARMONY_FPS)))
    source = uniform_filter1d(_consonance_matrix() @ pitch if consonance else pitch, width, axis=1)
    index = np.round(_context_times(n_frames, start_s, HARMONY_FPS) * CHROMA_FPS).astype(np.int64)
    inside = (index >= 0) & (index < pitch.shape[1])
    feats = source.T[np.clip(index, 0, pitch.shape[1] - 1)]          # (frames, context, 12)
    feats[~inside] = 0
    return _unit_rows(feats.reshape(n_frames, -1).astype(np.float32, copy=False))


def dtw_features(stem: StemFeatures, start_s: float = 0.0, *, instrumental: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rhythm and harmony context side by side, each unit norm, scaled so that the cosine of two
    frames is the mean of the two contexts' cosines (a missing context counts 0)."""
    n = max(0, int((len(stem.onset) / ONSET_FPS - start_s) * DTW_FPS))
    rhythm, r_active = rhythm_context(stem.onset, n, start_s)
    harmony, h_active = harmony_context(stem.chroma, n, start_s, consonance=instrumental)
    return np.hstack([rhythm, harmony]) * np.float32(math.sqrt(0.5)), r_active | h_active


def banded_dtw(x: np.ndarray, y: np.ndarray, radius: int, *, active_x: np.ndarray | None = None,
               active_y: np.ndarray | None = None, open_end: bool = True) -> tuple[np.ndarray, float]:
    """DTW of unit-norm feature rows ``x`` (n, d) and ``y`` (m, d), cost 1 − cosine clipped to
    [0, 1], inside the Sakoe-Chiba band |i − j| ≤ radius, step pattern symmetric2 (diagonal weight
    2, start cell 1) so a path's weight is i + j + 1 and D / (i + j + 1) compares across end points.

    Memory: one int8 step code per band cell (n × (2·radius + 1)) plus two cost rows; the full
    cost matrix never exists (``librosa.sequence.dtw`` allocates n × m costs, accumulated costs
    and step codes whatever ``band_rad`` says). Cells where either frame is inactive cost 1.
    ``open_end``: the path may end anywhere on the last row or column, else at (n − 1, m − 1).
    Returns (path (k, 2) from (0, 0), normalised cost)."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise ValueError("empty sequence")
    radius = int(radius)
    if not open_end and abs(n - m) > radius:
        raise ValueError("the band does not reach the end cell")
    width = 2 * radius + 1
    steps = np.zeros((n, width), dtype=np.int8)  # 0 diagonal, 1 from (i − 1, j), 2 from (i, j − 1)
    prev = np.full(width, np.inf)
    end_col = np.full(n, np.inf)                 # D[i, m − 1], for the open end
    act_x = np.ones(n, bool) if active_x is None else np.asarray(active_x, bool)
    act_y = np.ones(m, bool) if active_y is None else np.asarray(active_y, bool)
    for i in range(n):
        lo, hi = max(0, i - radius), min(m, i + radius + 1)  # row i's slot k is column i − radius + k
        k0, k1 = lo - (i - radius), hi - (i - radius)
        if lo >= hi:  # the band has left the matrix (n > m + radius): no cell on this row
            prev = np.full(width, np.inf)
            continue
        cost = np.clip(1.0 - y[lo:hi] @ x[i], 0.0, 1.0)
        cost[~(act_y[lo:hi] & act_x[i])] = 1.0
        prev_ext = np.append(prev, np.inf)           # row i − 1: column j is slot k + 1, j − 1 is slot k
        diag, up = prev_ext[k0:k1] + 2 * cost, prev_ext[k0 + 1:k1 + 1] + cost
        if i == 0:
            diag[0] = cost[0]
        from_prev = np.minimum(diag, up)
        # Horizontal runs: D[j] = min over k <= j of from_prev[k] + cost[k+1..j], a running minimum.
        csum = np.cumsum(cost)
        start = from_prev - csum
        run = np.minimum.accumulate(start)
        row = run + csum
        code = (up < diag).astype(np.int8)
        code[start > run] = 2
        steps[i, k0:k1] = code
        prev = np.full(width, np.inf)
        prev[k0:k1] = row
        if hi == m:
            end_col[i] = row[-1]
    if open_end:
        cols = np.arange(max(0, n - 1 - radius), min(m, n + radius))
        row_costs = prev[cols - (n - 1 - radius)] / (n + cols)
        col_costs = end_col / (np.arange(n) + m)
        if row_costs.size and row_costs.min() <= col_costs.min():
            i, j, total = n - 1, int(cols[np.argmin(row_costs)]), float(row_costs.min())
        else:
            i, j, total = int(np.argmin(col_costs)), m - 1, float(col_costs.min())
    else:
        i, j = n - 1, m - 1
        total = float(prev[j - (i - radius)] / (n + m - 1))
    if not math.isfinite(total):
        raise ValueError("no path within the band")
    path = [(i, j)]
    while i or j:
        code = steps[i, j - (i - radius)]
        if code == 0:
            i, j = i - 1, j - 1
        elif code == 1:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    return np.array(path[::-1]), total


def fit_line(x: np.ndarray, y: np.ndarray, tolerance: float) -> tuple[float, float, np.ndarray] | None:
    """Robust straight line y ≈ slope · x + intercept: a repeated-medians line (Siegel, 50 %
    breakdown point; on at most DRIFT_FIT_POINTS points, one per distinct x, averaging y) picks the
    inliers, within ``tolerance`` of it, and least squares on those gives the line. A path can slip
    by a beat over a passage whose rhythm is locally ambiguous; the slips are the outliers.
    Returns (slope, intercept, inlier mask over the inputs)."""
    from scipy.stats import siegelslopes

    xs, inverse = np.unique(x, return_inverse=True)
    if len(xs) < 3:
        return None
    ys = np.bincount(inverse, weights=y) / np.bincount(inverse)
    sub = np.unique(np.linspace(0, len(xs) - 1, min(len(xs), DRIFT_FIT_POINTS)).astype(int))
    slope, intercept = siegelslopes(ys[sub], xs[sub])
    inliers = np.abs(y - (slope * x + intercept)) <= tolerance
    if inliers.sum() < 3 or np.ptp(x[inliers]) == 0:
        return None
    slope, intercept = np.polyfit(x[inliers], y[inliers], 1)
    return float(slope), float(intercept), inliers


def drift(inst: StemFeatures, vocal: StemFeatures, offset_s: float,
          uncertainty_s: float) -> tuple[float | None, tuple[float, float] | None]:
    """(normalised DTW cost, (tempo ratio, inlier fraction)) of the instrumental against the
    offset-corrected vocal."""
    if min(len(inst.onset) / ONSET_FPS, len(vocal.onset) / ONSET_FPS - offset_s) * DTW_FPS < 2:
        return None, None  # not two DTW frames of overlap
    xi, ai = dtw_features(inst, instrumental=True)
    xv, av = dtw_features(vocal, start_s=offset_s, instrumental=False)
    span_s = max(len(xi), len(xv)) / DTW_FPS
    radius = math.ceil((uncertainty_s + DTW_SLACK_S + MAX_DRIFT * span_s) * DTW_FPS)
    path, cost = banded_dtw(xi, xv, radius, active_x=ai, active_y=av)
    # The slope is fitted where both frames are active and both contexts lie inside their files
    # (a context cut by a file's start or end is biased towards whatever the cut leaves).
    i_s, j_s = path[:, 0] / DTW_FPS, offset_s + path[:, 1] / DTW_FPS   # seconds in each file
    inside = (i_s >= CONTEXT_S) & (i_s <= len(inst.onset) / ONSET_FPS - CONTEXT_S) \
        & (j_s >= CONTEXT_S) & (j_s <= len(vocal.onset) / ONSET_FPS - CONTEXT_S)
    usable = path[ai[path[:, 0]] & av[path[:, 1]] & inside]
    if len(usable) < 3 or np.ptp(usable[:, 0]) / DTW_FPS < MIN_DRIFT_SPAN_S:
        return cost, None
    line = fit_line(usable[:, 0].astype(float), usable[:, 1].astype(float), DRIFT_INLIER_FRAMES)
    if line is None:
        return cost, None
    inliers = usable[line[2]]
    # The path moves in whole frames (100 ms): refine it to onset precision, then fit again.
    t_inst, t_vocal = refine_path(inst.onset, vocal.onset, inliers[:, 0] / DTW_FPS,
                                  offset_s + inliers[:, 1] / DTW_FPS)
    refined = fit_line(t_inst, t_vocal, DRIFT_INLIER_S) if len(t_inst) >= 3 else None
    if refined is None or np.ptp(t_inst[refined[2]]) < MIN_DRIFT_SPAN_S:
        return cost, (line[0], float(line[2].mean()))
    return cost, (refined[0], float(line[2].mean()))


def refine_path(inst_onset: np.ndarray, vocal_onset: np.ndarray, t_inst: np.ndarray,
                t_vocal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matched times (instrumental s, vocal-file s) along a path, every REFINE_STEP_S: each vocal
    time moved to the peak of the local correlation (±REFINE_WINDOW_S of onset envelope smoothed by
    REFINE_SMOOTH_MS, lags within ±REFINE_SEARCH_S, parabolic peak). Windows without a clear
    positive peak are dropped."""
    sigma = REFINE_SMOOTH_MS / 1000 * ONSET_FPS
    a_env = gaussian_filter1d(inst_onset.astype(np.float32), sigma)
    b_env = gaussian_filter1d(vocal_onset.astype(np.float32), sigma)
    half, search = int(round(REFINE_WINDOW_S * ONSET_FPS)), int(round(REFINE_SEARCH_S * ONSET_FPS))
    order = np.argsort(t_inst, kind="stable")
    t_inst, t_vocal = t_inst[order], t_vocal[order]
    picks = np.unique(np.searchsorted(t_inst, np.arange(t_inst[0], t_inst[-1], REFINE_STEP_S)))
    out_i, out_v = [], []
    for k in picks:
        ci, cv = int(round(t_inst[k] * ONSET_FPS)), int(round(t_vocal[k] * ONSET_FPS))
        if ci - half < 0 or ci + half >= len(a_env) or cv - half - search < 0 \
                or cv + half + search >= len(b_env):
            continue
        a = a_env[ci - half:ci + half + 1]
        a = a - a.mean()
        windows = np.lib.stride_tricks.sliding_window_view(b_env[cv - half - search:cv + half + search + 1],
                                                           2 * half + 1)
        windows = windows - windows.mean(axis=1, keepdims=True)
        denom = np.linalg.norm(windows, axis=1) * np.linalg.norm(a)
        if not np.all(denom > 0):
            continue
        corr = windows @ a / denom
        p = int(np.argmax(corr))
        if corr[p] < REFINE_MIN_CORR or p in (0, len(corr) - 1):
            continue
        out_i.append(ci / ONSET_FPS)
        out_v.append((cv - search + _parabolic(corr, p)) / ONSET_FPS)
    return np.array(out_i), np.array(out_v)


# --- the whole -------------------------------------------------------------------------------------

def align(inst: np.ndarray, vocal: np.ndarray, sr: int, *, max_offset_s: float = 10.0,
          bpm_hint: float | None = None) -> AlignmentResult:
    """Where the vocal sits on the instrumental's timeline (see the package docstring).

    ``inst`` and ``vocal``: float ``(samples,)`` or ``(samples, channels)`` at ``sr``, any lengths.
    Raises ValueError for NaN/inf samples, empty or mis-shaped input, or bad parameters."""
    if isinstance(sr, bool) or not isinstance(sr, numbers.Integral) or sr <= 0:
        raise ValueError(f"sr must be a positive integer, got {sr!r}")
    for name, value, optional in (("max_offset_s", max_offset_s, False), ("bpm_hint", bpm_hint, True)):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    inst16, vocal16 = to_analysis_mono(inst, sr, "inst"), to_analysis_mono(vocal, sr, "vocal")
    if _is_silent(inst16) or _is_silent(vocal16):
        return AlignmentResult(0.0, "assume_shared_start", 0.0)
    inst_f, vocal_f = StemFeatures.of(inst16), StemFeatures.of(vocal16)
    beat_s = beat_period_s(inst_f.onset, bpm_hint)
    hinted = bpm_hint is not None
    est = _estimate_offset(inst_f, vocal_f, max_offset_s, beat_s, hinted)
    cost, fit = drift(inst_f, vocal_f, est.offset_s, OFFSET_UNCERTAINTY_S.get(est.method, max_offset_s))
    ratio, inliers = fit if fit is not None else (None, None)
    if ratio is not None and (inliers < DRIFT_MIN_INLIERS or abs(ratio - 1) > MAX_DRIFT):
        ratio = None  # the path does not follow one line, or not one the band allows: no drift claimed
    if est.method != "gcc_phat" and ratio is not None \
            and abs(ratio - 1) * len(inst16) / ANALYSIS_SR * 1000 >= DRIFT_REESTIMATE_MS:
        # The offset estimators assume no drift (with drift they find the lag somewhere mid-file):
        # measure again on the vocal with its drift undone, whose time u is vocal time u · ratio.
        redo = _estimate_offset(inst_f, StemFeatures.of(_timescale(vocal16, ratio)), max_offset_s / ratio,
                                beat_s, hinted)
        est = _Estimate(redo.method, redo.offset_s * ratio, redo.confidence,
                        {k: v * ratio if k.endswith("_ms") else v for k, v in redo.stats.items()})
    stats = dict(est.stats)
    if beat_s is not None:
        stats["beat_period_ms"] = beat_s * 1000
    stats.update(dtw_cost=cost, drift_inliers=inliers)
    if ratio is not None:
        stats.update(tempo_ratio=ratio, drift_ms_per_min=(ratio - 1) * 60_000)
    return AlignmentResult(float(est.offset_s * 1000), est.method, float(est.confidence), **stats)
