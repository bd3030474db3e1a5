"""Probe an uploaded stem with ffprobe and a full ffmpeg decode.

ffprobe alone trusts headers: a truncated WAV still reports its full duration. So the stem is also
decoded end to end (to ``-f null``), which gives the true duration and surfaces corrupt frames.
Float PCM (the one stored format that can hold NaN or infinities) is also read by libsndfile and
rejected if any sample is not finite; rates and channel counts the audio stages cannot process are
rejected here too (``AudioLimits``), so that such a stem never reaches them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mixai_pipeline.lib.ingestion.manifest import RejectError

SUPPORTED_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "ogg")
# ffprobe's format_name values each extension may carry.
_FORMATS = {
    "wav": {"wav"},
    "flac": {"flac"},
    "mp3": {"mp3"},
    "m4a": {"mov", "mp4", "m4a"},
    "ogg": {"ogg"},
}
_TRUNCATION_TOLERANCE_S = 0.5


class ToolMissing(RuntimeError):
    pass


def require_tool(name: str, package: str = "ffmpeg") -> str:
    path = shutil.which(name)
    if not path:
        raise ToolMissing(f"{name} is not installed: install the Debian package '{package}' "
                          f"(apt-get install {package}) or run `make setup`")
    return path


@dataclass(frozen=True)
class AudioLimits:
    """What the audio stages can process; the rates and channels are those of the feature extractor
    (``lib/features/extract.py``: 8-384 kHz, at most 6 channels = 5.1), so a stem beyond them is rejected
    here with a reason instead of failing a later stage."""
    min_duration_s: float = 1.0
    max_duration_s: float = 20 * 60.0
    max_bytes: int = 1 << 30
    min_sample_rate: int = 8_000
    max_sample_rate: int = 384_000
    max_channels: int = 6


@dataclass(frozen=True)
class StemProbe:
    sha256: str
    bytes: int
    duration_s: float
    sample_rate: int
    channels: int
    codec: str
    format_name: str


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def probe_stem(path: Path, label: str, extension: str, limits: AudioLimits = AudioLimits(),
               timeout_s: float = 300.0) -> StemProbe:
    """Validate and describe one stem; raise RejectError naming the stem (``label``) on bad input."""
    size = path.stat().st_size
    if size == 0:
        raise RejectError("audio_empty", f"{label} is empty (0 bytes)")
    if size > limits.max_bytes:
        raise RejectError("file_too_large", f"{label} is {size / 2**20:,.0f} MiB; the limit is "
                                            f"{limits.max_bytes / 2**20:,.0f} MiB")
    ffprobe, ffmpeg = require_tool("ffprobe"), require_tool("ffmpeg")
    probe = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         "-select_streams", "a", str(path)],
        capture_output=True, text=True, timeout=timeout_s, errors="replace")
    if probe.returncode != 0:
        detail = _first_line(probe.stderr.replace(str(path), label)) or "unrecognised data"
        raise RejectError("audio_corrupt", f"{label} is not readable audio ({detail})")
    info = json.loads(probe.stdout or "{}")
    streams = info.get("streams") or []
    if not streams:
        raise RejectError("audio_corrupt", f"{label} contains no audio stream")
    stream, container = streams[0], info.get("format", {})
    format_name = container.get("format_name", "")
    if not set(format_name.split(",")) & _FORMATS[extension]:
        raise RejectError("unsupported_format",
                          f"{label} has the extension .{extension} but contains {format_name or 'unknown'} data")

    decode = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), "-map", "0:a:0",
         "-progress", "pipe:1", "-nostats", "-f", "null", "-"],
        capture_output=True, text=True, timeout=timeout_s, errors="replace")
    if decode.returncode != 0 or decode.stderr.strip():
        detail = _first_line(decode.stderr.replace(str(path), label)) or f"ffmpeg exited with {decode.returncode}"
        raise RejectError("audio_corrupt", f"{label} is corrupt: decoding failed ({detail})")
    decoded_s = _decoded_seconds(decode.stdout)
    if decoded_s <= 0:
        raise RejectError("audio_empty", f"{label} holds no audio samples")
    header_s = _float(container.get("duration")) or _float(stream.get("duration"))
    if header_s and header_s - decoded_s > max(_TRUNCATION_TOLERANCE_S, 0.01 * header_s):
        raise RejectError("audio_corrupt", f"{label} is truncated: its header promises {header_s:.1f} s "
                                           f"but only {decoded_s:.1f} s decode")
    if decoded_s < limits.min_duration_s:
        shown = math.floor(decoded_s * 100) / 100  # rounded away from the limit, never onto it
        raise RejectError("audio_too_short", f"{label} lasts {shown:.2f} s; the minimum is "
                                             f"{limits.min_duration_s:g} s")
    if decoded_s > limits.max_duration_s:
        shown = math.ceil(decoded_s * 10) / 10
        raise RejectError("audio_too_long", f"{label} lasts {shown:,.1f} s; the limit is "
                                            f"{limits.max_duration_s:,.0f} s ({limits.max_duration_s / 60:g} min)")
    sample_rate = int(stream.get("sample_rate") or 0)
    channels = int(stream.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise RejectError("audio_corrupt", f"{label} reports no sample rate or channel count")
    if not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise RejectError("unsupported_sample_rate",
                          f"{label} is sampled at {sample_rate:,} Hz; supported rates are "
                          f"{limits.min_sample_rate:,}-{limits.max_sample_rate:,} Hz")
    if channels > limits.max_channels:
        raise RejectError("unsupported_channels", f"{label} has {channels} channels; at most "
                                                  f"{limits.max_channels} (5.1) are supported")
    codec = str(stream.get("codec_name", "unknown"))
    if codec.startswith("pcm_f"):  # float PCM is the one stored format that can hold NaN and infinities
        nan, inf = _non_finite_samples(path)
        if nan or inf:
            found = " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
            raise RejectError("audio_corrupt", f"{label} contains {found} samples (float PCM)")
    return StemProbe(sha256=sha256_of(path), bytes=size, duration_s=round(decoded_s, 4),
                     sample_rate=sample_rate, channels=channels,
                     codec=codec, format_name=format_name)


def _non_finite_samples(path: Path) -> tuple[int, int]:
    """(NaN, ±inf) sample counts of a float PCM file, read in blocks by libsndfile; (0, 0) if it cannot
    read the file (the stages' decoder checks every input again)."""
    import numpy as np
    import soundfile as sf

    nan = inf = 0
    try:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=1 << 18, dtype="float64", always_2d=True):
                nan += int(np.count_nonzero(np.isnan(block)))
                inf += int(np.count_nonzero(np.isinf(block)))
    except (sf.LibsndfileError, RuntimeError):
        return 0, 0
    return nan, inf


def _decoded_seconds(progress: str) -> float:
    """The last ``out_time_us`` that ``ffmpeg -progress`` reported."""
    seconds = 0.0
    for line in progress.splitlines():
        key, _, value = line.partition("=")
        if key in ("out_time_us", "out_time_ms") and value.strip().lstrip("-").isdigit():
            seconds = max(seconds, int(value) / 1e6)  # both keys are in microseconds
    return seconds


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _first_line(text: str) -> str:
    """The first message of a tool's stderr, without ffmpeg's ``[decoder @ 0x…]`` prefix."""
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip())
        if line:
            return line[:200]
    return ""
