"""The drum loop as the MIDI stages pass it around: notes as parallel arrays plus timing context.

Stage 1 (``stage1``) builds loops from MIDI files; Stage 2 (``metrics``, ``scores``) measures them.
Arrays are sorted by (onset, pitch) on construction — the product forgot to, and velocities and
onsets misaligned on multi-track input (reference/loop_metrics.md, "Notes and categories").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Loop:
    loop_id: str
    ticks_per_beat: int
    onset: np.ndarray  # int64 ticks from the loop start; a hit played just before the first bar line is < 0
    duration: np.ndarray  # int64 ticks; zero-length hits are real notes and are kept
    pitch: np.ndarray  # int16
    velocity: np.ndarray  # int16
    channel: np.ndarray  # int16
    length_ticks: int  # the loop's span (bars × ticks per bar), not the last note's end
    time_signature: tuple[int, int] = (4, 4)
    tempos_bpm: tuple[float, ...] = ()  # every tempo event in the loop's source range
    program: np.ndarray | None = None  # int16; None for drum tracks
    source: dict = field(default_factory=dict)  # file digest, path, style, bpm, ... from the pack metadata

    def __post_init__(self) -> None:
        order = np.lexsort((self.pitch, self.onset))
        for name in ("onset", "duration", "pitch", "velocity", "channel", "program"):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, np.asarray(values)[order])
        if self.ticks_per_beat <= 0:
            raise ValueError(f"ticks_per_beat must be positive, got {self.ticks_per_beat}")

    @property
    def n_notes(self) -> int:
        return int(self.onset.size)

    @property
    def ticks_per_bar(self) -> int:
        numerator, denominator = self.time_signature
        return self.ticks_per_beat * 4 * numerator // denominator

    @property
    def bar_count(self) -> float:
        return self.length_ticks / self.ticks_per_bar

    @property
    def bpm(self) -> float | None:
        return self.tempos_bpm[0] if self.tempos_bpm else None
