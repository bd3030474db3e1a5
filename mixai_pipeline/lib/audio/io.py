"""Decode any supported upload (wav, flac, mp3, m4a, ogg) to float32 PCM, and write WAVs.

WAV, FLAC and Ogg Vorbis are read in process by libsndfile (soundfile): every stage decodes its
inputs again, and two ffmpeg processes (probe, decode) cost ~10x more than the read. Everything else
(mp3, m4a, anything libsndfile refuses) is decoded by ffmpeg to raw float32 on a pipe. Both give
``(samples, channels)`` float32 in [-1, 1] for every bit depth (8/16/24/32-bit, float); the downmix to
mono (the mean of the channels) and resampling (soxr HQ, the library behind ffmpeg's
``aresample=soxr``) are then the same code for both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mixai_pipeline.lib.ingestion.audio_probe import require_tool
from mixai_pipeline.lib.ingestion.manifest import RejectError


def _stream_format(path: Path, label: str) -> tuple[int, int]:
    """(channels, sample rate) of the first audio stream."""
    out = subprocess.run([require_tool("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "stream=channels,sample_rate", "-of", "json", str(path)], capture_output=True, text=True)
    streams = json.loads(out.stdout or "{}").get("streams") if out.returncode == 0 else None
    if not streams:
        raise RejectError("audio_corrupt", f"{label} is not readable audio: {out.stderr.strip()[:200] or 'no stream'}")
    return int(streams[0]["channels"]), int(streams[0]["sample_rate"])


NATIVE_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})


def _read_native(path: Path) -> tuple[np.ndarray, int] | None:
    """libsndfile for the formats it reads well; None to let ffmpeg decide (and word the error)."""
    if path.suffix.lower() not in NATIVE_SUFFIXES:
        return None
    try:
        return sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None


def _read_ffmpeg(path: Path, label: str, timeout_s: float) -> tuple[np.ndarray, int]:
    channels, rate = _stream_format(path, label)
    result = subprocess.run([require_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                             "-f", "f32le", "-acodec", "pcm_f32le", "-"], capture_output=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RejectError("audio_corrupt", f"{label} could not be decoded: "
                          f"{result.stderr.decode(errors='replace').strip()[:200]}")
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, channels), rate


def resample(audio: np.ndarray, rate: int, sr: int) -> np.ndarray:
    """``(samples, channels)`` float32 from ``rate`` to ``sr`` Hz with soxr HQ (the resampler ffmpeg uses)."""
    if rate == sr:
        return audio
    return soxr.resample(audio, rate, sr, quality="HQ").astype(np.float32, copy=False)


def decode(path: Path, *, sr: int | None = None, mono: bool = False, label: str | None = None,
           timeout_s: float = 600.0) -> tuple[np.ndarray, int]:
    """``(samples, channels)`` float32 and its sample rate (``sr`` when given); mono is the mean of the
    channels. Unreadable audio and NaN/inf samples are a RejectError."""
    path = Path(path)
    label = label or path.name
    audio, rate = _read_native(path) or _read_ffmpeg(path, label, timeout_s)
    _finite(audio, label)
    if mono and audio.shape[1] > 1:
        audio = audio.mean(axis=1, keepdims=True, dtype=np.float32)
    if sr is not None:
        audio, rate = resample(audio, rate, sr), sr
    return np.ascontiguousarray(audio), rate


def _finite(audio: np.ndarray, label: str) -> None:
    if not np.isfinite(audio).all():
        raise RejectError("audio_corrupt", f"{label} contains NaN or infinite samples")


def write_wav(path: Path, audio: np.ndarray, sr: int, subtype: str = "PCM_24") -> Path:
    sf.write(str(path), np.asarray(audio), sr, subtype=subtype)
    return path
