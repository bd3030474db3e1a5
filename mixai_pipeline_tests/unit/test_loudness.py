"""Loudness measurement against EBU Tech 3341 signals (synthesised from the spec) and pyloudnorm."""

import math

import numpy as np
import pyloudnorm
import pytest

from mixai_pipeline.lib.dsp import loudness

SR = 48_000


def sine(db: float, seconds: float, freq: float = 1000.0, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return 10 ** (db / 20) * np.sin(2 * np.pi * freq * t + phase)


def stereo(*segments: tuple[float, float]) -> np.ndarray:
    mono = np.concatenate([sine(db, s) for db, s in segments])
    return np.stack([mono, mono], axis=1)


# EBU Tech 3341 (2016), minimum requirements, cases 1-5: stereo 1 kHz sines; expected -23 or -33 LUFS ±0.1.
TECH_3341 = {
    1: ([(-23.0, 20.0)], -23.0),
    2: ([(-33.0, 20.0)], -33.0),
    3: ([(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)], -23.0),
    4: ([(-72.0, 10.0), (-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0), (-72.0, 10.0)], -23.0),
    5: ([(-26.0, 20.0), (-20.0, 20.1), (-26.0, 20.0)], -23.0),
}


@pytest.mark.parametrize("case", sorted(TECH_3341))
def test_tech_3341_integrated_loudness(case):
    segments, expected = TECH_3341[case]
    assert abs(loudness.integrated_loudness(stereo(*segments), SR) - expected) <= 0.1


def test_tech_3341_case_6_five_channels():
    # L, R at -28 dBFS, C at -24, Ls and Rs at -30: -23.0 LUFS.
    columns = [sine(db, 20.0) for db in (-28.0, -28.0, -24.0, -30.0, -30.0)]
    assert abs(loudness.integrated_loudness(np.stack(columns, axis=1), SR) + 23.0) <= 0.1
    # 5.1 with an LFE channel: the LFE does not count.
    with_lfe = np.stack(columns[:3] + [sine(-10.0, 20.0, 60.0)] + columns[3:], axis=1)
    assert abs(loudness.integrated_loudness(with_lfe, SR) + 23.0) <= 0.1


def test_matches_pyloudnorm_on_music_like_noise():
    rng = np.random.default_rng(7)
    envelope = np.repeat(rng.uniform(0.05, 0.8, 300), SR // 10)
    x = np.stack([rng.standard_normal(envelope.size) * envelope * 0.1,
                  rng.standard_normal(envelope.size) * envelope * 0.05], axis=1)
    ours = loudness.integrated_loudness(x, SR)
    reference = pyloudnorm.Meter(SR).integrated_loudness(x)
    assert abs(ours - reference) < 0.01
    assert abs(loudness.loudness_range(x, SR) - pyloudnorm.Meter(SR).loudness_range(x)) < 0.5


def test_stereo_is_not_measured_as_a_mono_downmix():
    left = sine(-20.0, 10.0)
    x = np.stack([left, -left], axis=1)  # out of phase: a mono downmix cancels
    assert abs(loudness.integrated_loudness(x, SR) - (-20.0 + 3.01 - 3.01)) < 0.2
    assert loudness.integrated_loudness(x.mean(axis=1), SR) == loudness.SILENCE


def test_loudness_range_of_a_two_level_signal():
    # Tech 3342 case 1: 20 s at -20 dBFS then 20 s at -30 dBFS (stereo sine) → LRA 10 LU ±1.
    assert abs(loudness.loudness_range(stereo((-20.0, 20.0), (-30.0, 20.0)), SR) - 10.0) <= 1.0


# EBU Tech 3341 (2016) true-peak cases 15-19: stereo 48 kHz sines (frequency, amplitude, phase of the first
# sample); the expected true peak is the sine's amplitude, tolerance +0.2/-0.4 dB. The signals get 10 ms
# raised-cosine fades: a sine switched on at full level is a step whose band-limited reconstruction really
# does overshoot (by up to 0.75 dB here), which is not what these cases test.
TECH_3341_TRUE_PEAK_SINES = {
    15: (SR / 4, 0.50, 0.0, -6.0),
    16: (SR / 4, 0.50, 45.0, -6.0),
    17: (SR / 6, 0.50, 60.0, -6.0),
    18: (SR / 8, 0.50, 67.5, -6.0),
    19: (SR / 4, 1.41, 45.0, 3.0),  # samples at ±1.0 (0 dBFS) while the waveform reaches +3 dBTP
}


def within_true_peak_tolerance(measured: float, expected: float) -> bool:
    return -0.4 <= measured - expected <= 0.2


def true_peak_sine(case: int) -> np.ndarray:
    freq, amplitude, phase_deg, _ = TECH_3341_TRUE_PEAK_SINES[case]
    t = np.arange(SR) / SR
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(SR // 100) / (SR // 100))
    fades = np.concatenate([ramp, np.ones(t.size - 2 * ramp.size), ramp[::-1]])
    mono = amplitude * np.cos(2 * np.pi * freq * t + np.radians(phase_deg)) * fades
    return np.stack([mono, mono], axis=1)


@pytest.mark.parametrize("case", sorted(TECH_3341_TRUE_PEAK_SINES))
def test_tech_3341_true_peak_sines(case):
    measured = loudness.true_peak_dbtp(true_peak_sine(case), SR)
    assert within_true_peak_tolerance(measured, TECH_3341_TRUE_PEAK_SINES[case][3]), measured


def band_limited_peak(fraction: float, bandwidth: float = 0.9) -> np.ndarray:
    """A Kaiser-windowed sinc pulse whose continuous peak (1.0, 0 dBTP) lies ``fraction`` of a sample after a
    sample instant; the samples alone under-read it (by ~3 dB at half a sample). Band-limited to 0.9 of
    Nyquist (21.6 kHz) like any programme at 48 kHz: a full-band pulse under-reads by 0.5 dB at 4x."""
    n = np.arange(SR) - SR // 2
    width = 64
    pulse = np.zeros(n.size)
    core = np.abs(n) <= width
    window = np.interp(n[core] - fraction, np.arange(-width, width + 1), np.kaiser(2 * width + 1, 8.0))
    pulse[core] = np.sinc(bandwidth * (n[core] - fraction)) * window
    return pulse


@pytest.mark.parametrize("case, offset", [(20, 0), (21, 1), (22, 2), (23, 3)])
def test_tech_3341_inter_sample_peaks(case, offset):
    # Cases 20-23: a 0 dBTP peak at sub-sample offsets 0, 1/4, 2/4 and 3/4 of a sample period.
    pulse = band_limited_peak(offset / 4)
    measured = loudness.true_peak_dbtp(np.stack([pulse, pulse], axis=1), SR)
    assert within_true_peak_tolerance(measured, 0.0), measured
    if offset == 2:
        assert loudness.sample_peak_dbfs(pulse) < -2.5  # what a sample-peak meter would have reported


def test_true_peak_finds_inter_sample_peaks():
    # A sine at fs/4 sampled 45° off its peaks: samples reach 0.707 of the true peak (-3 dB).
    t = np.arange(SR) / SR
    x = 0.5 * np.sin(2 * np.pi * (SR / 4) * t + np.pi / 4)
    assert abs(loudness.sample_peak_dbfs(x) - 20 * math.log10(0.5 * math.sqrt(0.5))) < 0.01
    assert abs(loudness.true_peak_dbtp(x, SR) - 20 * math.log10(0.5)) < 0.3


def test_silence_and_short_input():
    assert loudness.integrated_loudness(np.zeros((SR, 2)), SR) == loudness.SILENCE
    assert loudness.integrated_loudness(np.ones(100) * 0.1, SR) == loudness.SILENCE
    assert math.isnan(loudness.loudness_range(np.zeros(SR * 5), SR))
    stats = loudness.measure(np.zeros((SR, 2)), SR)
    assert stats.as_dict()["integrated_lufs"] is None and stats.crest_db == 0.0


def test_channel_count_is_checked():
    with pytest.raises(ValueError, match="7 channels"):
        loudness.integrated_loudness(np.zeros((SR, 7)), SR)


def test_tech_3341_conformance_table():
    """Every Tech 3341 case above in one table (``pytest -s`` shows it), each within its tolerance."""
    rows = []
    for case, (segments, expected) in sorted(TECH_3341.items()):
        rows.append((case, "integrated LUFS", expected, loudness.integrated_loudness(stereo(*segments), SR), 0.1, 0.1))
    columns = [sine(db, 20.0) for db in (-28.0, -28.0, -24.0, -30.0, -30.0)]
    rows.append((6, "integrated LUFS", -23.0, loudness.integrated_loudness(np.stack(columns, axis=1), SR), 0.1, 0.1))
    for case, (*_, expected) in sorted(TECH_3341_TRUE_PEAK_SINES.items()):
        rows.append((case, "true peak dBTP", expected, loudness.true_peak_dbtp(true_peak_sine(case), SR), 0.2, 0.4))
    for case, offset in ((20, 0), (21, 1), (22, 2), (23, 3)):
        pulse = band_limited_peak(offset / 4)
        rows.append((case, "true peak dBTP", 0.0, loudness.true_peak_dbtp(np.stack([pulse, pulse], 1), SR), 0.2, 0.4))
    print("\nEBU Tech 3341 | measure | expected | measured | deviation | tolerance")
    for case, measure, expected, measured, above, below in rows:
        print(f"case {case:2d} | {measure:15} | {expected:+6.1f} | {measured:+8.3f} | {measured - expected:+6.3f} | "
              f"+{above}/-{below}")
        assert -below <= measured - expected <= above, (case, measured)
