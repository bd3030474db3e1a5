"""Audio decoding (real ffmpeg), the preset catalogue, and previews."""

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mixai_pipeline.lib.audio.io import decode, write_wav
from mixai_pipeline.lib.ingestion.manifest import RejectError
from mixai_pipeline.lib.mix.presets import PRESET_IDS, catalog
from mixai_pipeline.lib.preview import preview as pv
from mixai_pipeline_tests.conftest import make_audio


@pytest.mark.parametrize("name, codec_args", [
    ("a.wav", ()), ("b.flac", ()), ("c.mp3", ()), ("d.m4a", ()), ("e.ogg", ()),
    ("u8.wav", ("-c:a", "pcm_u8")), ("s24.wav", ("-c:a", "pcm_s24le")), ("f32.wav", ("-c:a", "pcm_f32le")),
])
def test_decode_every_format_to_float(tmp_path, name, codec_args):
    path = make_audio(tmp_path / name, 2.0, codec_args=codec_args)
    audio, sr = decode(path)
    assert audio.dtype == np.float32 and audio.shape[1] == 2 and sr == 44100
    assert abs(audio.shape[0] / sr - 2.0) < 0.1
    assert 0.08 < np.abs(audio).max() < 0.13  # lavfi sine at 1/8, upmixed to stereo at -3 dB
    mono, rate = decode(path, sr=22050, mono=True)
    assert mono.shape[1] == 1 and rate == 22050 and abs(mono.shape[0] - 44100) < 2500


def test_decode_refuses_nan_and_garbage(tmp_path):
    bad = np.zeros((4410, 2), dtype=np.float32)
    bad[100, 0] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 44100, subtype="FLOAT")
    with pytest.raises(RejectError, match="NaN or infinite"):
        decode(tmp_path / "nan.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 100)
    with pytest.raises(RejectError, match="junk.wav is not readable audio"):
        decode(tmp_path / "junk.wav")


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_in_process_and_ffmpeg_decoding_agree(tmp_path, subtype):
    # WAV is read in process (libsndfile + soxr); the same bytes under a name libsndfile is not tried on
    # go through ffmpeg: the same samples, then the same downmix and resampling code.
    t = np.arange(44100) / 44100
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)], axis=1)
    sf.write(tmp_path / "x.wav", x, 44100, subtype=subtype)
    (tmp_path / "x.bin").write_bytes((tmp_path / "x.wav").read_bytes())
    native, _ = decode(tmp_path / "x.wav")
    piped, _ = decode(tmp_path / "x.bin")
    assert native.shape == piped.shape and np.max(np.abs(native - piped)) < 1e-6
    native_mono, _ = decode(tmp_path / "x.wav", sr=22050, mono=True)
    piped_mono, _ = decode(tmp_path / "x.bin", sr=22050, mono=True)
    assert native_mono.shape == piped_mono.shape and np.max(np.abs(native_mono - piped_mono)) < 1e-6


def test_write_wav_roundtrip(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 200, 4410))).astype(np.float32)
    write_wav(tmp_path / "x.wav", x, 44100)
    y, sr = decode(tmp_path / "x.wav")
    assert sr == 44100 and np.max(np.abs(y[:, 0] - x)) < 1e-5


def test_preset_catalogue_follows_the_product_table():
    c = catalog()
    assert len(PRESET_IDS) == 12
    assert c.choose("standard", None).id == "wide_pop"
    assert c.choose("creator", None).id == "studio_shine"
    assert c.choose("lite", None).id == c.choose("freetrial", None).id == "clean_light"
    assert c.choose("creator", "night_chill").eq[-1].hz == 12000
    assert c.presets["studio_shine"].lpf_hz == 18000
    with pytest.raises(ValueError, match="not available on the lite plan"):
        c.choose("lite", "night_chill")
    with pytest.raises(ValueError, match="unknown preset"):
        c.choose("creator", "nope")


def test_preview_length_rules():
    assert pv.preview_length_s(20) == 20
    assert pv.preview_length_s(90) == 30
    assert pv.preview_length_s(200) == 50
    assert pv.preview_length_s(3600) == 60


def test_representative_excerpt_skips_a_quiet_intro_and_picks_the_repeated_part():
    sr = 22050
    rng = np.random.default_rng(1)
    t = np.arange(int(10 * sr)) / sr
    chorus = 0.4 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    intro = 0.02 * rng.standard_normal(int(40 * sr))
    verse = 0.2 * np.sin(2 * np.pi * 311 * np.arange(int(20 * sr)) / sr)
    song = np.concatenate([intro, chorus, verse, chorus, chorus, verse, chorus]).astype(np.float32)
    excerpt = pv.representative_excerpt(song, sr, 30.0)
    assert excerpt.end_s - excerpt.start_s == pytest.approx(30.0)
    assert excerpt.start_s >= 35.0  # not the first seconds, not the intro


def test_preview_files(tmp_path):
    sr = 44100
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(sr * 5) / sr)).astype(np.float32)
    faded = pv.fade(x, sr)
    assert faded[0] == 0 and faded[-1] == 0 and np.max(np.abs(faded)) == pytest.approx(0.3, abs=1e-3)
    out = pv.encode_aac(faded, sr, tmp_path / "p.m4a")
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                      capture_output=True, text=True, check=True).stdout)["streams"][0]
    assert probe["codec_name"] == "aac" and probe["channels"] == 1
    assert 80_000 <= int(probe["bit_rate"]) <= 110_000
    peaks = pv.waveform_peaks(faded, sr, bins=500)
    assert peaks["bins"] == 500 and len(peaks["min"]) == len(peaks["max"]) == 500
    assert max(peaks["max"]) == pytest.approx(0.3, abs=1e-3) and min(peaks["min"]) == pytest.approx(-0.3, abs=1e-3)
    assert peaks["max"][0] < 0.05  # the fade-in, exactly where the PCM has it (no codec delay)
    png = pv.waveform_png(peaks, tmp_path / "w.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pv.waveform_peaks(np.zeros(3, dtype=np.float32), sr)["bins"] == 3
