"""Conditioning labels of a loop (seed 002 §2): tempo bucket, meter, genre, emotion, key, swing, style tags.

A generator conditioned on ``<genre=funk> <tempo=fast> <swing=swung>`` needs every loop to carry those
labels with a fixed vocabulary, and the similarity search needs genre to restrict "genre A → genre B"
queries (``pairs.genre_transfer_pairs``). Everything here is a rule, not a model: each threshold is a
module constant with the reason for its value, so a label can be traced back to the numbers behind it.

Inputs are a :class:`~mixai_pipeline.lib.midi.loop.Loop` (notes, meter, tempo, pack metadata in
``loop.source``) and that loop's row of the Stage 2 metrics frame (``metrics.py``; NaN = undefined).
Missing metrics never raise: the labels that need them become ``"unknown"`` and the emotion confidence
drops.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml

from mixai_pipeline.lib.midi.loop import Loop

UNKNOWN = "unknown"
DRUM_CHANNEL = 9  # 0-based MIDI channel 10, General MIDI percussion

# --- tempo -------------------------------------------------------------------------------------------
TEMPO_BUCKETS = ("slow", "medium", "fast")
# slow < 90 BPM ≤ medium < 130 BPM ≤ fast. 90 is the usual ballad / hip-hop ceiling and 130 the point
# where rock and dance grooves read as driving; on Groove MIDI (median 110 BPM) this gives 15 % slow,
# 67 % medium, 18 % fast.
TEMPO_SLOW_BELOW_BPM = 90.0
TEMPO_FAST_FROM_BPM = 130.0
TEMPO_SOURCES = ("midi", "metadata", "none")

# --- meter -------------------------------------------------------------------------------------------
# simple: 1–4 beats per bar (2/4, 3/4, 4/4, 2/2); compound: a multiple of 3 from 6 up (6/8, 9/8, 12/8,
# and 6/4), felt in dotted beats; odd: everything else (5/4, 7/8, 5/8, 11/8, 8/8 written for 3+3+2).
METER_CLASSES = ("simple", "compound", "odd")

# --- genre -------------------------------------------------------------------------------------------
TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")
GENERAL_SUB_GENRE = "general"
# exact: the style string is in the taxonomy's `styles` table; alias: resolved through genre/sub-genre
# names or aliases; partial: only the genre was recognised (sub-genre "general"); unknown: nothing was.
GENRE_MATCHES = ("exact", "alias", "partial", "unknown")
STYLE_SOURCE_KEYS = ("style", "genre")  # loop.source keys holding the pack's style string, in priority

# --- key (Krumhansl–Schmuckler) ------------------------------------------------------------------------
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KEY_MODES = ("major", "minor")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KRUMHANSL_KESSLER_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KRUMHANSL_KESSLER_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# Fewer pitched notes than this say nothing about a key (a bass hit or two would "detect" one).
KEY_MIN_PITCHED_NOTES = 4

# --- swing -------------------------------------------------------------------------------------------
SWING_PHASES = ("straight", "light_swing", "swung", "hard_swing")
# Bounds on metrics.swing_ratio — long/short of a beat's two eighths, phase/(1 − phase) of the off-beat
# eighth: straight 1.0, triplet swing 2.0 — in the MPC "swing %" drummers know: < 1.10 (< 52 %) straight;
# 1.10–1.50 (52–60 %) light swing; 1.50–2.50 (60–71 %, with the 2:1 triplet feel, 67 %, in the middle)
# swung; ≥ 2.50 (≥ 71 %, towards dotted 3:1) hard swing. Groove MIDI medians (metrics.py): rock 1.01,
# funk 1.00 → straight; jazz 1.64, blues 1.89 → swung. A ratio below 1 is an early (rushed) off-beat,
# not swing: straight.
SWING_LIGHT_FROM = 1.10
SWING_SWUNG_FROM = 1.50
SWING_HARD_FROM = 2.50

# --- style tags (seed 002 §2.4) ------------------------------------------------------------------------
STYLE_TAGS = ("busy", "sparse", "funky", "laid_back", "pushed")
# Thresholds below are set against 1,143 four-bar beats sampled from Groove MIDI (metrics.py, GM map):
# notes per bar p10 12, median 20, p90 30; ghost_rate median 0.30 (rock 0.25, funk 0.36, soul 0.39,
# latin 0.41); syncopation_rate p10–p90 0.52–0.67 for every genre.
# busy: ≥ 28 notes per bar of the loop's own meter (≈ the densest 15 %; a 16th-note hi-hat with kick,
# snare and a few ghosts is ~22) or ≥ 2 hits per grid step on average (fill_density; heavy layering).
# Notes per bar comes from the loop, not from metrics.note_density_per_bar, because that metric is
# 16 × fill_density — notes per 16 *base steps*, which with an 8th-note base step span two bars, so a
# plain 8th-note rock beat would score as busy as a 16th one.
BUSY_MIN_NOTES_PER_BAR = 28.0
BUSY_MIN_FILL_DENSITY = 2.0
# sparse: ≤ 8 notes per bar (a half-time groove: four hats, two kicks, a snare), and not busy.
SPARSE_MAX_NOTES_PER_BAR = 8.0
# funky (seed §2.4: "ghost note比率が高ければ funky groove"): ≥ 35 % ghost notes (above the funk median,
# well above rock's) *and* ≥ 55 % off-grid notes. syncopation_rate is measured against base_step, not a
# musical grid, so it hardly separates genres; the bound only keeps out stiff, on-grid loops whose
# "ghosts" are just a soft hi-hat.
FUNKY_MIN_GHOST_RATE = 0.35
FUNKY_MIN_SYNCOPATION_RATE = 0.55
# laid_back / pushed: signed mean microtiming offset ≥ +8 ms (behind the grid) / ≤ −8 ms (ahead). A
# deliberately late backbeat sits 10–30 ms behind; averaged over all notes, 8 ms is a clear lean. (The
# metric is measured against base_step; on the Groove MIDI sample its std is ~5 ms and ~10 % of loops
# get one of the two tags.)
LAID_BACK_MIN_MS = 8.0

# --- emotion (seed 002 §2.1) ---------------------------------------------------------------------------
EMOTION_METHOD = "heuristic-v1"
EMOTIONS = ("happy", "calm", "intense", "sad", "neutral")
# A rule of thumb from tempo, mode, loudness, density, ghost notes and a genre prior — music-psychology
# directions (fast/major → positive, fast/loud/dense → aroused, Gabrielsson & Lindström 2010; groove
# and its ghost-note lilt → pleasure, Witek et al. 2014) with hand-set magnitudes. It is not fitted to
# listener data, so its confidence never exceeds EMOTION_MAX_CONFIDENCE; replace it with a learned
# predictor (seed §2.1) once labelled loops exist.
EMOTION_MAX_CONFIDENCE = 0.5
VALENCE_WEIGHTS = {"genre": 0.45, "tempo": 0.2, "mode": 0.2, "groove": 0.15}
AROUSAL_WEIGHTS = {"tempo": 0.35, "density": 0.25, "loudness": 0.25, "genre": 0.15}
# Hand-set (valence ∈ [−1, 1], arousal ∈ [0, 1]) priors per genre, refined for a few sub-genres whose
# character differs from their genre's.
GENRE_EMOTION_PRIORS: dict[str, tuple[float, float]] = {
    "rock": (0.1, 0.7),
    "pop": (0.5, 0.55),
    "funk": (0.5, 0.65),
    "soul": (0.45, 0.5),
    "jazz": (0.25, 0.45),
    "blues": (-0.2, 0.4),
    "country": (0.35, 0.5),
    "latin": (0.55, 0.7),
    "reggae": (0.45, 0.35),
    "hiphop": (0.0, 0.55),
    "electronic": (0.4, 0.75),
    "world": (0.4, 0.6),
    "classical": (0.1, 0.3),
}
SUB_GENRE_EMOTION_PRIORS: dict[tuple[str, str], tuple[float, float]] = {
    ("rock", "punk"): (-0.1, 0.9),
    ("rock", "halftime"): (-0.1, 0.5),
    ("pop", "soft"): (0.3, 0.3),
    ("soul", "gospel"): (0.6, 0.6),
    ("electronic", "disco"): (0.7, 0.8),
    ("jazz", "swing"): (0.5, 0.6),
}
# Term mappings (each documented where it is computed in _emotion):
VALENCE_TEMPO_CENTER_BPM, VALENCE_TEMPO_SPAN_BPM = 100.0, 80.0  # 20 BPM → −1, 100 → 0, 180 → +1
VALENCE_MODE = {"major": 0.7, "minor": -0.7}
AROUSAL_TEMPO_RANGE_BPM = (60.0, 180.0)
AROUSAL_DENSITY_RANGE_NOTES_PER_BAR = (4.0, 28.0)  # 28 = the "busy" threshold
VALENCE_GHOST_RANGE = (0.15, 0.45)  # ghost_rate → groove term −0.2 … +0.6
AROUSAL_VELOCITY_RANGE = (40.0, 120.0)
NEUTRAL_MAX_ABS_VALENCE, NEUTRAL_MAX_AROUSAL_OFFSET = 0.15, 0.1

METRIC_COLUMNS_USED = (
    "swing_ratio",
    "ghost_rate",
    "syncopation_rate",
    "fill_density",
    "note_density_per_bar",
    "microtiming_signed_mean",
    "microtiming_signed_mean_ms",
    "velocity_mean",
)


# ============================================================================ taxonomy


def _normalise(text: str) -> str:
    """Lower-case and collapse spaces, "_" and "-" so "Hip-Hop", "hip_hop" and "hip hop" compare equal."""
    return re.sub(r"[\s_\-]+", " ", str(text).strip().lower())


@dataclass(frozen=True)
class Taxonomy:
    """The two-level genre table: genre → sub-genres, their aliases, and the exact pack-style mapping."""

    genres: dict[str, tuple[str, ...]]  # genre → its sub-genres ("general" first)
    styles: dict[str, tuple[str, str]]  # normalised pack style → (genre, sub_genre)
    genre_aliases: dict[str, str]  # normalised genre name or alias → genre
    sub_genre_aliases: dict[str, dict[str, str]]  # genre → normalised sub-genre name or alias → sub_genre

    @property
    def genre_names(self) -> tuple[str, ...]:
        return tuple(self.genres)

    def resolve_genre(self, name: str) -> str | None:
        """The genre a name or alias ("hip-hop") stands for, or None."""
        return self.genre_aliases.get(_normalise(name))


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Read and validate a taxonomy YAML (default: the packaged ``taxonomy.yaml``).

    Validation fails loudly on a style mapped to an undeclared (genre, sub-genre) or on an alias claimed
    by two genres: either would silently mislabel loops.
    """
    if path is None:
        return _default_taxonomy()
    return _parse_taxonomy(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


@functools.cache
def _default_taxonomy() -> Taxonomy:
    return _parse_taxonomy(yaml.safe_load(TAXONOMY_PATH.read_text(encoding="utf-8")))


def _parse_taxonomy(document: Mapping) -> Taxonomy:
    genres: dict[str, tuple[str, ...]] = {}
    genre_aliases: dict[str, str] = {}
    sub_genre_aliases: dict[str, dict[str, str]] = {}
    for genre, spec in (document.get("genres") or {}).items():
        spec = spec or {}
        subs = dict(spec.get("sub_genres") or {})
        subs.setdefault(GENERAL_SUB_GENRE, [])
        genres[genre] = (GENERAL_SUB_GENRE, *[s for s in subs if s != GENERAL_SUB_GENRE])
        for alias in (genre, *(spec.get("aliases") or [])):
            key = _normalise(alias)
            if genre_aliases.get(key, genre) != genre:
                raise ValueError(f"taxonomy: alias {alias!r} claimed by {genre_aliases[key]!r} and {genre!r}")
            genre_aliases[key] = genre
        table: dict[str, str] = {}
        for sub, aliases in subs.items():
            for alias in (sub, *(aliases or [])):
                key = _normalise(alias)
                if table.get(key, sub) != sub:
                    raise ValueError(f"taxonomy: {genre} alias {alias!r} claimed by {table[key]!r} and {sub!r}")
                table[key] = sub
        sub_genre_aliases[genre] = table
    styles: dict[str, tuple[str, str]] = {}
    for style, target in (document.get("styles") or {}).items():
        genre, sub = target
        if sub not in genres.get(genre, ()):
            raise ValueError(f"taxonomy: style {style!r} maps to undeclared {genre}/{sub}")
        styles[_normalise(style)] = (genre, sub)
    return Taxonomy(genres, styles, genre_aliases, sub_genre_aliases)


@dataclass(frozen=True)
class GenreMatch:
    genre: str
    sub_genre: str
    match: str  # one of GENRE_MATCHES
    reason: str | None  # why the match is not exact; None when it is


def resolve_style(style: str | None, taxonomy: Taxonomy | None = None) -> GenreMatch:
    """Map a pack's style string ("latin/brazilian-samba", "Hip Hop") to (genre, sub-genre).

    Order: the exact ``styles`` table; the whole string as a genre name/alias; as a sub-genre alias
    that only one genre has; "head/tail" with the head a genre (tail then its sub-genre, else
    "general"); the tail alone. Anything else is ``unknown`` with the reason.
    """
    taxonomy = taxonomy or load_taxonomy()
    if style is None or (isinstance(style, float) and math.isnan(style)) or not str(style).strip():
        return GenreMatch(UNKNOWN, UNKNOWN, "unknown", "no style in the source metadata")
    key = _normalise(style)
    if key in taxonomy.styles:
        genre, sub = taxonomy.styles[key]
        return GenreMatch(genre, sub, "exact", None)
    found = _resolve_phrase(key, taxonomy)
    if found is not None:
        return GenreMatch(*found, "alias", f"style {style!r} resolved through taxonomy aliases")
    head, _, tail = key.partition("/")
    if tail:
        genre = taxonomy.genre_aliases.get(head)
        if genre is not None:
            sub = taxonomy.sub_genre_aliases[genre].get(tail)
            if sub is not None:
                return GenreMatch(genre, sub, "alias", f"style {style!r} resolved through taxonomy aliases")
            return GenreMatch(
                genre, GENERAL_SUB_GENRE, "partial", f"sub-genre {tail!r} of {genre!r} is not in the taxonomy"
            )
        found = _resolve_phrase(tail, taxonomy)
        if found is not None:
            return GenreMatch(*found, "alias", f"style {style!r} resolved from its last part {tail!r}")
    return GenreMatch(UNKNOWN, UNKNOWN, "unknown", f"style {style!r} is not in the taxonomy")


def _resolve_phrase(key: str, taxonomy: Taxonomy) -> tuple[str, str] | None:
    genre = taxonomy.genre_aliases.get(key)
    if genre is not None:
        return genre, GENERAL_SUB_GENRE
    owners = [(g, table[key]) for g, table in taxonomy.sub_genre_aliases.items() if key in table]
    if len(owners) == 1 and owners[0][1] != GENERAL_SUB_GENRE:
        return owners[0]
    return None  # unknown, or ambiguous ("shuffle" is both rock and blues)


# ============================================================================ single-value labels


def tempo_bucket_of(bpm: float | None) -> str:
    """slow / medium / fast by TEMPO_SLOW_BELOW_BPM and TEMPO_FAST_FROM_BPM; unknown without a tempo."""
    if bpm is None or not np.isfinite(bpm) or bpm <= 0:
        return UNKNOWN
    if bpm < TEMPO_SLOW_BELOW_BPM:
        return "slow"
    return "medium" if bpm < TEMPO_FAST_FROM_BPM else "fast"


def meter_of(time_signature: tuple[int, int]) -> tuple[str, str]:
    """("4/4", "simple"); the class follows METER_CLASSES' definition, unknown for an invalid signature."""
    try:
        numerator, denominator = (int(v) for v in time_signature)
    except (TypeError, ValueError):
        return UNKNOWN, UNKNOWN
    if numerator <= 0 or denominator <= 0:
        return UNKNOWN, UNKNOWN
    if numerator <= 4:
        meter_class = "simple"
    elif numerator % 3 == 0:
        meter_class = "compound"
    else:
        meter_class = "odd"
    return f"{numerator}/{denominator}", meter_class


@dataclass(frozen=True)
class KeyEstimate:
    root: str
    mode: str
    correlation: float  # Pearson r of the profile with the winning key profile; the max over 24 is ≥ 0

    @property
    def name(self) -> str:
        return f"{self.root} {self.mode}"


def _rotated_key_profiles() -> np.ndarray:
    """(24, 12): row 2·t is tonic t major, 2·t+1 tonic t minor; column = pitch class."""
    major, minor = np.asarray(KRUMHANSL_KESSLER_MAJOR), np.asarray(KRUMHANSL_KESSLER_MINOR)
    rows = []
    for tonic in range(12):
        rows += [np.roll(major, tonic), np.roll(minor, tonic)]
    return np.array(rows)


_KEY_PROFILES = _rotated_key_profiles()


def estimate_key(pitch: np.ndarray, duration: np.ndarray) -> KeyEstimate | None:
    """Krumhansl–Schmuckler: the key whose Krumhansl–Kessler profile best correlates with the notes.

    The pitch-class profile is weighted by duration (a held tonic says more than a passing note); when
    every duration is zero it falls back to note counts. None below KEY_MIN_PITCHED_NOTES or when the
    profile is flat (all twelve classes equally present: no tonal centre to find). Ties go to the first
    key in (C major, C minor, C# major, …) order so the answer is deterministic.
    """
    pitch = np.asarray(pitch, dtype=np.int64)
    if pitch.size < KEY_MIN_PITCHED_NOTES:
        return None
    weights = np.maximum(np.asarray(duration, dtype=np.float64), 0.0)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    profile = np.bincount(pitch % 12, weights=weights, minlength=12)
    centred = profile - profile.mean()
    if not np.any(np.abs(centred) > 1e-12 * max(profile.max(), 1.0)):
        return None
    keys = _KEY_PROFILES - _KEY_PROFILES.mean(axis=1, keepdims=True)
    correlations = keys @ centred / (np.linalg.norm(keys, axis=1) * np.linalg.norm(centred))
    best = int(np.argmax(correlations))
    return KeyEstimate(PITCH_CLASSES[best // 2], KEY_MODES[best % 2], float(correlations[best]))


def detect_key(loop: Loop) -> KeyEstimate | None:
    """Key of the loop's pitched notes (everything off the drum channel); None for drum-only loops."""
    pitched = np.asarray(loop.channel) != DRUM_CHANNEL
    if not pitched.any():
        return None
    return estimate_key(np.asarray(loop.pitch)[pitched], np.asarray(loop.duration)[pitched])


def swing_phase_of(swing_ratio: float | None) -> str:
    """straight / light_swing / swung / hard_swing from metrics.swing_ratio (bounds: SWING_* constants).

    The ratio must be the off-beat-eighth estimator (metrics.swing_ratio), not the product's
    odd/even-IOI ratio (metrics.swing_ratio_product), which sits near 1.0 for jazz and rock alike.
    """
    return str(_swing_phases(np.array([np.nan if swing_ratio is None else swing_ratio], dtype=float))[0])


def _swing_phases(ratio: np.ndarray) -> np.ndarray:
    valid = np.isfinite(ratio) & (ratio > 0)
    safe = np.where(valid, ratio, 1.0)
    phase = np.select(
        [safe < SWING_LIGHT_FROM, safe < SWING_SWUNG_FROM, safe < SWING_HARD_FROM],
        list(SWING_PHASES[:3]),
        default=SWING_PHASES[3],
    )
    return np.where(valid, phase, UNKNOWN).astype(object)


# ============================================================================ per-loop facts


@dataclass(frozen=True)
class _LoopFacts:
    """What the labels need from the loop itself (everything else comes from the metrics frame)."""

    bpm: float
    tempo_source: str
    meter: str
    meter_class: str
    notes_per_bar: float
    ticks_per_beat: int
    style: str | None
    genre: GenreMatch
    key: KeyEstimate | None
    has_pitched_notes: bool


def _loop_facts(loop: Loop, taxonomy: Taxonomy) -> _LoopFacts:
    bpm, tempo_source = _tempo_of(loop)
    meter, meter_class = meter_of(loop.time_signature)
    try:
        bars = loop.bar_count
    except ZeroDivisionError:
        bars = 0.0
    notes_per_bar = loop.n_notes / bars if bars > 0 else math.nan
    style = next((loop.source[k] for k in STYLE_SOURCE_KEYS if _present(loop.source.get(k))), None)
    has_pitched = bool((np.asarray(loop.channel) != DRUM_CHANNEL).any())
    return _LoopFacts(
        bpm=bpm,
        tempo_source=tempo_source,
        meter=meter,
        meter_class=meter_class,
        notes_per_bar=notes_per_bar,
        ticks_per_beat=loop.ticks_per_beat,
        style=None if style is None else str(style),
        genre=resolve_style(style, taxonomy),
        key=detect_key(loop) if has_pitched else None,
        has_pitched_notes=has_pitched,
    )


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(str(value).strip())


def _tempo_of(loop: Loop) -> tuple[float, str]:
    """The loop's first MIDI tempo, else the pack metadata's ``bpm``: the file is what was played."""
    if loop.bpm is not None and np.isfinite(loop.bpm) and loop.bpm > 0:
        return float(loop.bpm), "midi"
    try:
        bpm = float(loop.source.get("bpm"))
    except (TypeError, ValueError):
        bpm = math.nan
    if np.isfinite(bpm) and bpm > 0:
        return bpm, "metadata"
    return math.nan, "none"


# ============================================================================ frame


def labels_frame(
    loops: Iterable[Loop], metrics_df: pd.DataFrame | None, *, taxonomy: Taxonomy | None = None
) -> pd.DataFrame:
    """One row of labels per loop (index ``loop_id``, in the order given), validated by LOOP_LABELS_SCHEMA.

    ``metrics_df`` is indexed by loop_id; a loop without a row, or a metric column that is absent, is
    treated as all-NaN (labels needing it become "unknown", emotion confidence drops). Metric-driven
    labels are computed column-wise over the whole frame; only the note-level work (key, notes per bar,
    genre lookup) runs per loop.
    """
    taxonomy = taxonomy or load_taxonomy()
    loops = list(loops)
    ids = [loop.loop_id for loop in loops]
    if len(set(ids)) != len(ids):
        raise ValueError("labels_frame: duplicate loop_id among the loops")
    facts = [_loop_facts(loop, taxonomy) for loop in loops]
    index = pd.Index(ids, name="loop_id", dtype="str")
    metrics = _metric_arrays(metrics_df, ids)

    bpm = np.array([f.bpm for f in facts], dtype=float)
    notes_per_bar = np.array([f.notes_per_bar for f in facts], dtype=float)
    ticks_per_beat = np.array([f.ticks_per_beat for f in facts], dtype=float)
    tags = _style_tags(metrics, notes_per_bar, bpm, ticks_per_beat)
    keys = [f.key for f in facts]
    valence, arousal, confidence = _emotion(
        metrics,
        bpm=bpm,
        notes_per_bar=notes_per_bar,
        genres=[(f.genre.genre, f.genre.sub_genre) for f in facts],
        modes=[None if k is None else k.mode for k in keys],
        mode_applicable=np.array([f.has_pitched_notes for f in facts], dtype=bool),
    )
    frame = pd.DataFrame(
        {
            "tempo_bpm": bpm,
            "tempo_source": [f.tempo_source for f in facts],
            "tempo_bucket": [tempo_bucket_of(b) for b in bpm],
            "meter": [f.meter for f in facts],
            "meter_class": [f.meter_class for f in facts],
            "source_style": [f.style for f in facts],
            "genre": [f.genre.genre for f in facts],
            "sub_genre": [f.genre.sub_genre for f in facts],
            "genre_match": [f.genre.match for f in facts],
            "genre_reason": [f.genre.reason for f in facts],
            "key": [None if k is None else k.name for k in keys],
            "key_root": [None if k is None else k.root for k in keys],
            "key_mode": [None if k is None else k.mode for k in keys],
            "key_confidence": np.array([np.nan if k is None else k.correlation for k in keys], dtype=float),
            "swing_phase": _swing_phases(metrics["swing_ratio"]),
            "notes_per_bar": notes_per_bar,
            **{f"tag_{tag}": tags[tag] for tag in STYLE_TAGS},
            "style_tags": [",".join(t for t in STYLE_TAGS if tags[t][i]) for i in range(len(ids))],
            "emotion": _emotion_names(valence, arousal),
            "emotion_valence": valence,
            "emotion_arousal": arousal,
            "emotion_confidence": confidence,
            "emotion_method": EMOTION_METHOD,
        },
        index=index,
    )
    schema = labels_schema(taxonomy)
    # The schema's dtypes, so an empty frame or an all-None column (inferred as float/object) still fits.
    frame = frame.astype({name: column.dtype.type for name, column in schema.columns.items()})
    return schema.validate(frame)


def loop_labels(loop: Loop, metrics_row: Mapping | pd.Series | None, *, taxonomy: Taxonomy | None = None) -> dict:
    """The labels of one loop as plain Python values (NaN → None), identical to its labels_frame row."""
    if metrics_row is None:
        values = {}
    elif isinstance(metrics_row, pd.Series):
        values = metrics_row.to_dict()
    else:
        values = dict(metrics_row)
    metrics = pd.DataFrame([values], index=pd.Index([loop.loop_id], name="loop_id"))
    frame = labels_frame([loop], metrics, taxonomy=taxonomy)
    labels = {"loop_id": loop.loop_id}
    for name, value in frame.iloc[0].items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        labels[name] = value
    return labels


def _metric_arrays(metrics_df: pd.DataFrame | None, ids: list[str]) -> dict[str, np.ndarray]:
    """Each metric the labels use as a float array aligned to ``ids`` (NaN where absent)."""
    if metrics_df is not None and not metrics_df.index.is_unique:
        raise ValueError("labels_frame: metrics_df has duplicate loop_id index values")
    out = {}
    for column in METRIC_COLUMNS_USED:
        if metrics_df is None or column not in metrics_df.columns:
            out[column] = np.full(len(ids), np.nan)
        else:
            values = pd.to_numeric(metrics_df[column], errors="coerce").reindex(ids)
            out[column] = values.to_numpy(dtype=float, na_value=np.nan)
    return out


def _style_tags(metrics, notes_per_bar, bpm, ticks_per_beat) -> dict[str, np.ndarray]:
    """Boolean tag arrays (thresholds: module constants). A tag needing an undefined metric is False."""
    density = np.where(np.isfinite(notes_per_bar), notes_per_bar, metrics["note_density_per_bar"])
    with np.errstate(invalid="ignore"):
        busy = (density >= BUSY_MIN_NOTES_PER_BAR) | (metrics["fill_density"] >= BUSY_MIN_FILL_DENSITY)
        sparse = (density <= SPARSE_MAX_NOTES_PER_BAR) & ~busy
        funky = (metrics["ghost_rate"] >= FUNKY_MIN_GHOST_RATE) & (
            metrics["syncopation_rate"] >= FUNKY_MIN_SYNCOPATION_RATE
        )
        # ms is the tempo-independent reading; without it, convert the tick offset with the loop's tempo.
        ticks_to_ms = 60_000.0 / (bpm * ticks_per_beat)
        offset_ms = np.where(
            np.isfinite(metrics["microtiming_signed_mean_ms"]),
            metrics["microtiming_signed_mean_ms"],
            metrics["microtiming_signed_mean"] * ticks_to_ms,
        )
        laid_back = offset_ms >= LAID_BACK_MIN_MS
        pushed = offset_ms <= -LAID_BACK_MIN_MS
    return {"busy": busy, "sparse": sparse, "funky": funky, "laid_back": laid_back, "pushed": pushed}


def _ramp(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 at ``low``, 1 at ``high``, linear between, clipped; NaN stays NaN."""
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _weighted_mean(terms: dict[str, np.ndarray], weights: dict[str, float], applicable: dict[str, np.ndarray]):
    """Mean of the defined terms by weight, and the share of the applicable weight that was defined."""
    n = len(next(iter(terms.values())))
    total = np.zeros(n)
    defined_weight = np.zeros(n)
    applicable_weight = np.zeros(n)
    for name, weight in weights.items():
        value = terms[name]
        usable = applicable.get(name, np.ones(n, dtype=bool))
        defined = np.isfinite(value) & usable
        total += np.where(defined, value * weight, 0.0)
        defined_weight += np.where(defined, weight, 0.0)
        applicable_weight += np.where(usable, weight, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / defined_weight
        coverage = np.where(applicable_weight > 0, defined_weight / applicable_weight, 0.0)
    return mean, coverage


def _emotion(metrics, *, bpm, notes_per_bar, genres, modes, mode_applicable):
    """heuristic-v1 valence ∈ [−1, 1], arousal ∈ [0, 1] and confidence ∈ [0, EMOTION_MAX_CONFIDENCE].

    Valence = weighted mean (VALENCE_WEIGHTS) of: the genre prior; tempo, (bpm − 100) / 80 clipped to
    ±1; mode, ±0.7 for major/minor (only for loops with pitched notes — drums have no mode, so it is
    not counted as missing for them); groove, 0.8 × ramp(ghost_rate, 0.15 → 0.45) − 0.2, i.e. −0.2 for a
    stiff ghost-free loop up to +0.6 for a ghost-laden one (syncopation_rate is left out: against the
    base-step grid it is 0.52–0.67 for every genre and would only shift all loops alike).
    Arousal = weighted mean (AROUSAL_WEIGHTS) of: tempo ramp 60→180 BPM; notes-per-bar ramp 4→28;
    velocity_mean ramp 40→120; the genre prior. With no term defined the value is neutral (0, 0.5).
    Confidence = EMOTION_MAX_CONFIDENCE × the share of applicable weight whose input was defined,
    averaged over valence and arousal.
    """
    n = len(bpm)
    prior = [SUB_GENRE_EMOTION_PRIORS.get(g, GENRE_EMOTION_PRIORS.get(g[0], (np.nan, np.nan))) for g in genres]
    prior_valence = np.array([p[0] for p in prior], dtype=float).reshape(n)
    prior_arousal = np.array([p[1] for p in prior], dtype=float).reshape(n)
    mode_valence = np.array([VALENCE_MODE.get(m, np.nan) if m else np.nan for m in modes], dtype=float).reshape(n)
    groove = 0.8 * _ramp(metrics["ghost_rate"], *VALENCE_GHOST_RANGE) - 0.2  # NaN when ghost_rate is
    valence, valence_coverage = _weighted_mean(
        {
            "genre": prior_valence,
            "tempo": np.clip((bpm - VALENCE_TEMPO_CENTER_BPM) / VALENCE_TEMPO_SPAN_BPM, -1.0, 1.0),
            "mode": mode_valence,
            "groove": groove,
        },
        VALENCE_WEIGHTS,
        {"mode": mode_applicable},
    )
    arousal, arousal_coverage = _weighted_mean(
        {
            "tempo": _ramp(bpm, *AROUSAL_TEMPO_RANGE_BPM),
            "density": _ramp(notes_per_bar, *AROUSAL_DENSITY_RANGE_NOTES_PER_BAR),
            "loudness": _ramp(metrics["velocity_mean"], *AROUSAL_VELOCITY_RANGE),
            "genre": prior_arousal,
        },
        AROUSAL_WEIGHTS,
        {},
    )
    valence = np.clip(np.nan_to_num(valence, nan=0.0), -1.0, 1.0)
    arousal = np.clip(np.nan_to_num(arousal, nan=0.5), 0.0, 1.0)
    confidence = EMOTION_MAX_CONFIDENCE * (valence_coverage + arousal_coverage) / 2.0
    return valence, arousal, np.clip(confidence, 0.0, 1.0)


def _emotion_names(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """Valence–arousal quadrant → EMOTIONS; near the centre (|v| < 0.15, |a − 0.5| < 0.1) → neutral."""
    high = arousal >= 0.5
    names = np.where(valence >= 0, np.where(high, "happy", "calm"), np.where(high, "intense", "sad"))
    neutral = (np.abs(valence) < NEUTRAL_MAX_ABS_VALENCE) & (np.abs(arousal - 0.5) < NEUTRAL_MAX_AROUSAL_OFFSET)
    return np.where(neutral, "neutral", names).astype(object)


# ============================================================================ schema


def labels_schema(taxonomy: Taxonomy | None = None) -> pa.DataFrameSchema:
    """The labels frame's contract; genre values come from the taxonomy in use."""
    taxonomy = taxonomy or load_taxonomy()
    sub_genres = sorted({s for subs in taxonomy.genres.values() for s in subs} | {UNKNOWN})
    valid_pairs = {(g, s) for g, subs in taxonomy.genres.items() for s in subs} | {(UNKNOWN, UNKNOWN)}

    def sub_genre_belongs_to_genre(frame: pd.DataFrame) -> pd.Series:
        return pd.Series(
            [pair in valid_pairs for pair in zip(frame["genre"], frame["sub_genre"], strict=True)], index=frame.index
        )

    def vocabulary(values, nullable=False):
        return pa.Column(str, nullable=nullable, checks=pa.Check.isin(list(values)))

    def unit(low, high, nullable=False):
        return pa.Column(float, nullable=nullable, checks=pa.Check.in_range(low, high))

    return pa.DataFrameSchema(
        {
            "tempo_bpm": pa.Column(float, nullable=True, checks=pa.Check.gt(0)),
            "tempo_source": vocabulary(TEMPO_SOURCES),
            "tempo_bucket": vocabulary((*TEMPO_BUCKETS, UNKNOWN)),
            "meter": pa.Column(str, checks=pa.Check.str_matches(r"^(\d+/\d+|unknown)$")),
            "meter_class": vocabulary((*METER_CLASSES, UNKNOWN)),
            "source_style": pa.Column(str, nullable=True),
            "genre": vocabulary((*taxonomy.genre_names, UNKNOWN)),
            "sub_genre": vocabulary(sub_genres),
            "genre_match": vocabulary(GENRE_MATCHES),
            "genre_reason": pa.Column(str, nullable=True),
            "key": pa.Column(str, nullable=True, checks=pa.Check.str_matches(r"^[A-G]#? (major|minor)$")),
            "key_root": vocabulary(PITCH_CLASSES, nullable=True),
            "key_mode": vocabulary(KEY_MODES, nullable=True),
            "key_confidence": unit(0.0, 1.0, nullable=True),
            "swing_phase": vocabulary((*SWING_PHASES, UNKNOWN)),
            "notes_per_bar": pa.Column(float, nullable=True, checks=pa.Check.ge(0)),
            **{f"tag_{tag}": pa.Column(bool) for tag in STYLE_TAGS},
            "style_tags": pa.Column(str),
            "emotion": vocabulary(EMOTIONS),
            "emotion_valence": unit(-1.0, 1.0),
            "emotion_arousal": unit(0.0, 1.0),
            "emotion_confidence": unit(0.0, 1.0),
            "emotion_method": vocabulary((EMOTION_METHOD,)),
        },
        index=pa.Index(str, name="loop_id", unique=True),
        checks=pa.Check(sub_genre_belongs_to_genre, error="sub_genre is not a sub-genre of genre"),
        strict=True,
        ordered=True,
    )


LOOP_LABELS_SCHEMA = labels_schema()
