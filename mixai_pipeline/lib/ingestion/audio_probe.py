"""Probe an uploaded stem with ffprobe and a full ffmpeg decode.

ffprobe alone trusts headers: a truncated WAV still reports its full duration. So the stem is also
decoded end to end (to ``-f null``), which gives the true duration and surfaces corrupt frames.
"""

from __future__ import annotations

import hashlib
import json
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
    min_duration_s: float = 1.0
    max_duration_s: float = 20 * 60.0
    max_bytes: int = 1 << 30


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
        raise RejectError("audio_too_short", f"{label} lasts {decoded_s:.2f} s; the minimum is "
                                             f"{limits.min_duration_s:g} s")
    if decoded_s > limits.max_duration_s:
        raise RejectError("audio_too_long", f"{label} lasts {decoded_s / 60:.1f} min; the limit is "
                                            f"{limits.max_duration_s / 60:g} min")
    sample_rate = int(stream.get("sample_rate") or 0)
    channels = int(stream.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise RejectError("audio_corrupt", f"{label} reports no sample rate or channel count")
    return StemProbe(sha256=sha256_of(path), bytes=size, duration_s=round(decoded_s, 4),
                     sample_rate=sample_rate, channels=channels,
                     codec=str(stream.get("codec_name", "unknown")), format_name=format_name)


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
