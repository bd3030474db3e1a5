"""Decode any supported upload (wav, flac, mp3, m4a, ogg) to float32 PCM, and write WAVs.

ffmpeg decodes to raw float32 on a pipe, so every format and bit depth (8/16/24/32-bit, float)
arrives the same way; resampling, when asked for, is ffmpeg's soxr-quality ``aresample``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from mixai_pipeline.lib.ingestion.audio_probe import require_tool
from mixai_pipeline.lib.ingestion.manifest import RejectError


def _stream_format(path: Path) -> tuple[int, int]:
    """(channels, sample rate) of the first audio stream."""
    out = subprocess.run([require_tool("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "stream=channels,sample_rate", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    stream = json.loads(out.stdout)["streams"][0]
    return int(stream["channels"]), int(stream["sample_rate"])


def decode(path: Path, *, sr: int | None = None, mono: bool = False, label: str | None = None,
           timeout_s: float = 600.0) -> tuple[np.ndarray, int]:
    """``(samples, channels)`` float32 and its sample rate; NaN/inf samples are a RejectError."""
    label = label or Path(path).name
    source_channels, source_rate = _stream_format(path)
    channels, rate = (1 if mono else source_channels), (sr or source_rate)
    command = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
               "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels)]
    if sr is not None:
        command += ["-af", "aresample=resampler=soxr", "-ar", str(sr)]
    result = subprocess.run(command + ["-"], capture_output=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RejectError("audio_corrupt", f"{label} could not be decoded: "
                          f"{result.stderr.decode(errors='replace').strip()[:200]}")
    audio = np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, channels)
    if not np.isfinite(audio).all():
        raise RejectError("audio_corrupt", f"{label} contains NaN or infinite samples")
    return audio, rate


def write_wav(path: Path, audio: np.ndarray, sr: int, subtype: str = "PCM_24") -> Path:
    sf.write(str(path), np.asarray(audio), sr, subtype=subtype)
    return path
