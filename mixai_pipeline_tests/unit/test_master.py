"""The master chain and its parameter estimator, on a rendered Bach chorale and on synthetic signals."""

import dataclasses
import json
import math

import numpy as np
import pytest
import soundfile as sf

from mixai_pipeline.lib.demo import render
from mixai_pipeline.lib.dsp import filters, loudness, master
from mixai_pipeline.lib.ingestion.manifest import PLANS

SR = render.SAMPLE_RATE


@pytest.fixture(scope="module")
def chorale(tmp_path_factory) -> np.ndarray:
    """A real stereo piano rendering (alto, tenor and bass of BWV 66.6), its first 10 s."""
    folder = tmp_path_factory.mktemp("chorale")
    score = render.load_chorale("bach/bwv66.6")
    render.write_midi(score, [1, 2, 3], render.PROGRAMS["piano"], 92, 1, folder / "chorale.mid")
    render.synthesize(folder / "chorale.mid", folder / "chorale.wav")
    audio, sr = sf.read(folder / "chorale.wav")
    assert sr == SR and audio.shape[1] == 2
    return audio[: 10 * SR]


def pink(seconds: float, seed: int = 0, channels: int = 2) -> np.ndarray:
    """Pink noise (-3 dB/octave), shaped in the frequency domain."""
    n = int(seconds * SR)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal((n, channels)), axis=0)
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0))[:, None]
    x = np.fft.irfft(spectrum, n, axis=0)
    return 0.5 * x / np.max(np.abs(x))


def at_lufs(x: np.ndarray, lufs: float) -> np.ndarray:
    return x * 10 ** ((lufs - loudness.integrated_loudness(x, SR)) / 20)


def dense() -> np.ndarray:
    """Pink noise driven into hard clipping: about -4 LUFS, a peak-to-loudness ratio near 6 dB."""
    return np.clip(at_lufs(pink(4.0, 1), -4.0), -1.0, 1.0)


def very_dynamic() -> np.ndarray:
    """pp to ff in four 1.5 s steps 8 dB apart (LRA ~16 LU), with sharp clicks on top (PLR ~20 dB)."""
    rng = np.random.default_rng(9)
    bed = pink(6.0, 7)
    level = np.repeat(10 ** (np.array([-30.0, -22.0, -14.0, -6.0]) / 20), 3 * SR // 2)[:, None]
    x = 0.1 * bed / np.sqrt(np.mean(bed ** 2)) * level
    t = np.arange(int(0.03 * SR)) / SR
    for start in range(SR // 8, x.shape[0] - t.size, SR // 4):
        x[start: start + t.size] += 0.3 * level[start] * rng.standard_normal((t.size, 2)) * np.exp(-t / 0.002)[:, None]
    return 0.9 * x / np.max(np.abs(x))


SYNTHETIC = {
    "pink noise": lambda: at_lufs(pink(4.0), -20.0),
    "dense clipped": dense,
    "quiet -40 LUFS": lambda: at_lufs(pink(4.0, 2), -40.0),
    "very dynamic": very_dynamic,
}


def signal(name: str, request) -> np.ndarray:
    return request.getfixturevalue("chorale") if name == "chorale" else SYNTHETIC[name]()


def band_ratio_db(x: np.ndarray, band: tuple[float, float], reference: tuple[float, float] = (200.0, 5000.0)) -> float:
    power = (np.abs(np.fft.rfft(x, axis=0)) ** 2).sum(axis=1)
    freqs = np.fft.rfftfreq(x.shape[0], 1 / SR)

    def band_power(edges):
        return power[(freqs >= edges[0]) & (freqs < edges[1])].sum()

    return 10 * math.log10(band_power(band) / band_power(reference))


# -------------------------------------------------------------------------------------------- guarantees

@pytest.mark.parametrize("target", [-14.0, -9.0, -23.0])
@pytest.mark.parametrize("name", ["chorale", *SYNTHETIC])
def test_loudness_and_true_peak_guarantees(name, target, request):
    x = signal(name, request)
    params = dataclasses.replace(master.estimate_master_params(x, SR, "standard"), target_lufs=target)
    y, report = master.master(x, SR, params)
    assert y.shape == x.shape
    lufs, true_peak = loudness.integrated_loudness(y, SR), loudness.true_peak_dbtp(y, SR)
    assert abs(lufs - target) <= 0.5
    assert true_peak <= -1.0
    assert report["target_reached"] is True and report["silent"] is False and report["note"] is None
    assert abs(report["output_integrated_lufs"] - lufs) < 1e-9
    assert abs(report["output_true_peak_dbtp"] - true_peak) < 1e-6
    assert abs(report["input_integrated_lufs"] - loudness.integrated_loudness(x, SR)) < 1e-9
    assert abs(report["applied_gain_db"] - report["normalize_gain_db"] - report["trim_gain_db"]) < 1e-9
    if params.comp_db > 0:
        assert abs(report["compressor_gain_reduction_db"] - params.comp_db) < 0.05
    json.dumps(report, allow_nan=False)


def test_loudness_counts_every_channel_not_a_mono_downmix():
    left = at_lufs(pink(6.0, 3, channels=1), -25.0)[:, 0]
    x = np.stack([left, -left], axis=1)  # out of phase: a mono downmix is silence
    y, report = master.master(x, SR, master.MasterParams(0.0, 0.0, 0.0, -14.0))
    assert abs(loudness.integrated_loudness(y, SR) + 14.0) <= 0.5
    assert np.allclose(y[:, 0], -y[:, 1])


def test_mono_and_six_channels():
    # (one channel of noise under -1 dBTP tops out near -10 LUFS: a mono -9 would be out of reach)
    mono = at_lufs(pink(5.0, 4, channels=1), -30.0)[:, 0]
    y, _ = master.master(mono, SR, master.MasterParams(0.0, 0.0, 1.0, -14.0))
    assert y.shape == mono.shape
    assert abs(loudness.integrated_loudness(y, SR) + 14.0) <= 0.5 and loudness.true_peak_dbtp(y, SR) <= -1.0

    surround = at_lufs(pink(5.0, 5, channels=6), -20.0)
    surround[:, 3] = np.clip(4 * surround[:, 3], -1, 1)  # a hot LFE: not loudness, but peaks
    y, report = master.master(surround, SR, master.MasterParams(0.0, 0.0, 0.0, -14.0))
    assert y.shape == surround.shape
    assert abs(loudness.integrated_loudness(y, SR) + 14.0) <= 0.5
    assert max(loudness.true_peak_dbtp(y[:, c], SR) for c in range(6)) <= -1.0
    assert report["output_true_peak_dbtp"] <= -1.0


def test_an_unreachable_target_comes_as_close_as_the_ceiling_allows_and_says_so():
    x = dense()
    y, report = master.master(x, SR, master.MasterParams(0.0, 0.0, 0.0, 0.0))
    assert loudness.true_peak_dbtp(y, SR) <= -1.0
    assert report["target_reached"] is False and "not reachable" in report["note"]
    assert -9.0 < loudness.integrated_loudness(y, SR) < -0.5  # pushed hard, but the ceiling wins


def test_silence_in_silence_out():
    x = np.zeros((5 * SR, 2))
    y, report = master.master(x, SR, master.MasterParams(2.0, 2.0, 3.0, -14.0))
    assert y.shape == x.shape and not np.any(y)
    assert report["silent"] is True and report["target_reached"] is False and "silent" in report["note"]
    assert report["output_integrated_lufs"] is None
    json.dumps(report, allow_nan=False)


def test_audio_too_short_to_measure_is_only_peak_limited():
    x = np.clip(3 * np.random.default_rng(6).standard_normal((int(0.2 * SR), 2)), -1, 1)
    y, report = master.master(x, SR, master.MasterParams(0.0, 0.0, 0.0, -14.0))
    assert loudness.true_peak_dbtp(y, SR) <= -1.0
    assert report["silent"] is False and report["target_reached"] is False and "not measurable" in report["note"]


def test_nan_and_inf_are_refused():
    for bad in (np.nan, np.inf, -np.inf):
        x = pink(1.0)
        x[100, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            master.master(x, SR, master.MasterParams(0.0, 0.0, 0.0, -14.0))
        with pytest.raises(ValueError, match="NaN or infinite"):
            master.estimate_master_params(x, SR, "standard")


# ---------------------------------------------------------------------------------------------- shelves

def test_shelves_move_the_spectrum_the_requested_way():
    x = at_lufs(pink(4.0, 8), -30.0)
    flat, _ = master.master(x, SR, master.MasterParams(0.0, 0.0, 0.0, -23.0))
    low = (30.0, 100.0)
    high = (10_000.0, 16_000.0)
    for gain in (4.0, -4.0):
        bass, _ = master.master(x, SR, master.MasterParams(gain, 0.0, 0.0, -23.0))
        moved = band_ratio_db(bass, low) - band_ratio_db(flat, low)
        assert math.copysign(1, moved) == math.copysign(1, gain) and abs(moved) > 2.5
        air, _ = master.master(x, SR, master.MasterParams(0.0, gain, 0.0, -23.0))
        moved = band_ratio_db(air, high) - band_ratio_db(flat, high)
        assert math.copysign(1, moved) == math.copysign(1, gain) and abs(moved) > 2.5


# -------------------------------------------------------------------------------------------- estimator

def test_estimator_reads_tonal_balance():
    balanced = master.estimate_master_params(at_lufs(pink(6.0, 10), -20.0), SR, "standard")
    assert balanced.low_shelf_db == 0.0 and balanced.high_shelf_db == 0.0

    bass_heavy = filters.low_shelf(at_lufs(pink(6.0, 11), -20.0), SR, 150.0, 12.0)
    assert master.estimate_master_params(bass_heavy, SR, "standard").low_shelf_db < 0

    dull = filters.lowpass(filters.lowpass(at_lufs(pink(6.0, 12), -20.0), SR, 3000.0), SR, 3000.0)
    estimate = master.estimate_master_params(dull, SR, "standard")
    assert estimate.high_shelf_db > 0 and estimate.low_shelf_db == 0.0

    # far off the target curve the shelves stop at their clamps
    bass_only = filters.lowpass(filters.lowpass(at_lufs(pink(6.0, 13), -20.0), SR, 100.0), SR, 100.0)
    extreme = master.estimate_master_params(bass_only, SR, "standard")
    assert extreme.low_shelf_db == -master.MAX_SHELF_DB and extreme.high_shelf_db == master.MAX_SHELF_DB


def test_estimator_compresses_dynamic_mixes_and_leaves_dense_ones():
    assert master.estimate_master_params(dense(), SR, "standard").comp_db == 0.0
    assert master.estimate_master_params(very_dynamic(), SR, "standard").comp_db > 2.0


@pytest.mark.parametrize("name", ["chorale", *SYNTHETIC])
def test_estimates_stay_within_their_clamps(name, request):
    params = master.estimate_master_params(signal(name, request), SR, "creator")
    assert -6.0 <= params.low_shelf_db <= 6.0 and -6.0 <= params.high_shelf_db <= 6.0
    assert 0.0 <= params.comp_db <= 6.0
    assert params.target_lufs == -14.0


def test_every_plan_targets_minus_14_lufs():
    assert set(master.PLAN_TARGET_LUFS) == set(PLANS)
    x = at_lufs(pink(2.0, 14), -20.0)
    for plan in PLANS:
        assert master.estimate_master_params(x, SR, plan).target_lufs == -14.0
    with pytest.raises(ValueError, match="unknown plan"):
        master.estimate_master_params(x, SR, "premium")


def test_estimator_on_silence_asks_for_nothing():
    assert master.estimate_master_params(np.zeros((SR, 2)), SR, "lite").as_list() == [0.0, 0.0, 0.0, -14.0]


def test_master_params():
    params = master.MasterParams(low_shelf_db=-1.5, high_shelf_db=2.0, comp_db=3.0, target_lufs=-14.0)
    assert params.as_list() == [-1.5, 2.0, 3.0, -14.0]
    for bad in ({"comp_db": -1.0}, {"target_lufs": math.nan}, {"low_shelf_db": math.inf}, {"target_lufs": 3.0}):
        with pytest.raises(ValueError):
            dataclasses.replace(params, **bad)
