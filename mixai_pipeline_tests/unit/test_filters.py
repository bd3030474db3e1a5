"""RBJ cookbook biquads: designed responses (scipy.signal.sosfreqz), filtered sines, the Nyquist rules."""

import math

import numpy as np
import pytest
from scipy.signal import sosfreqz

from mixai_pipeline.lib.dsp import filters

SR = 48_000


def response_db(sos: np.ndarray, hz: float, sr: float = SR) -> float:
    _, h = sosfreqz(sos, worN=[hz], fs=sr)
    return float(20 * np.log10(np.abs(h[0])))


def sine(hz: float, seconds: float = 1.0, sr: float = SR) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)


def rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(x ** 2)))


@pytest.mark.parametrize("sr", [44_100, 48_000])
@pytest.mark.parametrize("hz,gain_db,q", [(100.0, 6.0, 1.0), (1000.0, -4.5, 2.0), (3500.0, 1.5, 1.2),
                                          (12_000.0, 3.0, 0.8), (250.0, -12.0, 0.5)])
def test_peaking_hits_its_gain_at_the_centre(sr, hz, gain_db, q):
    sos = filters.design_peaking(sr, hz, gain_db, q)
    assert abs(response_db(sos, hz, sr) - gain_db) < 0.1
    # far from the bell the response is flat
    assert abs(response_db(sos, hz / 20, sr)) < 0.5


@pytest.mark.parametrize("gain_db", [6.0, -6.0, 3.0, -12.0])
def test_low_shelf_reaches_its_gain_below_and_half_of_it_at_the_corner(gain_db):
    sos = filters.design_low_shelf(SR, 120.0, gain_db)
    assert abs(response_db(sos, 0.0) - gain_db) < 0.1
    assert abs(response_db(sos, 120.0) - gain_db / 2) < 0.1  # the cookbook's corner is the shelf midpoint
    assert abs(response_db(sos, 12.0) - gain_db) < 0.5
    assert abs(response_db(sos, 10_000.0)) < 0.1


@pytest.mark.parametrize("gain_db", [6.0, -6.0, 2.0, -10.0])
def test_high_shelf_reaches_its_gain_above_and_half_of_it_at_the_corner(gain_db):
    sos = filters.design_high_shelf(SR, 8000.0, gain_db)
    assert abs(response_db(sos, SR / 2) - gain_db) < 0.1
    assert abs(response_db(sos, 8000.0) - gain_db / 2) < 0.1
    assert abs(response_db(sos, 0.0)) < 0.1
    assert abs(response_db(sos, 500.0)) < 0.1


@pytest.mark.parametrize("hz", [40.0, 120.0, 1000.0, 9000.0])
def test_butterworth_highpass_and_lowpass_are_3db_down_at_the_cutoff(hz):
    high, low = filters.design_highpass(SR, hz), filters.design_lowpass(SR, hz)
    assert abs(response_db(high, hz) + 3.01) < 0.1
    assert abs(response_db(low, hz) + 3.01) < 0.1
    assert abs(response_db(high, SR / 2)) < 0.1 and abs(response_db(low, 0.0)) < 0.1


def test_highpass_and_lowpass_fall_12_db_per_octave():
    high, low = filters.design_highpass(SR, 1000.0), filters.design_lowpass(SR, 1000.0)
    assert abs(response_db(high, 62.5) - response_db(high, 125.0) + 12.0) < 0.5
    # towards Nyquist the bilinear transform only steepens the low-pass
    assert -14.0 < response_db(low, 8000.0) - response_db(low, 4000.0) < -11.5


@pytest.mark.parametrize("name,apply,design,hz", [
    ("peaking", lambda x: filters.peaking(x, SR, 1000.0, 5.0, 1.4), filters.design_peaking(SR, 1000.0, 5.0, 1.4),
     1000.0),
    ("low shelf", lambda x: filters.low_shelf(x, SR, 200.0, -6.0), filters.design_low_shelf(SR, 200.0, -6.0), 20.0),
    ("high shelf", lambda x: filters.high_shelf(x, SR, 8000.0, 4.0), filters.design_high_shelf(SR, 8000.0, 4.0),
     20_000.0),
    ("highpass", lambda x: filters.highpass(x, SR, 500.0), filters.design_highpass(SR, 500.0), 500.0),
    ("lowpass", lambda x: filters.lowpass(x, SR, 5000.0), filters.design_lowpass(SR, 5000.0), 5000.0),
])
def test_filtering_a_sine_gives_the_designed_gain(name, apply, design, hz):
    # the sosfilt path, not only the design: steady-state RMS of a filtered sine
    x = sine(hz, 2.0)
    settled = slice(SR, 2 * SR)  # one second in, the start transient is gone
    measured = rms_db(apply(x)[settled]) - rms_db(x[settled])
    assert abs(measured - response_db(design, hz)) < 0.05


def test_channels_are_filtered_independently_and_alike():
    rng = np.random.default_rng(3)
    stereo = rng.standard_normal((4000, 2))
    out = filters.peaking(stereo, SR, 2000.0, 4.0, 1.0)
    assert out.shape == stereo.shape
    for channel in range(2):
        np.testing.assert_allclose(out[:, channel], filters.peaking(stereo[:, channel], SR, 2000.0, 4.0, 1.0))
    six = rng.standard_normal((4000, 6))
    out6 = filters.high_shelf(six, SR, 8000.0, -3.0)
    assert out6.shape == (4000, 6)
    np.testing.assert_allclose(out6[:, 3], filters.high_shelf(six[:, 3], SR, 8000.0, -3.0))


def test_corners_at_or_above_nyquist_follow_the_documented_rules():
    x = np.random.default_rng(4).standard_normal((1000, 2))
    sr = 32_000  # 0.49 x sr = 15.68 kHz
    np.testing.assert_array_equal(filters.lowpass(x, sr, 15_680.0), x)
    np.testing.assert_array_equal(filters.lowpass(x, sr, 18_000.0), x)
    np.testing.assert_array_equal(filters.peaking(x, sr, 18_000.0, 6.0, 0.5), x)  # a preset band above Nyquist
    np.testing.assert_array_equal(filters.high_shelf(x, sr, 20_000.0, 6.0), x)
    np.testing.assert_allclose(filters.low_shelf(x, sr, 20_000.0, -6.0), x * 10 ** (-6.0 / 20))
    with pytest.raises(ValueError, match="whole band"):
        filters.highpass(x, sr, 16_000.0)
    # just under the limit the filters are real filters
    assert not np.allclose(filters.lowpass(x, sr, 15_000.0), x)


def test_zero_gain_and_empty_input_are_no_ops():
    x = np.random.default_rng(5).standard_normal(500)
    np.testing.assert_array_equal(filters.peaking(x, SR, 1000.0, 0.0, 1.0), x)
    np.testing.assert_array_equal(filters.low_shelf(x, SR, 100.0, 0.0), x)
    np.testing.assert_array_equal(filters.high_shelf(x, SR, 8000.0, 0.0), x)
    assert filters.highpass(np.zeros((0, 2)), SR, 80.0).shape == (0, 2)


def test_bad_parameters_are_refused():
    x = np.zeros(100)
    for call in (lambda: filters.highpass(x, SR, 0.0), lambda: filters.lowpass(x, SR, -5.0),
                 lambda: filters.peaking(x, SR, 1000.0, 3.0, 0.0),
                 lambda: filters.peaking(x, SR, 1000.0, math.nan, 1.0),
                 lambda: filters.low_shelf(x, SR, 100.0, 6.0, slope=0.0),
                 lambda: filters.high_shelf(x, SR, 8000.0, 12.0, slope=6.0),  # the cookbook formula has no solution
                 lambda: filters.lowpass(x, 0, 1000.0)):
        with pytest.raises(ValueError):
            call()
