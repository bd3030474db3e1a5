"""Previews of a clip: a 30–60 s mono excerpt of its most representative part, AAC 96 kbps, and a
waveform (min/max peaks as JSON and a PNG) computed from the PCM itself.

Representative part: on 0.5 s frames of chroma + MFCC (timbre and harmony), each frame's mean
cosine similarity to the whole clip says how typical it is (a chorus repeats, an intro does not);
weighted by the frame's loudness, the window of the preview's length with the highest mean wins.
Peaks come from the PCM, not from the decoded AAC, whose encoder priming delay would shift them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixai_pipeline.lib.ingestion.audio_probe import require_tool

FRAME_S = 0.5
MIN_PREVIEW_S, MAX_PREVIEW_S = 30.0, 60.0
PREVIEW_BITRATE = "96k"
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # ffmpeg's aac, up to 48 kHz


def preview_length_s(duration_s: float) -> float:
    """30 s, growing to 60 s for long clips (a quarter of the clip); the whole clip when shorter than 30 s."""
    return min(duration_s, max(MIN_PREVIEW_S, min(MAX_PREVIEW_S, duration_s / 4)))


@dataclass(frozen=True)
class Excerpt:
    start_s: float
    end_s: float
    score: float  # mean typicality × loudness weight of the chosen window (0 when the clip is the preview)


def representative_excerpt(mono: np.ndarray, sr: int, length_s: float | None = None) -> Excerpt:
    import librosa

    duration = mono.shape[0] / sr
    length = preview_length_s(duration) if length_s is None else min(length_s, duration)
    if length >= duration - FRAME_S:
        return Excerpt(0.0, duration, 0.0)
    hop = int(FRAME_S * sr)
    chroma = librosa.feature.chroma_stft(y=mono, sr=sr, n_fft=4096, hop_length=hop)
    mfcc = librosa.feature.mfcc(y=mono, sr=sr, n_mfcc=13, n_fft=4096, hop_length=hop)[1:]  # timbre, not level
    rms = librosa.feature.rms(y=mono, frame_length=4096, hop_length=hop)[0]
    features = np.vstack([chroma / (np.linalg.norm(chroma, axis=0, keepdims=True) + 1e-9),
                          mfcc / (np.linalg.norm(mfcc, axis=0, keepdims=True) + 1e-9)])
    features /= np.linalg.norm(features, axis=0, keepdims=True) + 1e-9
    typicality = (features.T @ features).mean(axis=1)
    loudness_weight = np.clip(rms / (rms.max() + 1e-12), 0, 1) ** 0.5  # prefer the body over quiet intros
    frame_score = typicality * loudness_weight
    window = max(1, int(round(length / FRAME_S)))
    if window >= frame_score.size:
        return Excerpt(0.0, length, float(frame_score.mean()))
    window_means = np.convolve(frame_score, np.ones(window) / window, mode="valid")
    best = int(np.argmax(window_means))
    start = min(best * FRAME_S, duration - length)
    return Excerpt(round(start, 3), round(start + length, 3), float(window_means[best]))


def fade(mono: np.ndarray, sr: int, fade_s: float = 0.5) -> np.ndarray:
    """Short fades so that an excerpt does not start or stop with a click."""
    n = min(int(fade_s * sr), mono.shape[0] // 2)
    out = mono.astype(np.float32, copy=True)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def preview_sample_rate(sr: int) -> int:
    """The rate the preview is encoded at: ``sr`` when AAC has it, else the next AAC rate up, at most 48 kHz
    (96 kbps mono gains nothing from a wider band; ffmpeg would otherwise pick a rate the records do not know)."""
    return next((rate for rate in AAC_RATES if rate >= sr), AAC_RATES[-1])


def encode_aac(mono: np.ndarray, sr: int, out_path: Path, bitrate: str = PREVIEW_BITRATE) -> Path:
    """Mono AAC in an .m4a container at ``preview_sample_rate(sr)`` (see ``encode_aac_many``)."""
    return encode_aac_many([(mono, sr, out_path)], bitrate)[0]


def encode_aac_many(clips: list[tuple[np.ndarray, int, Path]], bitrate: str = PREVIEW_BITRATE) -> list[Path]:
    """Each ``(mono, sr, out_path)`` as mono AAC in an .m4a at ``preview_sample_rate(sr)``, all in one ffmpeg
    run: starting ffmpeg costs ~0.1 s, a third of encoding a 30 s preview, and a job has three previews.
    The PCM goes through raw float32 files beside the outputs (one pipe per input would need a writer
    thread each). ffmpeg's default two-loop coder: its "fast" coder is a third quicker but undershoots the
    bitrate on simple material (31 kbps on a sine), and previews are promised at 96 kbps."""
    command = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-y"]
    outputs: list[str] = []
    for index, (mono, sr, out_path) in enumerate(clips):
        raw = Path(out_path).with_suffix(".f32")
        np.clip(mono, -1.0, 1.0).astype("<f4").tofile(raw)
        command += ["-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", str(raw)]
        outputs += ["-map", f"{index}:a", "-ar", str(preview_sample_rate(sr)), "-c:a", "aac", "-b:a", bitrate,
                    "-movflags", "+faststart", str(out_path)]
    try:
        subprocess.run(command + outputs, check=True, capture_output=True, timeout=300)
    finally:
        for _, _, out_path in clips:
            Path(out_path).with_suffix(".f32").unlink(missing_ok=True)
    return [Path(out_path) for _, _, out_path in clips]


def waveform_peaks(mono: np.ndarray, sr: int, bins: int = 800) -> dict:
    """Min/max of the PCM in ``bins`` equal slices (the JSON the player draws)."""
    n = mono.shape[0]
    bins = max(1, min(bins, n))
    edges = np.linspace(0, n, bins + 1).astype(int)
    mins = np.minimum.reduceat(mono, edges[:-1])
    maxs = np.maximum.reduceat(mono, edges[:-1])
    return {"version": 1, "sample_rate": sr, "duration_s": round(n / sr, 4), "bins": bins,
            "min": [round(float(v), 4) for v in mins], "max": [round(float(v), 4) for v in maxs]}


def waveform_png(peaks: dict, out_path: Path, width: int = 1200, height: int = 200) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 250, 252))
    draw = ImageDraw.Draw(image)
    mins, maxs = np.asarray(peaks["min"]), np.asarray(peaks["max"])
    xs = np.linspace(0, width - 1, mins.size)
    middle = (height - 1) / 2
    for x, lo, hi in zip(xs, mins, maxs, strict=True):
        draw.line([(x, middle - hi * middle), (x, middle - lo * middle)], fill=(46, 94, 170))
    draw.line([(0, middle), (width, middle)], fill=(200, 200, 210))
    image.save(out_path, format="PNG", optimize=True)
    return out_path


def write_peaks_json(peaks: dict, out_path: Path) -> Path:
    out_path.write_text(json.dumps(peaks, separators=(",", ":")), encoding="utf-8")
    return out_path
