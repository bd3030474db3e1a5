"""Stage 2 drum-loop metrics (reference/loop_metrics.md, "Per-loop metrics") and the canonical event table.

Every metric is the product's definition, with the corrections the reference names and two that the
Groove MIDI data called for:

- notes are sorted by (onset, pitch) (``Loop`` does it) and zero-length hits are kept;
- ``drum_collision_rate`` takes a tolerance (2 ticks at 480 tpb by default; 0 is the product's equality);
- ``microtiming_signed_mean`` keeps the sign the product threw away (drummers play ahead or behind);
- the loop's duration is its span (``Loop.length_ticks``), not first onset to last note end;
- repetition covers exactly the loop's segments (the product counted one extra, empty segment);
- ``swing_ratio`` is a corrected estimator; the product's value is kept as ``swing_ratio_product``
  (see ``_offbeat_swing_ratio`` for why);
- ``microtiming_rms_16th_ms`` measures timing against the 16th grid as well: the product's grid is
  ``base_step`` (median positive IOI), which on performed MIDI is rarely a musical subdivision (Groove
  MIDI: median 103 ticks at 480 tpb), so everything built on it (microtiming, syncopation, densities,
  repetition) describes that grid, not the groove. The product's definitions are kept as they are.

Undefined values are NaN, never 0: ``base_step`` and everything built on it (microtiming, syncopation,
densities, repetition) when no two onsets differ; on/off-beat velocity when no note is on / off the beat
(the ratio also when the on-beat mean is 0); ``swing_ratio_product`` with fewer than 2 IOIs or no positive
IOI at an odd or even index; ``swing_ratio`` with fewer than 2 beats holding an off-beat eighth;
hat metrics without hats (transition rate: fewer than 2 hat notes); ``drum_collision_rate`` when no
kick/snare/hat sounds; rhythm fractions with fewer than 2 notes (``rhythm_hash`` is then None);
``tempo_stability`` without tempo events (one event: 0.0). ``swing_confidence`` is 0.0 when the
product's swing is undefined, as in the product.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mixai_pipeline.lib.midi.categories import CATEGORIES, CATEGORY_INDEX, categories_of
from mixai_pipeline.lib.midi.loop import Loop

GHOST_MAX_VELOCITY = 45
ACCENT_MIN_VELOCITY = 100
OFFBEAT_TOLERANCE = 0.2  # × base_step
REFERENCE_TICKS_PER_BEAT = 480  # collision tolerances are given at this resolution
DEFAULT_COLLISION_TOLERANCE_TICKS = 2.0
DEFAULT_BPM = 120.0  # MIDI's tempo when a file has no tempo event
STEPS_PER_BAR = 16  # the product's note_density_per_bar assumes 16 base steps per bar
SEGMENT_STEPS = 4  # repetition segments are 4 base steps long
RHYTHM_BUCKETS = ("quarter", "eighth", "triplet", "sixteenth")  # order breaks ties, as the product's loop did
RHYTHM_DIVISORS = np.array([1.0, 2.0, 3.0, 4.0])
RHYTHM_MAX_ERROR = 0.25
IOI_BUCKETS = (*RHYTHM_BUCKETS, "other", "none")  # "none": the last note has no following onset
SWING_WINDOW = (0.4, 0.8)  # beat phases where the second eighth of a beat can fall (straight 0.5 … 3:1 0.75)
SWING_MIN_BEATS = 2
SWING_BEAT_TOLERANCE = 0.15  # notes this close (in beats) to a beat show where the drummer places it
_CORE_CATEGORIES = tuple(CATEGORY_INDEX[name] for name in ("kick", "snare", "closed_hat", "open_hat"))


def _category_mask(*names: str) -> np.ndarray:
    """A category-index → bool lookup (``mask[category]`` is cheaper than ``np.isin`` per loop)."""
    return np.isin(np.arange(len(CATEGORIES)), [CATEGORY_INDEX[name] for name in names])


_IS_CORE = _category_mask("kick", "snare", "closed_hat", "open_hat")
_IS_TIMEKEEPING = _category_mask("closed_hat", "open_hat", "cymbal")
_CLOSED_HAT = CATEGORY_INDEX["closed_hat"]
_OPEN_HAT = CATEGORY_INDEX["open_hat"]
_NAN = math.nan

METRIC_NAMES = (
    "base_step", "swing_ratio", "swing_ratio_product", "swing_confidence", "ghost_rate", "accent_rate",
    "velocity_mean", "velocity_median", "velocity_std", "velocity_range", "velocity_distinct",
    "microtiming_mean", "microtiming_std", "microtiming_rms", "microtiming_rms_ms", "microtiming_rms_16th_ms",
    "microtiming_signed_mean", "microtiming_signed_mean_ms", "syncopation_rate", "onbeat_velocity",
    "offbeat_velocity", "offbeat_velocity_ratio", "fill_density", "note_density_per_bar", "layering_rate",
    "hat_open_ratio", "hat_transition_rate", "variation_factor", "repeat_rate", "breakpoint_count",
    "drum_collision_rate", "role_separation", "rhythm_quarter", "rhythm_eighth", "rhythm_triplet",
    "rhythm_sixteenth", "rhythm_other", "rhythm_hash", "tempo_stability",
)


def loop_metrics(loop: Loop, *, pitch_map: str = "gm",
                 collision_tolerance_ticks: float = DEFAULT_COLLISION_TOLERANCE_TICKS) -> dict[str, float | str | None]:
    """Every Stage 2 metric of one loop, keyed as METRIC_NAMES (floats; ``rhythm_hash`` a hex string or None).

    ``collision_tolerance_ticks`` is at 480 ticks per beat and scales with the loop's resolution.
    """
    if collision_tolerance_ticks < 0:
        raise ValueError(f"collision_tolerance_ticks must be >= 0, got {collision_tolerance_ticks}")
    onset = np.asarray(loop.onset, dtype=np.int64)
    if onset.size == 0:
        return {name: (None if name == "rhythm_hash" else _NAN) for name in METRIC_NAMES}
    velocity = np.asarray(loop.velocity, dtype=np.float64)
    category = categories_of(loop.pitch, pitch_map)
    tpb = loop.ticks_per_beat
    ms_per_tick = 60000.0 / ((loop.tempos_bpm[0] if loop.tempos_bpm else DEFAULT_BPM) * tpb)
    iois = np.diff(onset)
    base_step = _base_step(iois)

    metrics: dict[str, float | str | None] = {"base_step": base_step}
    metrics["swing_ratio"] = _offbeat_swing_ratio(onset, category, tpb)
    metrics.update(_product_swing(iois))
    metrics.update(_velocity_stats(velocity))
    metrics.update(_microtiming(onset, velocity, base_step, tpb, ms_per_tick))
    metrics.update(_densities(onset.size, base_step, loop.length_ticks))
    metrics["layering_rate"] = _layering_rate(iois)
    metrics.update(_hats(category))
    metrics.update(_repetition(onset, category, iois, base_step, loop.length_ticks))
    tolerance = collision_tolerance_ticks * tpb / REFERENCE_TICKS_PER_BEAT
    metrics["drum_collision_rate"] = _collision_rate(onset, category, tolerance)
    shares = np.bincount(category, minlength=len(CATEGORIES)) / onset.size
    metrics["role_separation"] = float(1.0 - np.dot(shares, shares))
    metrics.update(_rhythm_fingerprint(iois, tpb))
    bpms = loop.tempos_bpm
    metrics["tempo_stability"] = float(np.std(bpms)) if bpms else _NAN
    return {name: metrics[name] for name in METRIC_NAMES}


def _base_step(iois: np.ndarray) -> float:
    """The product's grid: the median positive IOI."""
    positive = iois[iois > 0]
    return float(np.median(positive)) if positive.size else _NAN


def _offbeat_swing_ratio(onset: np.ndarray, category: np.ndarray, tpb: int) -> float:
    """Swing as long/short of a beat's two eighths: phase/(1 − phase) of the off-beat eighth, median over beats.

    The product's ratio (odd- over even-indexed IOIs of all onsets) measures how many instruments hit
    between the eighths, not where the off-beat eighth falls: on Groove MIDI it is ≈ 1.0 for jazz and rock
    alike. Here the off-beat eighth of a beat is its earliest onset at a beat phase in SWING_WINDOW
    (straight 0.5 → 1.0, triplet swing 2/3 → 2.0; the earliest keeps straight 16ths at 0.5, not 0.75),
    taken from the time-keeping hats and cymbals when they give SWING_MIN_BEATS beats, else from all
    notes. Phases are measured from where the drummer plays the beat (the median offset of the notes
    within ±0.15 beat of it), not from the click: drummers play the whole grid early or late, which would
    otherwise read as swing. Groove MIDI 4-bar windows, median: jazz 1.64 (jazz/swing 1.70), blues 1.89,
    rock 1.01, funk 1.00; the product's ratio gives 0.95–1.05 for all four.
    """
    beat, phase_ticks = np.divmod(onset, tpb)
    phase = phase_ticks / tpb
    wrapped = phase - (phase >= 0.5)  # in [-0.5, 0.5): distance from the nearest beat
    near_beat = np.abs(wrapped) < SWING_BEAT_TOLERANCE
    if near_beat.any():
        phase = phase - np.median(wrapped[near_beat])
    in_window = (phase >= SWING_WINDOW[0]) & (phase < SWING_WINDOW[1])
    timekeeping = in_window & _IS_TIMEKEEPING[category]
    for candidates in (timekeeping, in_window):
        candidate_beats = beat[candidates]
        if candidate_beats.size < SWING_MIN_BEATS:
            continue
        first_of_beat = np.empty(candidate_beats.size, dtype=bool)
        first_of_beat[0] = True
        np.not_equal(candidate_beats[1:], candidate_beats[:-1], out=first_of_beat[1:])
        if np.count_nonzero(first_of_beat) >= SWING_MIN_BEATS:
            offbeat_phase = float(np.median(phase[candidates][first_of_beat]))
            return offbeat_phase / (1.0 - offbeat_phase)
    return _NAN


def _product_swing(iois: np.ndarray) -> dict[str, float]:
    """The product's swing: mean positive IOI at odd indices / at even indices (zero IOIs keep their index)."""
    if iois.size < 2:
        return {"swing_ratio_product": _NAN, "swing_confidence": 0.0}
    even, odd = iois[0::2], iois[1::2]
    even, odd = even[even > 0], odd[odd > 0]
    if not (even.size and odd.size):
        return {"swing_ratio_product": _NAN, "swing_confidence": 0.0}
    return {"swing_ratio_product": float(odd.mean() / even.mean()), "swing_confidence": min(1.0, iois.size / 4)}


def _velocity_stats(velocity: np.ndarray) -> dict[str, float]:
    low, high = velocity.min(), velocity.max()
    return {
        "ghost_rate": float(np.count_nonzero(velocity <= GHOST_MAX_VELOCITY) / velocity.size),
        "accent_rate": float(np.count_nonzero(velocity >= ACCENT_MIN_VELOCITY) / velocity.size),
        "velocity_mean": float(velocity.mean()),
        "velocity_median": float(np.median(velocity)),
        "velocity_std": float(velocity.std()),
        "velocity_range": float(high - low),
        "velocity_distinct": float(np.unique(velocity).size),
    }


def grid_residual(onset: np.ndarray, grid: float) -> np.ndarray:
    """Signed distance (ticks) of each onset from its nearest grid line; positive = late.

    Ties (exactly half a step) round to the even grid line, as the product's ``round`` did.
    """
    return onset - np.rint(onset / grid) * grid


def _microtiming(onset: np.ndarray, velocity: np.ndarray, base_step: float, tpb: int,
                 ms_per_tick: float) -> dict[str, float]:
    sixteenth = grid_residual(onset, tpb / 4)
    rms_16th_ms = float(np.sqrt(np.dot(sixteenth, sixteenth) / onset.size)) * ms_per_tick
    if math.isnan(base_step):
        undefined = ("microtiming_mean", "microtiming_std", "microtiming_rms", "microtiming_rms_ms",
                     "microtiming_signed_mean", "microtiming_signed_mean_ms", "syncopation_rate",
                     "onbeat_velocity", "offbeat_velocity", "offbeat_velocity_ratio")
        return {**dict.fromkeys(undefined, _NAN), "microtiming_rms_16th_ms": rms_16th_ms}
    residual = grid_residual(onset, base_step)
    magnitude = np.abs(residual)
    rms = float(np.sqrt(np.dot(residual, residual) / onset.size))
    signed_mean = float(residual.mean())
    offbeat = magnitude > OFFBEAT_TOLERANCE * base_step
    n_off = int(np.count_nonzero(offbeat))
    onbeat_velocity = float(velocity[~offbeat].mean()) if n_off < onset.size else _NAN
    offbeat_velocity = float(velocity[offbeat].mean()) if n_off else _NAN
    ratio = offbeat_velocity / onbeat_velocity if onbeat_velocity > 0 else _NAN  # NaN compares False
    return {
        "microtiming_mean": float(magnitude.mean()),
        "microtiming_std": float(magnitude.std()),
        "microtiming_rms": rms,
        "microtiming_rms_ms": rms * ms_per_tick,
        "microtiming_rms_16th_ms": rms_16th_ms,
        "microtiming_signed_mean": signed_mean,
        "microtiming_signed_mean_ms": signed_mean * ms_per_tick,
        "syncopation_rate": n_off / onset.size,
        "onbeat_velocity": onbeat_velocity,
        "offbeat_velocity": offbeat_velocity,
        "offbeat_velocity_ratio": ratio,
    }


def _densities(n_notes: int, base_step: float, length_ticks: int) -> dict[str, float]:
    """fill_density = notes per base step of the loop; per bar assumes 16 steps a bar (the product's)."""
    if math.isnan(base_step) or length_ticks <= 0:
        return {"fill_density": _NAN, "note_density_per_bar": _NAN}
    fill_density = n_notes * base_step / length_ticks
    return {"fill_density": fill_density, "note_density_per_bar": STEPS_PER_BAR * fill_density}


def _layering_rate(iois: np.ndarray) -> float:
    """Share of notes whose onset tick holds more than one onset."""
    group = np.concatenate(([0], np.cumsum(iois != 0)))
    sizes = np.bincount(group)
    return float(sizes[sizes > 1].sum() / group.size)


def _hats(category: np.ndarray) -> dict[str, float]:
    hats = category[(category == _CLOSED_HAT) | (category == _OPEN_HAT)]
    if hats.size == 0:
        return {"hat_open_ratio": _NAN, "hat_transition_rate": _NAN}
    open_ratio = float(np.count_nonzero(hats == _OPEN_HAT) / hats.size)
    if hats.size < 2:
        return {"hat_open_ratio": open_ratio, "hat_transition_rate": _NAN}
    return {"hat_open_ratio": open_ratio,
            "hat_transition_rate": float(np.count_nonzero(hats[1:] != hats[:-1]) / (hats.size - 1))}


def _repetition(onset: np.ndarray, category: np.ndarray, iois: np.ndarray, base_step: float,
                length_ticks: int) -> dict[str, float]:
    """Segments of 4 base steps; a segment's fingerprint is its set of (position in steps to 3 decimals, category)."""
    if math.isnan(base_step):
        return {"variation_factor": _NAN, "repeat_rate": _NAN, "breakpoint_count": _NAN}
    segment_ticks = SEGMENT_STEPS * base_step
    onset = np.maximum(onset, 0)  # a downbeat played early (Stage 1 keeps it, just before 0) opens segment 0
    segment = np.floor(onset / segment_ticks).astype(np.int64)
    position_milli = np.rint(np.round((onset - segment * segment_ticks) / base_step, 3) * 1000).astype(np.int64)
    key = position_milli * len(CATEGORIES) + category
    n_segments = max(math.ceil(length_ticks / segment_ticks), int(segment[-1]) + 1)
    order = np.lexsort((key, segment))
    segment, key = segment[order], key[order]
    keep = np.ones(key.size, dtype=bool)  # a fingerprint is a set: drop repeated (segment, key) pairs
    keep[1:] = (segment[1:] != segment[:-1]) | (key[1:] != key[:-1])
    segment, key = segment[keep], key[keep]
    starts = np.flatnonzero(np.concatenate(([True], segment[1:] != segment[:-1])))
    fingerprints = {chunk.tobytes() for chunk in np.split(key, starts[1:])}
    if starts.size < n_segments:
        fingerprints.add(b"")  # the empty segments share one fingerprint
    variation = len(fingerprints) / n_segments
    return {"variation_factor": variation, "repeat_rate": 1.0 - variation,
            "breakpoint_count": float(np.count_nonzero(iois > segment_ticks))}


def _collision_rate(onset: np.ndarray, category: np.ndarray, tolerance: float) -> float:
    """Among onset ticks holding a kick/snare/hat, the share with ≥ 2 of those categories within ± tolerance."""
    core = _IS_CORE[category]
    if not core.any():
        return _NAN
    core_onset, core_category = onset[core], category[core]
    ticks = np.unique(core_onset)
    low, high = ticks - tolerance, ticks + tolerance
    present = np.zeros(ticks.size, dtype=np.int64)
    for name in _CORE_CATEGORIES:
        hits = core_onset[core_category == name]
        if hits.size:
            present += np.searchsorted(hits, high, side="right") > np.searchsorted(hits, low, side="left")
    return float(np.count_nonzero(present >= 2) / ticks.size)


def ioi_buckets(iois: np.ndarray, tpb: int) -> np.ndarray:
    """Index into (*RHYTHM_BUCKETS, "other") of each IOI: nearest reference by relative error, if ≤ 0.25."""
    references = tpb / RHYTHM_DIVISORS
    error = np.abs(iois[:, None] - references) / references
    nearest = error.argmin(axis=1)
    close = error[np.arange(iois.size), nearest] <= RHYTHM_MAX_ERROR
    return np.where(close, nearest, len(RHYTHM_BUCKETS))


def _rhythm_fingerprint(iois: np.ndarray, tpb: int) -> dict[str, float | str | None]:
    """Fractions of IOIs per bucket; the hash is SHA-1 of the product's JSON (so hashes match the product's)."""
    names = (*RHYTHM_BUCKETS, "other")
    if iois.size == 0:
        return {**{f"rhythm_{name}": _NAN for name in names}, "rhythm_hash": None}
    counts = np.bincount(ioi_buckets(iois, tpb), minlength=len(names)).tolist()
    fractions = {name: count / iois.size for name, count in zip(names, counts, strict=True)}
    product_fingerprint = {name: fractions[name] for name in RHYTHM_BUCKETS}
    if counts[-1]:
        product_fingerprint["other"] = fractions["other"]  # the product listed "other" only when present
    digest = hashlib.sha1(json.dumps(product_fingerprint, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {**{f"rhythm_{name}": fractions[name] for name in names}, "rhythm_hash": digest}


def metrics_frame(loops: Iterable[Loop], **kwargs) -> pd.DataFrame:
    """One row per loop (index ``loop_id``), columns METRIC_NAMES; kwargs go to ``loop_metrics``."""
    ids, rows = [], []
    for loop in loops:
        ids.append(loop.loop_id)
        rows.append(loop_metrics(loop, **kwargs))
    index = pd.Index(ids, name="loop_id", dtype="str")
    frame = pd.DataFrame(rows, columns=list(METRIC_NAMES), index=index)
    numeric = [name for name in METRIC_NAMES if name != "rhythm_hash"]
    return frame.astype({**dict.fromkeys(numeric, np.float64), "rhythm_hash": "str"})


def canonical_events(loop: Loop, metrics_row=None, *, pitch_map: str = "gm", grid: str = "sixteenth") -> pd.DataFrame:
    """One row per note of the loop (canonical_events.parquet), columns as CANONICAL_EVENTS_SCHEMA.

    ``grid_onset``/``microtiming_offset``/``swing_phase`` are against the 16th grid by default — the
    grid of ``microtiming_rms_16th_ms``: the product's ``base_step`` (``grid="base_step"``, read from
    ``metrics_row`` when given) is the median IOI, which on performed MIDI is rarely a musical
    subdivision (113 ticks rather than 120 on Groove MIDI), so offsets against it are not timing.
    ``swing_phase`` is the parity of the grid step (on a 16th grid: even = on an eighth, odd = between);
    ``ioi_bucket`` classifies the IOI to the next onset ("none" for the last note); ``program`` is 0
    (the GM standard kit) when the loop carries none.
    """
    base_step = None if metrics_row is None else float(metrics_row["base_step"])
    return _events_frame(_event_columns(loop, base_step, pitch_map, grid))


def canonical_events_frame(loops: Iterable[Loop], metrics: pd.DataFrame | None = None, *, pitch_map: str = "gm",
                           grid: str = "sixteenth") -> pd.DataFrame:
    """``canonical_events`` of many loops as one frame, built once (a frame per loop costs more than its rows)."""
    per_loop = [_event_columns(loop, None if metrics is None else float(metrics.at[loop.loop_id, "base_step"]),
                               pitch_map, grid) for loop in loops]
    if not per_loop:
        return _events_frame(_event_columns(Loop("", 1, *([np.zeros(0, np.int64)] * 5), 0), None, pitch_map, grid))
    return _events_frame({name: np.concatenate([columns[name] for columns in per_loop]) for name in per_loop[0]})


def _events_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The columns as a frame with pandas' string dtype for text (missing digests stay missing)."""
    return pd.DataFrame(columns).astype(dict.fromkeys(_EVENT_TEXT_COLUMNS, "str"))


def _event_columns(loop: Loop, base_step: float | None, pitch_map: str, grid: str) -> dict[str, np.ndarray]:
    onset = np.asarray(loop.onset, dtype=np.int64)
    n = onset.size
    tpb = loop.ticks_per_beat
    if grid == "sixteenth":
        grid_ticks = tpb / 4
    elif grid == "base_step":
        base_step = _base_step(np.diff(onset)) if base_step is None else base_step
        grid_ticks = base_step if math.isfinite(base_step) else tpb / 4
    else:
        raise ValueError(f"grid must be 'sixteenth' or 'base_step', got {grid!r}")
    step_index = np.rint(onset / grid_ticks)
    grid_onset = step_index * grid_ticks
    beat_ticks = tpb * 4 / loop.time_signature[1]
    # A downbeat played a few ticks early (a negative onset Stage 1 keeps, to keep the drummer's timing) is
    # placed at bar 0, beat 0; microtiming_offset still holds the deviation.
    bar_index, in_bar = np.divmod(np.maximum(onset, 0), loop.ticks_per_bar)
    beat_index, in_beat = np.divmod(in_bar, beat_ticks)
    buckets = np.full(n, len(IOI_BUCKETS) - 1)
    buckets[:-1] = ioi_buckets(np.diff(onset), tpb)
    velocity = np.asarray(loop.velocity, dtype=np.int16)
    program = np.zeros(n, dtype=np.int16) if loop.program is None else np.asarray(loop.program, np.int16)
    return {
        "loop_id": np.full(n, loop.loop_id, dtype=object),
        "bar_index": bar_index.astype(np.int64),
        "beat_index": beat_index.astype(np.int64),
        "beat_frac": in_beat / beat_ticks,
        "grid_onset": grid_onset,
        "onset_ticks": onset,
        "duration_ticks": np.asarray(loop.duration, dtype=np.int64),
        "channel": np.asarray(loop.channel, dtype=np.int16),
        "program": program,
        "pitch": np.asarray(loop.pitch, dtype=np.int16),
        "velocity": velocity,
        "intensity": velocity / 127.0,
        "is_ghost": velocity <= GHOST_MAX_VELOCITY,
        "swing_phase": _SWING_PHASES[(step_index % 2).astype(np.int64)],
        "microtiming_offset": onset - grid_onset,
        "ioi_bucket": _IOI_BUCKET_NAMES[buckets],
        "instrument_role": _CATEGORY_NAMES[categories_of(loop.pitch, pitch_map)],
        "file_digest": np.full(n, loop.source.get("file_digest"), dtype=object),
    }


_EVENT_TEXT_COLUMNS = ("loop_id", "swing_phase", "ioi_bucket", "instrument_role", "file_digest")
_SWING_PHASES = np.array(["even", "odd"], dtype=object)
_IOI_BUCKET_NAMES = np.array(IOI_BUCKETS, dtype=object)
_CATEGORY_NAMES = np.array(CATEGORIES, dtype=object)


def _finite(series: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(series.to_numpy(dtype=np.float64)), index=series.index)


def _metric(low: float | None = None, high: float | None = None, *, nullable: bool = True,
            integral: bool = False) -> pa.Column:
    """A float metric column: finite where defined, within [low, high]."""
    checks = [pa.Check(_finite, name="finite")]
    if low is not None:
        checks.append(pa.Check.ge(low))
    if high is not None:
        checks.append(pa.Check.le(high))
    if integral:
        checks.append(pa.Check(lambda s: s == np.floor(s), name="integral"))
    return pa.Column(float, checks=checks, nullable=nullable)


def _sums_to_one(frame: pd.DataFrame) -> pd.Series:
    fractions = frame[[f"rhythm_{name}" for name in (*RHYTHM_BUCKETS, "other")]]
    return fractions.isna().all(axis=1) | pd.Series(np.isclose(fractions.sum(axis=1), 1.0), index=frame.index)


def _repeat_complements_variation(frame: pd.DataFrame) -> pd.Series:
    total = frame["repeat_rate"] + frame["variation_factor"]
    return total.isna() | pd.Series(np.isclose(total, 1.0), index=frame.index)


def _offset_is_onset_minus_grid(frame: pd.DataFrame) -> pd.Series:
    offset = frame["onset_ticks"] - frame["grid_onset"]
    return pd.Series(np.isclose(offset, frame["microtiming_offset"]), index=frame.index)


_RATE = {"low": 0.0, "high": 1.0}
# Non-nullable columns are defined for every loop with at least one note (Stage 1 keeps loops of ≥ 16).
LOOP_METRICS_SCHEMA = pa.DataFrameSchema(
    {
        "base_step": _metric(0.0),
        "swing_ratio": _metric(0.0),
        "swing_ratio_product": _metric(0.0),
        "swing_confidence": _metric(**_RATE, nullable=False),
        "ghost_rate": _metric(**_RATE, nullable=False),
        "accent_rate": _metric(**_RATE, nullable=False),
        "velocity_mean": _metric(0.0, 127.0, nullable=False),
        "velocity_median": _metric(0.0, 127.0, nullable=False),
        "velocity_std": _metric(0.0, 63.5, nullable=False),
        "velocity_range": _metric(0.0, 127.0, nullable=False, integral=True),
        "velocity_distinct": _metric(1.0, 128.0, nullable=False, integral=True),
        "microtiming_mean": _metric(0.0),
        "microtiming_std": _metric(0.0),
        "microtiming_rms": _metric(0.0),
        "microtiming_rms_ms": _metric(0.0),
        "microtiming_rms_16th_ms": _metric(0.0, nullable=False),
        "microtiming_signed_mean": _metric(),
        "microtiming_signed_mean_ms": _metric(),
        "syncopation_rate": _metric(**_RATE),
        "onbeat_velocity": _metric(0.0, 127.0),
        "offbeat_velocity": _metric(0.0, 127.0),
        "offbeat_velocity_ratio": _metric(0.0),
        "fill_density": _metric(0.0),
        "note_density_per_bar": _metric(0.0),
        "layering_rate": _metric(**_RATE, nullable=False),
        "hat_open_ratio": _metric(**_RATE),
        "hat_transition_rate": _metric(**_RATE),
        "variation_factor": _metric(**_RATE),
        "repeat_rate": _metric(**_RATE),
        "breakpoint_count": _metric(0.0, integral=True),
        "drum_collision_rate": _metric(**_RATE),
        "role_separation": _metric(0.0, 1.0 - 1.0 / len(CATEGORIES), nullable=False),
        **{f"rhythm_{name}": _metric(**_RATE) for name in (*RHYTHM_BUCKETS, "other")},
        "rhythm_hash": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{40}$"), nullable=True),
        "tempo_stability": _metric(0.0),
    },
    index=pa.Index(str, name="loop_id", unique=True),
    checks=[pa.Check(_sums_to_one, name="rhythm_fractions_sum_to_1"),
            pa.Check(_repeat_complements_variation, name="repeat_rate_is_1_minus_variation")],
    strict=True,
)

CANONICAL_EVENTS_SCHEMA = pa.DataFrameSchema(
    {
        "loop_id": pa.Column(str),
        "bar_index": pa.Column(np.int64, pa.Check.ge(0)),
        "beat_index": pa.Column(np.int64, pa.Check.ge(0)),
        "beat_frac": pa.Column(float, [pa.Check.ge(0.0), pa.Check.lt(1.0)]),
        "grid_onset": pa.Column(float, pa.Check(_finite, name="finite")),
        "onset_ticks": pa.Column(np.int64),  # < 0 for a downbeat played just before the loop's first bar line
        "duration_ticks": pa.Column(np.int64, pa.Check.ge(0)),  # zero-length hits are real notes
        "channel": pa.Column(np.int16, pa.Check.in_range(0, 15)),
        "program": pa.Column(np.int16, pa.Check.in_range(0, 127)),
        "pitch": pa.Column(np.int16, pa.Check.in_range(0, 127)),
        "velocity": pa.Column(np.int16, pa.Check.in_range(0, 127)),
        "intensity": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "is_ghost": pa.Column(bool),
        "swing_phase": pa.Column(str, pa.Check.isin(["even", "odd"])),
        "microtiming_offset": pa.Column(float, pa.Check(_finite, name="finite")),
        "ioi_bucket": pa.Column(str, pa.Check.isin(list(IOI_BUCKETS))),
        "instrument_role": pa.Column(str, pa.Check.isin(list(CATEGORIES))),
        "file_digest": pa.Column(str, nullable=True),
    },
    checks=[pa.Check(lambda df: df["is_ghost"] == (df["velocity"] <= GHOST_MAX_VELOCITY), name="ghost_is_velocity"),
            pa.Check(_offset_is_onset_minus_grid, name="offset_is_onset_minus_grid")],
    strict=True,
    ordered=True,
)
