"""Drum categories of a MIDI pitch (reference/loop_metrics.md, "Notes and categories").

GM_CATEGORIES is the product's General MIDI table, the default. The Groove MIDI Dataset was recorded on
a Roland TD-11 whose edge/rim articulations sit on pitches GM files them under other instruments (22 is
the closed hi-hat edge, 26 the open hi-hat edge, 58 the floor-tom rim); ROLAND_TD11_CATEGORIES adds
them as the dataset's paper (Gillick et al. 2019, table 2) maps them, so hats are not lost to "other".
"""

from __future__ import annotations

import numpy as np

CATEGORIES = ("kick", "snare", "closed_hat", "open_hat", "tom", "cymbal", "perc", "other")
CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}

GM_CATEGORIES: dict[int, str] = {
    **dict.fromkeys((35, 36), "kick"),
    **dict.fromkeys((38, 40), "snare"),
    **dict.fromkeys((42, 44), "closed_hat"),
    46: "open_hat",
    **dict.fromkeys((41, 43, 45, 47, 48, 50), "tom"),
    **dict.fromkeys((49, 51, 52, 53, 55, 57, 59), "cymbal"),
    **dict.fromkeys((37, 39, 54, 56, 58), "perc"),
}
ROLAND_TD11_CATEGORIES: dict[int, str] = {**GM_CATEGORIES, 22: "closed_hat", 26: "open_hat", 58: "tom"}

PITCH_MAPS = {"gm": GM_CATEGORIES, "roland_td11": ROLAND_TD11_CATEGORIES}


def category_lookup(pitch_map: str = "gm") -> np.ndarray:
    """A 128-entry table: pitch → index into CATEGORIES (vectorised: ``lookup[pitches]``)."""
    try:
        mapping = PITCH_MAPS[pitch_map]
    except KeyError:
        raise ValueError(f"unknown pitch map {pitch_map!r}; known: {sorted(PITCH_MAPS)}") from None
    table = np.full(128, CATEGORY_INDEX["other"], dtype=np.int8)
    for pitch, name in mapping.items():
        table[pitch] = CATEGORY_INDEX[name]
    return table


def categories_of(pitches: np.ndarray, pitch_map: str = "gm") -> np.ndarray:
    """Category index of each pitch (pitches outside 0..127 are "other")."""
    pitches = np.asarray(pitches, dtype=np.int64)
    out = np.full(pitches.shape, CATEGORY_INDEX["other"], dtype=np.int8)
    valid = (pitches >= 0) & (pitches < 128)
    out[valid] = category_lookup(pitch_map)[pitches[valid]]
    return out
