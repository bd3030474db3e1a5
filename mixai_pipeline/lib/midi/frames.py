"""Loops to and from two tables, so the MIDI assets can hand them on through the object store as Parquet:
one row per loop (timing context and source metadata) and one row per note (the parallel arrays).
Round-trips exactly; 76k loops with ~4M notes convert in seconds because notes are split by loop with
one sort and ``np.split``, never a Python loop over notes."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mixai_pipeline.lib.midi.loop import Loop

NOTE_COLUMNS = ("onset", "duration", "pitch", "velocity", "channel")
NOTE_DTYPES = {"onset": np.int64, "duration": np.int64, "pitch": np.int16, "velocity": np.int16,
               "channel": np.int16, "program": np.int16}
NO_PROGRAM = -1


def loops_to_frames(loops: Sequence[Loop]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(loops, notes): ``loops`` indexed 0..n-1 in input order with loop_id, ticks_per_beat, length_ticks,
    time signature, tempos and the source as JSON; ``notes`` with loop_index and the note arrays
    (program -1 where the loop has none)."""
    loop_table = pd.DataFrame({
        "loop_id": [loop.loop_id for loop in loops],
        "ticks_per_beat": np.array([loop.ticks_per_beat for loop in loops], dtype=np.int32),
        "length_ticks": np.array([loop.length_ticks for loop in loops], dtype=np.int64),
        "ts_numerator": np.array([loop.time_signature[0] for loop in loops], dtype=np.int16),
        "ts_denominator": np.array([loop.time_signature[1] for loop in loops], dtype=np.int16),
        "tempos_bpm": [list(loop.tempos_bpm) for loop in loops],
        "has_program": np.array([loop.program is not None for loop in loops], dtype=bool),
        "n_notes": np.array([loop.n_notes for loop in loops], dtype=np.int32),
        "source": [json.dumps(loop.source, sort_keys=True, default=str) for loop in loops],
    })
    counts = loop_table["n_notes"].to_numpy()
    notes = {"loop_index": np.repeat(np.arange(len(loops), dtype=np.int32), counts)}
    for column in NOTE_COLUMNS:
        notes[column] = _concat([getattr(loop, column) for loop in loops], NOTE_DTYPES[column])
    notes["program"] = _concat([loop.program if loop.program is not None else np.full(loop.n_notes, NO_PROGRAM)
                                for loop in loops], NOTE_DTYPES["program"])
    return loop_table, pd.DataFrame(notes)


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype=dtype)


def frames_to_loops(loop_table: pd.DataFrame, notes: pd.DataFrame) -> list[Loop]:
    """The inverse of ``loops_to_frames``."""
    order = np.argsort(notes["loop_index"].to_numpy(), kind="stable")
    bounds = np.cumsum(loop_table["n_notes"].to_numpy())[:-1]
    columns = {name: np.split(notes[name].to_numpy()[order].astype(NOTE_DTYPES[name], copy=False), bounds)
               for name in (*NOTE_COLUMNS, "program")}
    loops = []
    for i, row in enumerate(loop_table.itertuples(index=False)):
        loops.append(Loop(
            loop_id=row.loop_id, ticks_per_beat=int(row.ticks_per_beat),
            onset=columns["onset"][i], duration=columns["duration"][i], pitch=columns["pitch"][i],
            velocity=columns["velocity"][i], channel=columns["channel"][i], length_ticks=int(row.length_ticks),
            time_signature=(int(row.ts_numerator), int(row.ts_denominator)),
            tempos_bpm=tuple(float(b) for b in row.tempos_bpm),
            program=columns["program"][i] if row.has_program else None,
            source=json.loads(row.source),
        ))
    return loops


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, compression="zstd")
    return buffer.getvalue()


def from_parquet_bytes(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))
