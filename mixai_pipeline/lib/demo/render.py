"""Render chorale voices to audio stems: music21 score → MIDI → fluidsynth (GM SoundFont) → ffmpeg.

The soprano line becomes the "vocal" (a choir patch), the alto, tenor and bass lines the
"instrumental" (piano, strings or organ). Both stems share one timeline, so the true offset between
them is exactly the silence added in front of the vocal.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mixai_pipeline.lib.ingestion.audio_probe import require_tool

SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)
SAMPLE_RATE = 44100
# General MIDI programs (0-based).
PROGRAMS = {"piano": 0, "organ": 19, "strings": 48, "choir": 52, "voice_oohs": 53}
ENCODERS = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "m4a": ["-c:a", "aac", "-b:a", "192k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "5"],
}


def find_soundfont() -> Path:
    for path in SOUNDFONT_CANDIDATES:
        if path.exists():
            return path
    raise FileNotFoundError("no General MIDI SoundFont found: install the Debian package "
                            "'fluid-soundfont-gm' (apt-get install fluid-soundfont-gm) or run `make setup`")


@dataclass(frozen=True)
class ChoraleInfo:
    corpus_path: str
    key: str           # e.g. "F#m"
    quarter_length: float
    part_names: tuple[str, ...]


def load_chorale(corpus_path: str):
    from music21 import corpus

    return corpus.parse(corpus_path)


def chorale_info(score, corpus_path: str) -> ChoraleInfo:
    analysed = score.analyze("key")
    tonic = analysed.tonic.name.replace("-", "b")
    return ChoraleInfo(corpus_path, tonic + ("m" if analysed.mode == "minor" else ""),
                       float(score.highestTime), tuple(p.partName or f"part{i}" for i, p in enumerate(score.parts)))


def write_midi(score, part_indices: list[int], program: int, bpm: float, repeats: int, path: Path) -> None:
    """A MIDI file of the given parts, each on the given GM program, played ``repeats`` times at ``bpm``."""
    from music21 import instrument, midi, stream, tempo

    length = float(score.highestTime)
    out = stream.Score()
    for index in part_indices:
        source = score.parts[index]
        part = stream.Part()
        patch = instrument.Instrument()
        patch.midiProgram = program
        part.insert(0, patch)
        part.insert(0, tempo.MetronomeMark(number=bpm))
        for r in range(repeats):
            for note in source.flatten().notes:
                part.insert(r * length + float(note.offset), copy.deepcopy(note))
        out.insert(0, part)
    midi_file = midi.translate.streamToMidiFile(out)
    midi_file.open(str(path), "wb")
    try:
        midi_file.write()
    finally:
        midi_file.close()


def synthesize(midi_path: Path | list[Path], wav_path: Path, gain: float = 0.5, *,
               sample_rate: int = SAMPLE_RATE) -> None:
    """Render MIDI to a WAV with FluidSynth. Several files play back to back in one run: starting FluidSynth
    (loading the 148 MB SoundFont) costs ~0.4 s, about five times rendering a short piece."""
    fluidsynth = require_tool("fluidsynth", "fluidsynth")
    paths = midi_path if isinstance(midi_path, list) else [midi_path]
    subprocess.run([fluidsynth, "-ni", "-q", "-g", str(gain), "-r", str(sample_rate), "-F", str(wav_path),
                    str(find_soundfont()), *map(str, paths)], check=True, capture_output=True, timeout=300)


def encode(wav_path: Path, out_path: Path, fmt: str, *, delay_ms: float = 0.0) -> None:
    """Encode to ``fmt``; a positive ``delay_ms`` adds that much silence in front, a negative one trims."""
    ffmpeg = require_tool("ffmpeg")
    filters = []
    if delay_ms > 0:
        filters = ["-af", f"adelay=delays={delay_ms:.3f}:all=1"]
    elif delay_ms < 0:
        filters = ["-af", f"atrim=start={-delay_ms / 1000:.6f},asetpts=PTS-STARTPTS"]
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(wav_path), *filters,
                    *ENCODERS[fmt], str(out_path)], check=True, capture_output=True, timeout=300)


def encode_tone(out_path: Path, seconds: float = 3.0) -> None:
    """A short, valid WAV (a 440 Hz tone) for the bad uploads whose audio is not the point."""
    ffmpeg = require_tool("ffmpeg")
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"sine=frequency=440:duration={seconds}:sample_rate={SAMPLE_RATE}",
                    *ENCODERS["wav"], str(out_path)], check=True, capture_output=True, timeout=60)
