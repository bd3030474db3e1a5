import numpy as np
import pytest

from mixai_pipeline.lib.mix.presets import catalog
from mixai_pipeline.lib.mix.vocal_chain import mix, shift, to_stereo, vocal_chain

SR = 44100


def tone(hz: float, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def band_level_db(x: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x[:, 0] if x.ndim == 2 else x))
    freqs = np.fft.rfftfreq(x.shape[0], 1 / SR)
    return 20 * np.log10(spectrum[np.argmin(np.abs(freqs - hz))] + 1e-12)


def test_to_stereo_layouts():
    mono = np.ones((10, 1))
    assert to_stereo(mono).shape == (10, 2)
    surround = np.zeros((10, 6))
    surround[:, 2] = 1.0  # centre only
    folded = to_stereo(surround)
    assert folded.shape == (10, 2) and np.allclose(folded, np.sqrt(0.5))


def test_shift_undoes_the_offset_and_fits_the_length():
    x = np.arange(10, dtype=float)[:, None]
    assert np.array_equal(shift(x, 0.0, SR, 10), x)
    late = shift(x, 3 * 1000 / SR, SR, 10)  # vocal started 3 samples late: drop them
    assert late[0, 0] == 3 and late[-1, 0] == 0
    early = shift(x, -2 * 1000 / SR, SR, 10)
    assert early[:2, 0].tolist() == [0, 0] and early[2, 0] == 0 and early[3, 0] == 1


def test_vocal_chain_high_pass_cuts_rumble_and_keeps_the_voice():
    preset = catalog().presets["rap_tight"]  # high-pass at 100 Hz
    rumble, voice = tone(30), tone(1000)
    signal = to_stereo((rumble + voice)[:, None])
    out = vocal_chain(signal, SR, preset)
    assert band_level_db(out, 30) - band_level_db(signal, 30) < -12
    assert abs(band_level_db(out, 1000) - band_level_db(signal, 1000)) < 6


@pytest.mark.parametrize("preset_id", ["clean_light", "studio_shine", "night_chill"])
def test_mix_length_channels_weights_and_no_clipping(preset_id):
    preset = catalog().presets[preset_id]
    inst = np.stack([tone(220, 3.0, 0.9), tone(220, 3.0, 0.9)], axis=1)
    vocal = tone(800, 2.0, 0.9)[:, None]
    result = mix(inst, vocal, SR, preset, offset_ms=100.0)
    assert result.audio.shape == inst.shape and result.audio.dtype == np.float32
    assert np.max(np.abs(result.audio)) <= 0.999 + 1e-6
    assert result.clipped_prevented_db >= 0
    silent_vocal = mix(inst, np.zeros((SR, 1), dtype=np.float32), SR, preset)
    assert np.allclose(silent_vocal.audio, np.clip(preset.inst_weight * inst, -1, 1) * min(
        1.0, 0.999 / (preset.inst_weight * 0.9)), atol=1e-4)
