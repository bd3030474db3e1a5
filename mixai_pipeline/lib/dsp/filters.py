"""Biquad filters from Robert Bristow-Johnson's Audio-EQ-Cookbook, as second-order sections.

Each ``design_*`` function returns one section, shape ``(1, 6)`` = ``[b0, b1, b2, 1, a1, a2]`` (normalised by
a0), for ``scipy.signal.sosfreqz``; each filter function applies it with ``scipy.signal.sosfilt`` along axis 0,
so ``(samples,)`` and ``(samples, channels)`` audio both work (every channel filtered the same way).
The output is float64 with the input's shape.

Corners: a high- or low-pass ``hz`` is its -3 dB point at the default q = 1/sqrt(2) (Butterworth); a peaking
``hz`` is the centre of the bell, where the gain is ``gain_db``; a shelf ``hz`` is the cookbook's midpoint,
where the gain is half of ``gain_db`` in dB (the full gain is reached well inside the shelf); shelf slope 1
is the steepest that stays monotonic.

Frequencies near or above Nyquist. The bilinear transform cramps every response towards Nyquist, and a
corner at or past it has no meaning, so a corner at or above ``NYQUIST_LIMIT`` x sr (0.49 sr) is treated as
lying beyond the audio band:

- low-pass: no-op (there is nothing above it to remove);
- high-pass: ``ValueError`` (it would remove the whole band, which is always a caller's mistake);
- peaking: skipped, i.e. no-op (its bell lies outside the band);
- low shelf: a plain broadband gain of ``gain_db`` (the whole band lies below the corner);
- high shelf: no-op (nothing lies above the corner).

A no-op is the identity section ``[1, 0, 0, 1, 0, 0]``; zero-gain peaking and shelving filters are no-ops too.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import sosfilt

NYQUIST_LIMIT = 0.49
BUTTERWORTH_Q = 1 / math.sqrt(2)
IDENTITY = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])


def _check(sr: float, hz: float, *, q: float | None = None, gain_db: float = 0.0, slope: float | None = None) -> None:
    if not (math.isfinite(sr) and sr > 0):
        raise ValueError(f"sample rate must be positive, got {sr}")
    if not (math.isfinite(hz) and hz > 0):
        raise ValueError(f"filter frequency must be positive, got {hz} Hz")
    if q is not None and not (math.isfinite(q) and q > 0):
        raise ValueError(f"q must be positive, got {q}")
    if not math.isfinite(gain_db):
        raise ValueError(f"gain must be finite, got {gain_db} dB")
    if slope is not None and not (math.isfinite(slope) and slope > 0):
        raise ValueError(f"shelf slope must be positive, got {slope}")


def _beyond_band(sr: float, hz: float) -> bool:
    return hz >= NYQUIST_LIMIT * sr


def _section(b0: float, b1: float, b2: float, a0: float, a1: float, a2: float) -> np.ndarray:
    return np.array([[b0 / a0, b1 / a0, b2 / a0, 1.0, a1 / a0, a2 / a0]])


def _angle(sr: float, hz: float) -> tuple[float, float]:
    w0 = 2 * math.pi * hz / sr
    return math.cos(w0), math.sin(w0)


def design_lowpass(sr: float, hz: float, q: float = BUTTERWORTH_Q) -> np.ndarray:
    _check(sr, hz, q=q)
    if _beyond_band(sr, hz):
        return IDENTITY.copy()
    cos_w, sin_w = _angle(sr, hz)
    alpha = sin_w / (2 * q)
    return _section((1 - cos_w) / 2, 1 - cos_w, (1 - cos_w) / 2, 1 + alpha, -2 * cos_w, 1 - alpha)


def design_highpass(sr: float, hz: float, q: float = BUTTERWORTH_Q) -> np.ndarray:
    _check(sr, hz, q=q)
    if _beyond_band(sr, hz):
        raise ValueError(f"a {hz:g} Hz high-pass at {sr:g} Hz would remove the whole band "
                         f"(corners must be below {NYQUIST_LIMIT} x sample rate)")
    cos_w, sin_w = _angle(sr, hz)
    alpha = sin_w / (2 * q)
    return _section((1 + cos_w) / 2, -(1 + cos_w), (1 + cos_w) / 2, 1 + alpha, -2 * cos_w, 1 - alpha)


def design_peaking(sr: float, hz: float, gain_db: float, q: float) -> np.ndarray:
    _check(sr, hz, q=q, gain_db=gain_db)
    if gain_db == 0 or _beyond_band(sr, hz):
        return IDENTITY.copy()
    amplitude = 10 ** (gain_db / 40)
    cos_w, sin_w = _angle(sr, hz)
    alpha = sin_w / (2 * q)
    return _section(1 + alpha * amplitude, -2 * cos_w, 1 - alpha * amplitude,
                    1 + alpha / amplitude, -2 * cos_w, 1 - alpha / amplitude)


def _shelf_terms(sr: float, hz: float, gain_db: float, slope: float) -> tuple[float, float, float]:
    """A, cos w0 and 2 sqrt(A) alpha of the cookbook's shelf formulas."""
    amplitude = 10 ** (gain_db / 40)
    radicand = (amplitude + 1 / amplitude) * (1 / slope - 1) + 2
    if radicand <= 0:
        raise ValueError(f"shelf slope {slope} is too steep for {gain_db} dB (the cookbook formula has no real "
                         "solution; slope 1 is the steepest monotonic shelf)")
    cos_w, sin_w = _angle(sr, hz)
    alpha = sin_w / 2 * math.sqrt(radicand)
    return amplitude, cos_w, 2 * math.sqrt(amplitude) * alpha


def design_low_shelf(sr: float, hz: float, gain_db: float, slope: float = 1.0) -> np.ndarray:
    _check(sr, hz, gain_db=gain_db, slope=slope)
    if gain_db == 0:
        return IDENTITY.copy()
    if _beyond_band(sr, hz):
        return _section(10 ** (gain_db / 20), 0.0, 0.0, 1.0, 0.0, 0.0)
    a, cos_w, root_alpha = _shelf_terms(sr, hz, gain_db, slope)
    return _section(a * ((a + 1) - (a - 1) * cos_w + root_alpha),
                    2 * a * ((a - 1) - (a + 1) * cos_w),
                    a * ((a + 1) - (a - 1) * cos_w - root_alpha),
                    (a + 1) + (a - 1) * cos_w + root_alpha,
                    -2 * ((a - 1) + (a + 1) * cos_w),
                    (a + 1) + (a - 1) * cos_w - root_alpha)


def design_high_shelf(sr: float, hz: float, gain_db: float, slope: float = 1.0) -> np.ndarray:
    _check(sr, hz, gain_db=gain_db, slope=slope)
    if gain_db == 0 or _beyond_band(sr, hz):
        return IDENTITY.copy()
    a, cos_w, root_alpha = _shelf_terms(sr, hz, gain_db, slope)
    return _section(a * ((a + 1) + (a - 1) * cos_w + root_alpha),
                    -2 * a * ((a - 1) + (a + 1) * cos_w),
                    a * ((a + 1) + (a - 1) * cos_w - root_alpha),
                    (a + 1) - (a - 1) * cos_w + root_alpha,
                    2 * ((a - 1) - (a + 1) * cos_w),
                    (a + 1) - (a - 1) * cos_w - root_alpha)


def apply_sos(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Filter along axis 0 (time); identity sections are skipped, so no-ops cost nothing."""
    x = np.asarray(x, dtype=np.float64)
    sos = np.atleast_2d(sos)
    sos = sos[~np.all(sos == IDENTITY, axis=1)]
    if sos.size == 0 or x.shape[0] == 0:
        return x.copy()
    return sosfilt(sos, x, axis=0)


def lowpass(x: np.ndarray, sr: float, hz: float, q: float = BUTTERWORTH_Q) -> np.ndarray:
    return apply_sos(x, design_lowpass(sr, hz, q))


def highpass(x: np.ndarray, sr: float, hz: float, q: float = BUTTERWORTH_Q) -> np.ndarray:
    return apply_sos(x, design_highpass(sr, hz, q))


def peaking(x: np.ndarray, sr: float, hz: float, gain_db: float, q: float) -> np.ndarray:
    return apply_sos(x, design_peaking(sr, hz, gain_db, q))


def low_shelf(x: np.ndarray, sr: float, hz: float, gain_db: float, slope: float = 1.0) -> np.ndarray:
    return apply_sos(x, design_low_shelf(sr, hz, gain_db, slope))


def high_shelf(x: np.ndarray, sr: float, hz: float, gain_db: float, slope: float = 1.0) -> np.ndarray:
    return apply_sos(x, design_high_shelf(sr, hz, gain_db, slope))
