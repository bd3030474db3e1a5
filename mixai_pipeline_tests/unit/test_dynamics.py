"""Compressor, de-esser and limiter: static curves, timing, linking, the true-peak ceiling, edge cases."""

import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from mixai_pipeline.lib.dsp import dynamics, filters, loudness

SR = 44_100


def db(value: float) -> float:
    return 20 * math.log10(value)


def tone(level_db: float, seconds: float, hz: float = 1000.0, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return 10 ** (level_db / 20) * np.sin(2 * np.pi * hz * t + phase)


def peak_db(x: np.ndarray) -> float:
    return db(float(np.max(np.abs(x))))


def channel_true_peaks(x: np.ndarray, sr: int = SR) -> list[float]:
    """loudness.true_peak_dbtp of every channel alone (it drops a 5.1 LFE when given all six together)."""
    return [loudness.true_peak_dbtp(x[:, c], sr) for c in range(x.shape[1])]


# ------------------------------------------------------------------------------------------- compressor

def test_hard_knee_static_curve():
    # -6 dBFS into threshold -20 at 4:1 -> -20 + 14 / 4 = -16.5 dBFS once the attack has settled
    x = tone(-6.0, 2.0)
    y, mean_reduction = dynamics.compress(x, SR, -20.0, 4.0, attack_ms=10.0, release_ms=100.0, knee_db=0.0)
    assert abs(peak_db(y[SR:]) - (-16.5)) < 0.1
    assert abs(mean_reduction - 10.5) < 0.2  # the first 10 ms ramp in barely moves the mean


def test_soft_knee_at_the_threshold_reduces_by_an_eighth_of_the_knee():
    # Giannoulis et al. eq. 4 at x = T: (1 - 1/R) (W/2)^2 / (2W) = (1 - 1/R) W / 8 = 0.5625 dB for R 4, W 6
    x = tone(-20.0, 1.0)
    y, _ = dynamics.compress(x, SR, -20.0, 4.0, 5.0, 50.0, knee_db=6.0)
    assert abs(peak_db(x[SR // 2:]) - peak_db(y[SR // 2:]) - 0.5625) < 0.02


def test_below_the_knee_nothing_changes_but_makeup():
    x = np.stack([tone(-30.0, 1.0), tone(-40.0, 1.0, 300.0)], axis=1)
    y, reduction = dynamics.compress(x, SR, -20.0, 3.0, 10.0, 100.0)
    np.testing.assert_array_equal(y, x)
    assert reduction == 0.0
    y, _ = dynamics.compress(x, SR, -20.0, 3.0, 10.0, 100.0, makeup_db=3.0)
    np.testing.assert_allclose(y, x * 10 ** (3.0 / 20))


def steps(levels_s: list[tuple[float, float]]) -> np.ndarray:
    """A DC signal stepping through (level dBFS, seconds): output / input is the gain, sample by sample."""
    return np.concatenate([np.full(int(s * SR), 10 ** (level / 20)) for level, s in levels_s])


def test_attack_and_release_time_constants():
    attack_ms, release_ms = 10.0, 120.0
    x = steps([(-40.0, 0.5), (-6.0, 0.5), (-40.0, 1.0)])
    y, _ = dynamics.compress(x, SR, -20.0, 4.0, attack_ms, release_ms, knee_db=0.0)
    reduction = -20 * np.log10(y / x)
    full = 10.5
    onset, drop = SR // 2, SR
    assert reduction[onset - 100] == 0.0
    # one-pole attack: 1 - 1/e of the way after one time constant
    assert 0.55 < reduction[onset + int(attack_ms / 1000 * SR)] / full < 0.72
    assert abs(reduction[drop - 100] - full) < 0.05
    # exponential release: 1/e of the reduction left after one time constant
    assert abs(reduction[drop + int(release_ms / 1000 * SR)] / full - math.exp(-1)) < 0.03
    assert reduction[drop + int(5 * release_ms / 1000 * SR)] < 0.1
    assert np.all(np.diff(reduction[drop + 100:]) <= 1e-12)  # recovers monotonically


def test_a_click_shorter_than_the_attack_barely_ducks_what_follows():
    # 2 ms at -6 dBFS over a -30 dBFS bed, straddling three 1 ms blocks: the attack filter lets the gain move
    # only 1 - exp(-3/10) = 26% of the way, and the release then lets go of that, not of the full reduction
    x = steps([(-30.0, 0.2), (-6.0, 0.002), (-30.0, 0.3)])
    y, _ = dynamics.compress(x, SR, -20.0, 4.0, 10.0, 120.0, knee_db=0.0)
    reduction = -20 * np.log10(y / x)
    assert np.max(reduction) < 0.27 * 10.5
    assert reduction[int(0.25 * SR)] < 0.27 * 10.5 * math.exp(-45 / 120)


def test_channels_are_linked():
    loud, quiet = steps([(-6.0, 1.0)]), steps([(-40.0, 1.0)])
    x = np.stack([loud, quiet], axis=1)
    y, reduction = dynamics.compress(x, SR, -20.0, 4.0, 10.0, 100.0)
    np.testing.assert_allclose(y[:, 1] / x[:, 1], y[:, 0] / x[:, 0])
    assert reduction > 9.0  # the loud channel drives the quiet one's gain
    six = np.stack([loud, quiet, quiet, loud, quiet, quiet], axis=1)  # 5.1: the LFE (4th) counts too
    y6, _ = dynamics.compress(six, SR, -20.0, 4.0, 10.0, 100.0)
    assert y6.shape == six.shape
    np.testing.assert_allclose(y6 / six, np.repeat((y6[:, 0] / six[:, 0])[:, None], 6, axis=1))


def test_threshold_for_mean_reduction_gives_that_reduction():
    rng = np.random.default_rng(11)
    envelope = np.repeat(rng.uniform(0.05, 1.0, 40), SR // 10)
    x = np.stack([rng.standard_normal(envelope.size) * envelope, rng.standard_normal(envelope.size) * envelope],
                 axis=1) * 0.2
    for wanted in (1.0, 3.0, 6.0):
        threshold = dynamics.threshold_for_mean_reduction(x, SR, wanted, 2.5, 10.0, 120.0)
        _, reduction = dynamics.compress(x, SR, threshold, 2.5, 10.0, 120.0)
        assert abs(reduction - wanted) < 0.02
    assert dynamics.compress(x, SR, dynamics.threshold_for_mean_reduction(x, SR, 0.0, 2.5, 10.0, 120.0),
                             2.5, 10.0, 120.0)[1] == 0.0


@pytest.mark.parametrize("shape", [(0,), (10,), (10, 2), (10, 6), (SR, 2)])
def test_compressor_silence_and_short_input(shape):
    y, reduction = dynamics.compress(np.zeros(shape), SR, -20.0, 4.0, 10.0, 100.0)
    assert y.shape == shape and not np.any(y) and reduction == 0.0
    short = np.full(shape, 0.9)
    y, reduction = dynamics.compress(short, SR, -20.0, 4.0, 10.0, 100.0)
    assert y.shape == shape and np.all(np.isfinite(y))
    if short.size:
        assert 0 < reduction < 17.0 and np.all(np.abs(y) < 0.9)


def test_compressor_refuses_bad_input():
    x = tone(-6.0, 0.1)
    for call in (lambda: dynamics.compress(x, SR, -20.0, 0.5, 10.0, 100.0),
                 lambda: dynamics.compress(x, SR, -20.0, 2.0, 0.0, 100.0),
                 lambda: dynamics.compress(x, SR, -20.0, 2.0, 10.0, -1.0),
                 lambda: dynamics.compress(np.where(x > 0.4, np.nan, x), SR, -20.0, 2.0, 10.0, 100.0),
                 lambda: dynamics.compress(np.zeros((10, 2, 2)), SR, -20.0, 2.0, 10.0, 100.0)):
        with pytest.raises(ValueError):
            call()


# -------------------------------------------------------------------------------------------- de-esser

def band_energy_db(x: np.ndarray, low: float, high: float, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x, axis=0)) ** 2
    freqs = np.fft.rfftfreq(x.shape[0], 1 / sr)
    return 10 * math.log10(float(spectrum[(freqs >= low) & (freqs < high)].sum()))


def voice_with_esses(sr: int = SR) -> tuple[np.ndarray, slice, slice]:
    """1 s of a voiced vowel (200 Hz harmonics up to 3 kHz), then 0.3 s of it with a 5-9 kHz 'ss' on top."""
    rng = np.random.default_rng(5)
    t = np.arange(int(1.3 * sr)) / sr
    vowel = sum(0.3 / k * np.sin(2 * np.pi * 200 * k * t) for k in range(1, 16))
    hiss = filters.lowpass(filters.highpass(rng.standard_normal(t.size), sr, 5000.0), sr, 9000.0)
    hiss[: sr] = 0.0
    x = 0.5 * (vowel + 0.6 * hiss / np.max(np.abs(hiss)))
    return x, slice(int(0.2 * sr), int(0.9 * sr)), slice(int(1.05 * sr), int(1.3 * sr))


def test_deesser_turns_down_sibilance_and_leaves_the_vowel():
    x, vowel, ess = voice_with_esses()
    reductions = []
    for strength in (2.5, 5.0, 10.0):
        y = dynamics.deess(x, SR, strength)
        reductions.append(band_energy_db(x[ess], 5000, 10_000) - band_energy_db(y[ess], 5000, 10_000))
        # the vowel alone is not sibilant: untouched
        assert np.max(np.abs(y[vowel] - x[vowel])) < 1e-3
        # below the band, the 'ss' segment keeps its body
        assert abs(band_energy_db(y[ess], 100, 3000) - band_energy_db(x[ess], 100, 3000)) < 0.1
    assert 0.5 < reductions[0] < reductions[1] < reductions[2] <= dynamics.MAX_DEESS_DB


def test_deesser_reduction_is_proportional_to_strength():
    # an 'ss' alone (noise confined to 6-9 kHz) is fully sibilant: the band loses strength / 10 * 12 dB
    rng = np.random.default_rng(8)
    spectrum = np.fft.rfft(rng.standard_normal(SR))
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    spectrum[(freqs < 6000) | (freqs > 9000)] = 0
    hiss = np.fft.irfft(spectrum, SR)
    hiss *= 0.5 / np.max(np.abs(hiss))
    settled = slice(SR // 10, 9 * SR // 10)
    for strength in (2.5, 5.0, 7.5, 10.0):
        y = dynamics.deess(hiss, SR, strength)
        reduction = band_energy_db(hiss[settled], 6000, 9000) - band_energy_db(y[settled], 6000, 9000)
        assert abs(reduction - strength / 10 * dynamics.MAX_DEESS_DB) < 0.3, strength


def test_deesser_strength_zero_and_edge_cases():
    x, _, _ = voice_with_esses()
    np.testing.assert_array_equal(dynamics.deess(x, SR, 0.0), x)
    stereo = np.stack([x, 0.5 * x], axis=1)
    y = dynamics.deess(stereo, SR, 8.0)
    assert y.shape == stereo.shape
    six = np.repeat(x[:, None], 6, axis=1)
    y6 = dynamics.deess(six, SR, 8.0)
    np.testing.assert_allclose(y6, np.repeat(dynamics.deess(x, SR, 8.0)[:, None], 6, axis=1))
    for shape in ((0,), (10,), (10, 2), (SR, 2)):
        assert not np.any(dynamics.deess(np.zeros(shape), SR, 10.0))
        assert dynamics.deess(np.full(shape, 0.5), SR, 10.0).shape == shape
    # at 8 kHz the band lies above Nyquist: nothing to do
    low_rate = np.random.default_rng(1).standard_normal(8000)
    np.testing.assert_array_equal(dynamics.deess(low_rate, 8000, 10.0), low_rate)
    with pytest.raises(ValueError, match="0-10"):
        dynamics.deess(x, SR, 11.0)


# ---------------------------------------------------------------------------------------------- limiter

@pytest.mark.parametrize("sr", [22_050, 44_100, 48_000, 96_000])
@pytest.mark.parametrize("n", [1, 10, 21, 1000, 40_000])
def test_true_peak_envelope_is_loudness_true_peak(sr, n):
    x = np.random.default_rng(n).standard_normal((n, 2)) * 0.3
    factor = dynamics.TRUE_PEAK_OVERSAMPLING
    reference = np.abs(resample_poly(x, factor, 1, axis=0)).reshape(n, factor, 2).max(axis=(1, 2))
    np.testing.assert_allclose(dynamics.true_peak_envelope(x, sr), reference, rtol=1e-12, atol=1e-15)
    assert abs(dynamics.true_peak_all_channels_dbtp(x, sr) - loudness.true_peak_dbtp(x, sr)) < 1e-9


def inter_sample_sine(sr: int = SR, seconds: float = 1.0) -> np.ndarray:
    # full scale at fs/4, 45 degrees off its peaks: the samples sit at -3 dBFS, the true peak at 0 dBTP
    return tone(0.0, seconds, sr / 4, sr, phase=np.pi / 4)


def clipped_square(hz: float, drive: float = 4.0, seconds: float = 1.0) -> np.ndarray:
    return np.clip(drive * tone(0.0, seconds, hz), -1.0, 1.0)


def dense_noise(seconds: float = 2.0, channels: int = 2) -> np.ndarray:
    return np.clip(np.random.default_rng(2).standard_normal((int(seconds * SR), channels)) * 0.6, -1.0, 1.0)


SIGNALS = {
    "inter-sample sine": inter_sample_sine,
    "clipped square 997 Hz": lambda: clipped_square(997.0),
    "clipped square 3.1 kHz": lambda: clipped_square(3100.0, drive=10.0),
    "clipped noise": dense_noise,
}


@pytest.mark.parametrize("name", sorted(SIGNALS))
@pytest.mark.parametrize("ceiling", [-1.0, -0.1, -3.0])
def test_limiter_holds_the_true_peak_ceiling(name, ceiling):
    x = SIGNALS[name]()
    assert loudness.true_peak_dbtp(x, SR) > ceiling  # the inputs really do go over
    y = dynamics.limit(x, SR, ceiling_dbtp=ceiling)
    assert y.shape == x.shape
    assert loudness.true_peak_dbtp(y, SR) <= ceiling
    assert loudness.true_peak_dbtp(y, SR) > ceiling - 0.5  # brick wall, not a blanket turn-down


def test_inter_sample_peaks_are_limited_where_sample_peaks_would_pass():
    x = inter_sample_sine()
    assert loudness.sample_peak_dbfs(x) < -1.0 < loudness.true_peak_dbtp(x, SR)
    y = dynamics.limit(x, SR, -1.0)
    assert loudness.true_peak_dbtp(y, SR) <= -1.0
    steady = slice(SR // 4, 3 * SR // 4)  # away from the ends, where a cut-off sine rings
    assert abs(db(float(dynamics.true_peak_envelope(y, SR)[steady].max())) + 1.0) < 0.01
    # a steady tone gets a steady gain: no distortion, just the level that puts its true peak on the ceiling
    gain = y[steady] / x[steady]
    assert np.ptp(gain) < 1e-9 and gain[0] < 10 ** (-0.8 / 20)


def test_limiter_reports_the_true_peak_it_measured():
    x = dense_noise(1.0) * 2.0
    y, measured = dynamics.limit_and_measure(x, SR, -1.0)
    assert abs(measured - loudness.true_peak_dbtp(y, SR)) < 1e-9
    np.testing.assert_array_equal(y, dynamics.limit(x, SR, -1.0))


def test_limiter_looks_ahead_and_releases():
    lookahead_ms, release_ms = 5.0, 80.0
    quiet = tone(-20.0, 1.0, 440.0)
    burst_at, burst_len = SR // 2, int(0.002 * SR)
    x = quiet.copy()
    x[burst_at: burst_at + burst_len] = tone(0.0, 0.002, 5000.0)
    y = dynamics.limit(x, SR, -1.0, lookahead_ms, release_ms)
    assert loudness.true_peak_dbtp(y, SR) <= -1.0
    gain = np.divide(y, x, out=np.ones_like(x), where=np.abs(x) > 1e-3)
    lookahead = int(lookahead_ms / 1000 * SR)
    # untouched until the look-ahead (plus the interpolation filter's reach) before the burst
    np.testing.assert_array_equal(gain[: burst_at - lookahead - 2 * 21], 1.0)
    assert np.min(gain[burst_at - SR // 1000: burst_at]) < 0.99  # already ducking 1 ms before it
    loud = np.abs(x[burst_at: burst_at + burst_len]) > 0.1
    assert np.all(gain[burst_at: burst_at + burst_len][loud] <= 10 ** (-1.0 / 20))
    after = burst_at + burst_len
    assert np.min(gain[after + int(5 * release_ms / 1000 * SR):]) > 0.99  # recovered 5 release times later


def test_below_the_ceiling_the_limiter_is_transparent():
    x = np.stack([tone(-3.0, 1.0), tone(-10.0, 1.0, 200.0)], axis=1)
    np.testing.assert_array_equal(dynamics.limit(x, SR, -1.0), x)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_limiter_channel_counts(channels):
    x = dense_noise(1.0, channels) * 1.5
    if channels == 6:
        x[:, 3] = np.clip(tone(0.0, 1.0, 60.0) * 3, -1, 1)  # a hot LFE is limited like the rest
    y = dynamics.limit(x[:, 0] if channels == 1 else x, SR, -1.0)
    assert y.shape == ((x.shape[0],) if channels == 1 else x.shape)
    assert max(channel_true_peaks(y.reshape(x.shape[0], -1))) <= -1.0


@pytest.mark.parametrize("shape", [(0,), (10,), (10, 2), (10, 6), (SR, 2)])
def test_limiter_silence_and_very_short_input(shape):
    assert not np.any(dynamics.limit(np.zeros(shape), SR))
    full_scale = np.ones(shape)
    full_scale[1::2] = -1.0  # alternating +-1: a Nyquist tone whose true peak is well over 0 dBTP
    y = dynamics.limit(full_scale, SR, -1.0)
    assert y.shape == shape
    if full_scale.size:
        assert max(channel_true_peaks(y.reshape(shape[0], -1))) <= -1.0


def test_limiter_gain_preview_matches_the_limiter():
    x = dense_noise(1.0) * 1.5
    envelope = dynamics.true_peak_envelope(x, SR)
    gain = dynamics.limiter_gain(envelope, SR, -1.0)
    applied = dynamics.limit(x, SR, -1.0, peak_envelope=envelope)
    assert np.all(gain <= 1.0)
    assert np.max(np.abs(applied - x * gain[:, None])) < 0.01
    assert np.all(dynamics.limiter_gain(envelope * 0.1, SR, -1.0) == 1.0)


def test_limiter_refuses_bad_input():
    x = dense_noise(0.1)
    for call in (lambda: dynamics.limit(x, SR, ceiling_dbtp=1.0), lambda: dynamics.limit(x, SR, lookahead_ms=0.0),
                 lambda: dynamics.limit(x, SR, peak_envelope=np.ones(5)),
                 lambda: dynamics.limit(np.full((10, 2), np.inf), SR)):
        with pytest.raises(ValueError):
            call()
