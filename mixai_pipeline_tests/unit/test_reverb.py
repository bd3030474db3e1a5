import numpy as np
import pytest

from mixai_pipeline.lib.mix.reverb import impulse_response, reverb, rt60_s

SR = 44100


@pytest.mark.parametrize("decay", [0.05, 0.3, 0.6])
def test_impulse_response_decays_to_minus_60_db_at_rt60(decay):
    ir = impulse_response(SR, decay, 2)
    energy = np.cumsum((ir ** 2).sum(axis=1)[::-1])[::-1]  # Schroeder backward integration
    edc_db = 10 * np.log10(energy / energy[0])
    predelay = int(0.012 * SR)
    t20 = np.argmax(edc_db < -25) - np.argmax(edc_db < -5)  # T20 extrapolated ×3 → RT60
    assert (t20 * 3) / SR == pytest.approx(rt60_s(decay), rel=0.15)
    assert np.all(ir[:predelay] == 0)
    assert np.corrcoef(ir[predelay:, 0], ir[predelay:, 1])[0, 1] < 0.1  # decorrelated channels


def test_reverb_keeps_length_dry_at_zero_mix_and_adds_a_tail():
    x = np.zeros((SR, 2), dtype=np.float32)
    x[100] = 0.5
    assert reverb(x, SR, 0.5, 0.0) is x
    wet = reverb(x, SR, 0.5, 0.3)
    assert wet.shape == x.shape and wet.dtype == np.float32
    assert np.abs(wet[SR // 2:]).max() > 1e-5  # a tail half a second later
    mono = reverb(x[:, 0], SR, 0.5, 0.3)
    assert mono.shape == (SR,)
