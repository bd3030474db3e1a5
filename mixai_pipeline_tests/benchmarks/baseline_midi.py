"""The straightforward reference for MIDI Stage 1 + Stage 2 (``lib/midi/stage1``, ``metrics``, ``scores``):
pretty_midi to read the files, plain Python (lists, dicts, the statistics module) over the notes of each
loop, one loop at a time — the way the product's code did it — with the definitions of
reference/loop_metrics.md.

Where it differs from the project, on purpose or because that is what the simple way gives:

- Parsing: ``pretty_midi.PrettyMIDI`` converts ticks to seconds on load; onsets and ends come back to ticks
  with ``time_to_tick``. pretty_midi drops zero-length hits (note-on and note-off on the same tick; the
  reference says they are real notes) and any note that is never closed; ``notes_parsed`` counts what it
  keeps. Only drum instruments are used, as in the project (``drums_only``).
- Slicing: 4/4 throughout (bar = 4 × resolution ticks; the product ignored time signatures), windows of
  n bars from tick 0, a note in the window its onset falls in. The project moves a hit played less than
  a 32nd before a bar line into the bar that follows (a downbeat played early) and cuts windows per
  time-signature section; here that hit stays at the end of the previous window. Only complete windows
  (ending by the end of the bar holding the file's last onset) that hold notes are kept, as in the
  project, and loop ids have the project's form (``sha256[:12]:{n}b:{first bar}``) so loops can be matched.
- File filters: the product's — over 1 MB, byte-identical files (by MD5), unreadable files, no drum notes;
  a file without a metadata row is turned away, as in the project. Loop filters: < 16 notes, no two onsets
  within ``layer_tolerance_ticks_at_480`` (default the project's 2 ticks at 480 tpb; 0 is the product's
  exact equality).
- Dedupe: the product's, a loop is dropped when an earlier loop of the same bar count has the same sum of
  pitches and the same sorted pitch-count profile ((pitch, count) pairs). The project uses a canonical
  16th-step grid and also clusters near-duplicates (a pairwise cosine similarity over all loops).
- Metrics: the reference's definitions, with undefined values as None. The swing is the product's
  (odd/even IOI means): the project's corrected off-beat ``swing_ratio`` is not computed here, so the
  groove-harmony axis (and the total) reads ``swing_ratio_product``; every other term is the project's.
  Float results can differ from the project's numpy results in the last bits (Python's ``round(x, 3)`` and
  ``statistics.pstdev`` versus numpy's).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import pretty_midi

from mixai_pipeline.lib.midi.categories import PITCH_MAPS

MAX_FILE_BYTES = 1_000_000
MIN_NOTES = 16
DEFAULT_BPM = 120.0
GHOST_MAX_VELOCITY = 45
ACCENT_MIN_VELOCITY = 100
OFFBEAT_TOLERANCE = 0.2
COLLISION_TOLERANCE_TICKS_AT_480 = 2.0
LAYER_TOLERANCE_TICKS_AT_480 = 2.0
RHYTHM_REFERENCES = (("quarter", 1), ("eighth", 2), ("triplet", 3), ("sixteenth", 4))
RHYTHM_TARGET = {"eighth": 0.38, "sixteenth": 0.32, "triplet": 0.18, "quarter": 0.12}
CORE = ("kick", "snare", "closed_hat", "open_hat")
AXES = ("timing", "velocity", "groove_harmony", "drum_cohesion", "structure")


@dataclass
class BaselineLoop:
    loop_id: str
    path: str
    bars: int
    start_bar: int
    ticks_per_beat: int
    length_ticks: int
    notes: list[tuple[int, int, int, int]]  # (onset from the loop start, duration, pitch, velocity)
    tempos_bpm: list[float]


@dataclass
class BaselineResult:
    loops: list[BaselineLoop] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)  # one per loop, same order
    scores: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    files_in: int = 0
    files_accepted: int = 0
    windows_sliced: int = 0
    notes_parsed: int = 0  # drum notes pretty_midi returned over the accepted files
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- stage 1


def parse_drum_notes(data: bytes) -> tuple[int, list[tuple[int, int, int, int]], list[tuple[int, float]]]:
    """(ticks per beat, drum notes as (onset, duration, pitch, velocity) in ticks, tempo events (tick, bpm))."""
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    notes = []
    for instrument in pm.instruments:
        if not instrument.is_drum:
            continue
        for note in instrument.notes:
            onset = int(pm.time_to_tick(note.start))  # time_to_tick returns numpy ints: keep the lists plain
            notes.append((onset, int(pm.time_to_tick(note.end)) - onset, note.pitch, note.velocity))
    notes.sort(key=lambda n: (n[0], n[2]))
    times, bpms = pm.get_tempo_changes()
    tempos = [(int(pm.time_to_tick(t)), float(b)) for t, b in zip(times, bpms, strict=True)]
    return pm.resolution, notes, tempos


def slice_windows(path: str, digest: str, tpb: int, notes: list, tempos: list, bars: Sequence[int]
                  ) -> tuple[list[BaselineLoop], int]:
    """Non-overlapping windows of each bar count from tick 0 (4/4); the loops and the partial windows skipped."""
    bar_ticks = 4 * tpb
    last_bar = notes[-1][0] // bar_ticks
    loops, partial = [], 0
    for n_bars in bars:
        window_ticks = n_bars * bar_ticks
        complete = (last_bar + 1) // n_bars
        windows: dict[int, list] = defaultdict(list)
        for onset, duration, pitch, velocity in notes:
            windows[onset // window_ticks].append((onset, duration, pitch, velocity))
        for window in sorted(windows):
            if window >= complete:
                partial += 1
                continue
            start = window * window_ticks
            in_force = DEFAULT_BPM
            changes = []
            for tick, bpm in tempos:
                if tick <= start:
                    in_force = bpm
                elif tick < start + window_ticks:
                    changes.append(bpm)
            loops.append(BaselineLoop(
                loop_id=f"{digest[:12]}:{n_bars}b:{window * n_bars}",
                path=path,
                bars=n_bars,
                start_bar=window * n_bars,
                ticks_per_beat=tpb,
                length_ticks=window_ticks,
                notes=[(onset - start, duration, pitch, velocity)
                       for onset, duration, pitch, velocity in windows[window]],
                tempos_bpm=[in_force, *changes],
            ))
    return loops, partial


def loop_reject_reason(loop: BaselineLoop, min_notes: int, layer_tolerance_ticks_at_480: float) -> str | None:
    if len(loop.notes) < min_notes:
        return "too_few_notes"
    tolerance = layer_tolerance_ticks_at_480 * loop.ticks_per_beat / 480
    for previous, current in pairwise(loop.notes):
        if current[0] - previous[0] <= tolerance:
            return None
    return "no_layered_hits"


def product_dedupe_key(loop: BaselineLoop) -> tuple:
    pitches = [note[2] for note in loop.notes]
    return loop.bars, sum(pitches), tuple(sorted(Counter(pitches).items()))


# --------------------------------------------------------------------------------------- stage 2


def loop_metrics(loop: BaselineLoop, pitch_map: str = "gm",
                 collision_tolerance_ticks_at_480: float = COLLISION_TOLERANCE_TICKS_AT_480) -> dict:
    categories_of = PITCH_MAPS[pitch_map]
    onsets = [note[0] for note in loop.notes]
    velocities = [note[3] for note in loop.notes]
    categories = [categories_of.get(note[2], "other") for note in loop.notes]
    n = len(onsets)
    tpb = loop.ticks_per_beat
    bpm = loop.tempos_bpm[0] if loop.tempos_bpm else DEFAULT_BPM
    ms_per_tick = 60000.0 / (bpm * tpb)
    m: dict = {}

    iois = [b - a for a, b in pairwise(onsets)]
    positive = [ioi for ioi in iois if ioi > 0]
    base_step = statistics.median(positive) if positive else None
    m["base_step"] = base_step

    m["swing_ratio_product"], m["swing_confidence"] = None, 0.0
    if len(iois) >= 2:
        even = [ioi for ioi in iois[0::2] if ioi > 0]
        odd = [ioi for ioi in iois[1::2] if ioi > 0]
        if even and odd:
            m["swing_ratio_product"] = statistics.mean(odd) / statistics.mean(even)
            m["swing_confidence"] = min(1.0, len(iois) / 4)

    m["ghost_rate"] = sum(1 for v in velocities if v <= GHOST_MAX_VELOCITY) / n
    m["accent_rate"] = sum(1 for v in velocities if v >= ACCENT_MIN_VELOCITY) / n
    m["velocity_mean"] = statistics.mean(velocities)
    m["velocity_median"] = statistics.median(velocities)
    m["velocity_std"] = statistics.pstdev(velocities)
    m["velocity_range"] = max(velocities) - min(velocities)
    m["velocity_distinct"] = len(set(velocities))

    sixteenth = tpb / 4
    m["microtiming_rms_16th_ms"] = math.sqrt(
        sum((o - round(o / sixteenth) * sixteenth) ** 2 for o in onsets) / n) * ms_per_tick
    for name in ("microtiming_mean", "microtiming_std", "microtiming_rms", "microtiming_rms_ms",
                 "microtiming_signed_mean", "microtiming_signed_mean_ms", "syncopation_rate", "onbeat_velocity",
                 "offbeat_velocity", "offbeat_velocity_ratio", "fill_density", "note_density_per_bar",
                 "variation_factor", "repeat_rate", "breakpoint_count"):
        m[name] = None
    if base_step is not None:
        residuals = [o - round(o / base_step) * base_step for o in onsets]
        magnitudes = [abs(r) for r in residuals]
        m["microtiming_mean"] = statistics.mean(magnitudes)
        m["microtiming_std"] = statistics.pstdev(magnitudes)
        m["microtiming_rms"] = math.sqrt(sum(r * r for r in residuals) / n)
        m["microtiming_rms_ms"] = m["microtiming_rms"] * ms_per_tick
        m["microtiming_signed_mean"] = statistics.mean(residuals)
        m["microtiming_signed_mean_ms"] = m["microtiming_signed_mean"] * ms_per_tick
        onbeat, offbeat = [], []
        for magnitude, velocity in zip(magnitudes, velocities, strict=True):
            (offbeat if magnitude > OFFBEAT_TOLERANCE * base_step else onbeat).append(velocity)
        m["syncopation_rate"] = len(offbeat) / n
        m["onbeat_velocity"] = statistics.mean(onbeat) if onbeat else None
        m["offbeat_velocity"] = statistics.mean(offbeat) if offbeat else None
        if m["onbeat_velocity"] and m["offbeat_velocity"] is not None:
            m["offbeat_velocity_ratio"] = m["offbeat_velocity"] / m["onbeat_velocity"]
        m["fill_density"] = n / (loop.length_ticks / base_step)
        m["note_density_per_bar"] = n / ((loop.length_ticks / base_step) / 16)
        m.update(_repetition(onsets, categories, iois, base_step, loop.length_ticks))

    per_tick = Counter(onsets)
    m["layering_rate"] = sum(count for count in per_tick.values() if count > 1) / n

    hats = [c for c in categories if c in ("closed_hat", "open_hat")]
    m["hat_open_ratio"] = hats.count("open_hat") / len(hats) if hats else None
    m["hat_transition_rate"] = (sum(1 for a, b in pairwise(hats) if a != b) / (len(hats) - 1)
                                if len(hats) > 1 else None)

    tolerance = collision_tolerance_ticks_at_480 * tpb / 480
    m["drum_collision_rate"] = _collision_rate(onsets, categories, tolerance)
    shares = Counter(categories)
    m["role_separation"] = 1.0 - sum((count / n) ** 2 for count in shares.values())
    m.update(_rhythm(iois, tpb))
    m["tempo_stability"] = statistics.pstdev(loop.tempos_bpm) if loop.tempos_bpm else None
    return m


def _repetition(onsets: list, categories: list, iois: list, base_step: float, length_ticks: int) -> dict:
    segment_ticks = 4 * base_step
    fingerprints: dict[int, set] = defaultdict(set)
    for onset, category in zip(onsets, categories, strict=True):
        onset = max(onset, 0)
        segment = math.floor(onset / segment_ticks)
        fingerprints[segment].add((round((onset - segment * segment_ticks) / base_step, 3), category))
    n_segments = max(math.ceil(length_ticks / segment_ticks), max(fingerprints) + 1)
    distinct = {frozenset(fingerprint) for fingerprint in fingerprints.values()}
    if len(fingerprints) < n_segments:
        distinct.add(frozenset())
    variation = len(distinct) / n_segments
    return {"variation_factor": variation, "repeat_rate": 1.0 - variation,
            "breakpoint_count": sum(1 for ioi in iois if ioi > segment_ticks)}


def _collision_rate(onsets: list, categories: list, tolerance: float) -> float | None:
    core = [(onset, category) for onset, category in zip(onsets, categories, strict=True)
            if category in CORE]
    if not core:
        return None
    ticks = sorted({onset for onset, _ in core})
    collisions, low = 0, 0
    for tick in ticks:  # core notes are sorted by onset: a window slides over them
        while core[low][0] < tick - tolerance:
            low += 1
        present = set()
        for onset, category in core[low:]:
            if onset > tick + tolerance:
                break
            present.add(category)
        if len(present) >= 2:
            collisions += 1
    return collisions / len(ticks)


def _rhythm(iois: list, tpb: int) -> dict:
    names = [name for name, _ in RHYTHM_REFERENCES] + ["other"]
    if not iois:
        return {**{f"rhythm_{name}": None for name in names}, "rhythm_hash": None}
    counts = dict.fromkeys(names, 0)
    for ioi in iois:
        best, best_error = "other", None
        for name, divisor in RHYTHM_REFERENCES:
            reference = tpb / divisor
            error = abs(ioi - reference) / reference
            if best_error is None or error < best_error:
                best, best_error = name, error
        counts[best if best_error <= 0.25 else "other"] += 1
    fractions = {name: counts[name] / len(iois) for name in names}
    fingerprint = {name: fractions[name] for name, _ in RHYTHM_REFERENCES}
    if counts["other"]:
        fingerprint["other"] = fractions["other"]
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {**{f"rhythm_{name}": fractions[name] for name in names}, "rhythm_hash": digest}


def _bandpass(value, center, width):
    return None if value is None else max(0.0, 1.0 - abs(value - center) / width)


def _inv(value, limit):
    return None if value is None else max(0.0, 1.0 - value / limit)


def _axis(*terms) -> float:
    defined = [term for term in terms if term is not None]
    value = sum(defined) / len(defined) if defined else 0.5
    return min(1.0, max(0.0, value))


def loop_score(m: Mapping, weights: Mapping[str, float] | None = None, threshold: float = 70.0) -> dict:
    """The five axes ×100, the weighted total (default: the seed document's equal weights, pass ≥ 70)."""
    weights = dict(weights or dict.fromkeys(AXES, 1.0))
    rhythm = {name: m[f"rhythm_{name}"] for name, _ in RHYTHM_REFERENCES}
    if rhythm["quarter"] is None:
        cosine = offbeat_ratio = eighth_sixteenth = None
    else:
        dot = sum(rhythm[name] * target for name, target in RHYTHM_TARGET.items())
        norm = math.sqrt(sum(v * v for v in rhythm.values())) * math.sqrt(sum(t * t for t in RHYTHM_TARGET.values()))
        cosine = dot / norm if norm > 0 else None
        denominator = sum(rhythm.values())
        offbeat_ratio = (rhythm["sixteenth"] + rhythm["triplet"]) / denominator if denominator > 0 else None
        eighth_sixteenth = min(1.0, rhythm["eighth"] + rhythm["sixteenth"])
    swing = m["swing_ratio_product"]
    swing_term = None if swing is None else max(_bandpass(swing, 1.0, 0.25), _bandpass(swing, 1.5, 0.35))
    axes = {
        "timing": _axis(m["swing_confidence"], _inv(m["microtiming_std"], 40), _inv(m["microtiming_rms"], 36),
                        _bandpass(m["fill_density"], 0.32, 0.28)),
        "velocity": _axis(_bandpass(m["ghost_rate"], 0.25, 0.25), _bandpass(m["accent_rate"], 0.25, 0.25),
                          _bandpass(m["velocity_range"], 80, 55), _bandpass(m["velocity_distinct"], 5.5, 4.5),
                          _bandpass(m["velocity_std"], 12, 8)),
        "groove_harmony": _axis(swing_term, cosine, _bandpass(m["syncopation_rate"], 0.35, 0.35),
                                _bandpass(offbeat_ratio, 0.45, 0.45), eighth_sixteenth),
        "drum_cohesion": _axis(_inv(m["drum_collision_rate"], 0.45), m["role_separation"],
                               _bandpass(m["hat_transition_rate"], 0.5, 0.45)),
        "structure": _axis(_bandpass(m["repeat_rate"], 0.60, 0.45), _bandpass(m["variation_factor"], 0.45, 0.35),
                           _inv(m["breakpoint_count"], 10), _bandpass(m["note_density_per_bar"], 10, 8)),
    }
    weight_sum = sum(weights.values())
    contributions = {axis: axes[axis] * 100.0 * weights[axis] / weight_sum for axis in AXES}
    total = sum(contributions.values())
    passed = total >= threshold
    weakest = min(AXES, key=contributions.__getitem__)
    return {**{axis: axes[axis] * 100.0 for axis in AXES}, "total": total, "passed": passed,
            "failure_reason": None if passed else weakest, "threshold": threshold, "weights": weights}


# ---------------------------------------------------------------------------------------- the whole


def run_baseline(
    files: Iterable[tuple[str, bytes]],
    metadata: Mapping[str, Mapping] | None,
    *,
    bars: Sequence[int] = (2, 4),
    pitch_map: str = "gm",
    max_bytes: int = MAX_FILE_BYTES,
    min_notes: int = MIN_NOTES,
    layer_tolerance_ticks_at_480: float = LAYER_TOLERANCE_TICKS_AT_480,
) -> BaselineResult:
    """Stage 1 (parse, slice, filter, product dedupe) then Stage 2 (metrics, scores), loop by loop."""
    if pitch_map not in PITCH_MAPS:
        raise ValueError(f"unknown pitch map {pitch_map!r}; known: {sorted(PITCH_MAPS)}")
    result = BaselineResult()
    seen_md5: set[str] = set()
    seen_keys: set[tuple] = set()
    started = time.perf_counter()
    for name, data in files:
        result.files_in += 1
        if metadata is not None and name not in metadata:
            result.counts["missing_metadata"] += 1
            continue
        if not data or len(data) > max_bytes:
            result.counts["too_large" if data else "empty"] += 1
            continue
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if md5 in seen_md5:
            result.counts["duplicate_file"] += 1
            continue
        seen_md5.add(md5)
        try:
            tpb, notes, tempos = parse_drum_notes(data)
        except Exception:  # pretty_midi/mido raise many types for bad files
            result.counts["corrupt"] += 1
            continue
        if not notes:
            result.counts["no_drum_notes"] += 1
            continue
        result.files_accepted += 1
        result.notes_parsed += len(notes)
        loops, partial = slice_windows(name, hashlib.sha256(data).hexdigest(), tpb, notes, tempos, bars)
        result.windows_sliced += len(loops)
        result.counts["partial_window"] += partial
        for loop in loops:
            reason = loop_reject_reason(loop, min_notes, layer_tolerance_ticks_at_480)
            if reason:
                result.counts[reason] += 1
                continue
            key = product_dedupe_key(loop)
            if key in seen_keys:
                result.counts["product_duplicate"] += 1
                continue
            seen_keys.add(key)
            result.loops.append(loop)
    stage1_done = time.perf_counter()
    result.metrics = [loop_metrics(loop, pitch_map) for loop in result.loops]
    metrics_done = time.perf_counter()
    result.scores = [loop_score(m) for m in result.metrics]
    result.seconds = {"stage1": stage1_done - started, "metrics": metrics_done - stage1_done,
                      "scores": time.perf_counter() - metrics_done}
    return result
