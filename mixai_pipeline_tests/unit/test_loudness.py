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
