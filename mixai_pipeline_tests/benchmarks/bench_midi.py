"""MIDI drum-loop benchmark: Stage 1 + Stage 2 of ``lib/midi`` against the pretty_midi baseline
(``baseline_midi``) on the Groove MIDI pack, and a scale run at the seed's corpus size.

``groove_pack``: the whole pack (info.csv + 1,021 files, pitch map "roland_td11"), read into memory once.
The project is ``run_stage1`` + ``metrics_frame`` + ``score_frame``; the baseline is ``run_baseline``
(pretty_midi, plain Python per loop). Both run in this process on one core (BLAS limited to 1 thread, which
the project's near-duplicate clustering uses), alternating per repeat so machine load hits both alike; one
untimed warm-up run of each gives the results compared. Seconds are medians over the repeats. The work
is not quite the same: the project's dedupe also clusters near-duplicates (a pairwise cosine similarity over
all loops), the baseline's is the product's key lookup (see ``baseline_midi``). Agreement:
loops are matched by loop id (file digest, bar count, first bar — the baseline builds ids the project's
way); for each metric, the median and max absolute difference over all matched loops and over the matched
loops whose notes are identical in both (same onset, pitch, velocity), and why the others differ.

``scale_run``: the pack plus variants of every file written as real MIDI bytes with symusic
(``Score.dumps_midi``), so Stage 1 parses them like any upload: each variant changes the resolution
(ticks per quarter), scales the tempo, offsets every velocity (clipped to 1–127, so no note-on turns into
a note-off) and delays the notes by whole 4/4 bars so that the windows fall elsewhere. A velocity offset
is needed for the copies to survive the dedupe: the canonical grid ignores tempo and resolution, so a
tempo-only copy is an exact duplicate. Nearly every loop is then a near-duplicate of a loop of another
variant (reported and kept): many more similarity edges than a real corpus, the same matrix products.
The run uses both cores: a ProcessPoolExecutor over chunks of
files does what is per file or per loop (parse, slice, filter, canonical grid, metrics) with the public
``stage1``/``dedupe``/``metrics`` functions, in file order; then this process drops byte-identical files'
loops (the first file wins, as in ``run_stage1``), runs the exact and near-duplicate dedupe over the whole
set (BLAS may use both threads then), keeps the kept loops' metrics and scores them. Metrics of loops the
exact dedupe drops are computed and thrown away. A single-process reference (``run_stage1`` +
``metrics_frame`` + ``score_frame``, BLAS 1 thread) on the same files checks that the parallel path
gives the same loops and metrics and shows where the time goes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import symusic
from threadpoolctl import threadpool_limits

from mixai_pipeline import settings
from mixai_pipeline.lib.midi import dedupe, stage1
from mixai_pipeline.lib.midi.metrics import metrics_frame
from mixai_pipeline.lib.midi.scores import score_frame
from mixai_pipeline_tests.benchmarks.baseline_midi import run_baseline

PITCH_MAP = "roland_td11"
BARS = (2, 4)
REPEATS = 3
SEED_CORPUS_LOOPS = 76_165
TARGET_SECONDS = 300.0
WORKERS = 2
CHUNK_FILES = 100
# (ticks per quarter, tempo factor, velocity offset, delay in 4/4 bars) of each variant; the pack is variant 0
VARIANTS = (
    (960, 0.90, +4, 1),
    (240, 1.10, -4, 1),
    (480, 0.80, +8, 2),
    (960, 1.20, -8, 3),
    (240, 0.95, +12, 3),
    (480, 1.05, -12, 2),
)
AGREEMENT_METRICS = (
    "base_step", "swing_ratio_product", "ghost_rate", "accent_rate", "velocity_mean", "velocity_std",
    "microtiming_rms", "syncopation_rate", "fill_density", "layering_rate", "hat_open_ratio", "hat_transition_rate",
    "variation_factor", "drum_collision_rate", "role_separation", "rhythm_sixteenth",
)
AGREEMENT_SCORES = ("timing", "velocity", "groove_harmony", "drum_cohesion", "structure", "total")


def _pack() -> tuple[list[tuple[str, bytes]], dict[str, dict]]:
    root = settings.groove_midi_dir()
    metadata = stage1.read_pack_metadata((root / "info.csv").read_bytes())
    files = [(path.relative_to(root).as_posix(), path.read_bytes()) for path in sorted(root.rglob("*.mid"))]
    return files, metadata


def _rounded(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ------------------------------------------------------------------------------------------- groove pack


def _project(files, metadata):
    result = stage1.run_stage1(files, metadata, bars=BARS, pitch_map=PITCH_MAP)
    started = time.perf_counter()
    metrics = metrics_frame(result.loops, pitch_map=PITCH_MAP)
    measured = time.perf_counter()
    scores = score_frame(metrics)
    phases = {**result.seconds, "metrics": measured - started, "scores": time.perf_counter() - measured}
    return result, metrics, scores, phases


def _baseline(files, metadata):
    return run_baseline(files, metadata, bars=BARS, pitch_map=PITCH_MAP)


def _timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def _note_counts(files) -> dict:
    """Drum notes symusic reads (what Stage 1 slices) in the distinct files, and how many have zero length."""
    seen, notes, zero_length = set(), 0, 0
    for name, data in files:
        parsed = stage1.parse_midi(data, name)
        if parsed.sha256 in seen:
            continue
        seen.add(parsed.sha256)
        notes += int(parsed.is_drum.sum())
        zero_length += int(((parsed.duration == 0) & parsed.is_drum).sum())
    return {"notes": notes, "zero_length": zero_length}


def _difference_causes(project_loops: dict, baseline_loops: dict, matched) -> tuple[dict, list[str]]:
    """Why a matched loop's notes differ, and the ids of the loops whose notes are identical."""
    causes: Counter = Counter()
    identical = []
    for loop_id in matched:
        ours, theirs = project_loops[loop_id], baseline_loops[loop_id]
        ours_notes = list(zip(ours.onset.tolist(), ours.pitch.tolist(), ours.velocity.tolist(), strict=True))
        their_notes = [(onset, pitch, velocity) for onset, _, pitch, velocity in theirs.notes]
        if ours_notes == their_notes:
            causes["identical"] += 1
            identical.append(loop_id)
            continue
        if ours.time_signature != (4, 4):
            causes["meter_not_4_4"] += 1  # the baseline cuts 4/4 bars whatever the file's time signature
            continue
        grace = ours.ticks_per_beat * stage1.EARLY_GRACE_QUARTERS
        early = bool((ours.onset < 0).any()) or any(n[0] > theirs.length_ticks - grace for n in their_notes)
        zero = bool((ours.duration == 0).any())
        core_ours = [n for n, d in zip(ours_notes, ours.duration.tolist(), strict=True) if d > 0 and n[0] >= 0]
        core_theirs = [n for n in their_notes if n[0] <= theirs.length_ticks - grace]
        if core_ours == core_theirs and (early or zero):
            causes["early_hits_and_zero_length" if early and zero else "early_hits" if early else "zero_length"] += 1
        else:
            causes["other"] += 1
    return dict(causes), identical


def _baseline_frames(baseline) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = pd.Index([loop.loop_id for loop in baseline.loops], name="loop_id")
    return pd.DataFrame(baseline.metrics, index=ids), pd.DataFrame(baseline.scores, index=ids)


def _differences(ours: pd.DataFrame, theirs: pd.DataFrame, ids, columns) -> dict:
    out = {}
    for column in columns:
        a = ours.loc[ids, column].to_numpy(dtype=np.float64)
        b = pd.to_numeric(theirs.loc[ids, column], errors="coerce").to_numpy(dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a[both] - b[both])
        out[column] = {
            "median_abs_diff": _rounded(np.median(diff), 6) if diff.size else None,
            "max_abs_diff": float(f"{diff.max():.3g}") if diff.size else None,
            "defined_in_one_only": int(np.count_nonzero(np.isfinite(a) != np.isfinite(b))),
        }
    return out


def groove_pack() -> dict:
    files, metadata = _pack()
    with threadpool_limits(limits=1):
        result, metrics, scores, _ = _project(files, metadata)  # warm-up, and the results compared
        baseline = _baseline(files, metadata)
        project_times, baseline_times, project_phases, baseline_phases = [], [], [], []
        for _ in range(REPEATS):
            seconds, (_, _, _, phases) = _timed(_project, files, metadata)
            project_times.append(seconds)
            project_phases.append(phases)
            seconds, repeat = _timed(_baseline, files, metadata)
            baseline_times.append(seconds)
            baseline_phases.append(repeat.seconds)

    notes = _note_counts(files)
    theirs_metrics, theirs_scores = _baseline_frames(baseline)
    matched = metrics.index.intersection(theirs_metrics.index)
    causes, identical = _difference_causes({loop.loop_id: loop for loop in result.loops},
                                           {loop.loop_id: loop for loop in baseline.loops}, matched)
    hashes_equal = (metrics.loc[matched, "rhythm_hash"] == theirs_metrics.loc[matched, "rhythm_hash"])

    project_s, baseline_s = statistics.median(project_times), statistics.median(baseline_times)
    n_project, n_baseline = len(result.loops), len(baseline.loops)

    def side(stage1, n_loops: int, seconds: float, phases: list[dict]) -> dict:
        return {
            "files_accepted": stage1.files_accepted, "windows_sliced": stage1.windows_sliced, "loops": n_loops,
            "counts": {k: v for k, v in sorted(stage1.counts.items()) if v}, "seconds": round(seconds, 3),
            "seconds_by_phase": {name: round(statistics.median(p[name] for p in phases), 3) for name in phases[0]},
            "loops_per_s": round(n_loops / seconds, 1),
        }

    return {
        "pack": str(settings.groove_midi_dir()),
        "pitch_map": PITCH_MAP,
        "bars": list(BARS),
        "repeats": REPEATS,
        "threads": 1,
        "files": len(files),
        "project": side(result, n_project, project_s, project_phases),
        "pretty_midi_baseline": side(baseline, n_baseline, baseline_s, baseline_phases),
        "speedup": round(baseline_s / project_s, 2),
        "speedup_per_loop": round((n_project / project_s) / (n_baseline / baseline_s), 2),
        "notes_lost_by_pretty_midi": {
            "drum_notes_symusic": notes["notes"],
            "drum_notes_pretty_midi": baseline.notes_parsed,
            "lost": notes["notes"] - baseline.notes_parsed,
            "zero_length_in_pack": notes["zero_length"],
        },
        "agreement": {
            "matched_loops": len(matched),
            "only_project": n_project - len(matched),
            "only_baseline": n_baseline - len(matched),
            "matched_loops_by_note_difference": causes,
            "rhythm_hash_equal_share": {
                "all_matched": _rounded(hashes_equal.mean()),
                "identical_notes": _rounded(hashes_equal.loc[identical].mean()) if identical else None,
            },
            "all_matched": {
                "metrics": _differences(metrics, theirs_metrics, matched, AGREEMENT_METRICS),
                "scores": _differences(scores, theirs_scores, matched, AGREEMENT_SCORES),
            },
            "identical_notes": {
                "metrics": _differences(metrics, theirs_metrics, identical, AGREEMENT_METRICS),
                "scores": _differences(scores, theirs_scores, identical, AGREEMENT_SCORES),
            },
        },
    }


# --------------------------------------------------------------------------------------------- scale run


def _variant_bytes(data: bytes, tpq: int, tempo_factor: float, velocity_offset: int, delay_bars: int) -> bytes:
    score = symusic.Score.from_midi(data)
    if tpq != score.ticks_per_quarter:
        score = score.resample(tpq, min_dur=0)  # min_dur=0 keeps zero-length hits at zero length
    for tempo in score.tempos:
        tempo.qpm = tempo.qpm * tempo_factor
    for track in score.tracks:
        notes = track.notes.numpy()
        if notes["time"].size:
            velocity = np.clip(notes["velocity"].astype(np.int16) + velocity_offset, 1, 127)
            track.notes = symusic.Note.from_numpy(notes["time"], notes["duration"], notes["pitch"],
                                                  velocity.astype(notes["velocity"].dtype), score.ttype)
        track.shift_time(delay_bars * 4 * tpq, inplace=True)  # notes only: tempo and meter stay at tick 0
    return score.dumps_midi()


def _scale_corpus(files, metadata) -> tuple[list[tuple[str, bytes]], dict[str, dict]]:
    corpus, rows = list(files), dict(metadata)
    for k, (tpq, tempo_factor, velocity_offset, delay_bars) in enumerate(VARIANTS, start=1):
        for name, data in files:
            variant = f"variant{k}/{name}"
            corpus.append((variant, _variant_bytes(data, tpq, tempo_factor, velocity_offset, delay_bars)))
            row = dict(metadata[name])
            row["bpm"] = None if row.get("bpm") is None else row["bpm"] * tempo_factor
            rows[variant] = row
    return corpus, rows


_worker_metadata: dict[str, dict] = {}


def _init_worker(metadata: dict[str, dict]) -> None:
    global _worker_metadata
    _worker_metadata = metadata


def _stage12_chunk(chunk: list[tuple[str, bytes]]) -> dict:
    """Per file and per loop work for one chunk, in file order: parse, slice, filter, grid, metrics."""
    metadata = _worker_metadata
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        files, loops, counts = [], [], Counter()
        for name, data in chunk:
            try:
                row = metadata.get(name)
                if row is None:
                    raise stage1.MidiReject("missing_metadata", name)
                parsed = stage1.parse_midi(data, name)
                if not parsed.is_drum.any():
                    raise stage1.MidiReject("no_drum_notes", name)
            except stage1.MidiReject as reject:
                counts[reject.reason] += 1
                continue
            loop_rejects: Counter = Counter()  # per file: a byte-identical copy's are not counted
            for loop in stage1.slice_loops(parsed, bars=BARS, source=row):
                reason = stage1.loop_reject_reason(loop)
                if reason:
                    loop_rejects[reason] += 1
                else:
                    loops.append(loop)
            files.append((name, parsed.sha256, loop_rejects))
        sliced = time.perf_counter()
        grids = [dedupe.canonical_grid(loop, PITCH_MAP) for loop in loops]
        gridded = time.perf_counter()
        metrics = metrics_frame(loops, pitch_map=PITCH_MAP)
        done = time.perf_counter()
    return {"files": files, "loops": loops, "grids": grids, "metrics": metrics, "counts": counts,
            "seconds": {"parse_slice_filter": sliced - started, "grids": gridded - sliced, "metrics": done - gridded}}


def _parallel(corpus, metadata) -> tuple[dict, pd.DataFrame, pd.DataFrame, list]:
    started = time.perf_counter()
    chunks = [corpus[i : i + CHUNK_FILES] for i in range(0, len(corpus), CHUNK_FILES)]
    with ProcessPoolExecutor(max_workers=WORKERS, initializer=_init_worker, initargs=(metadata,)) as pool:
        parts = list(pool.map(_stage12_chunk, chunks))
    per_file = time.perf_counter()

    seen: dict[str, str] = {}
    duplicate_files: set[str] = set()
    counts: Counter = Counter()
    for part in parts:
        counts.update(part["counts"])
        for name, sha256, loop_rejects in part["files"]:
            if sha256 in seen:
                duplicate_files.add(name)
            else:
                seen[sha256] = name
                counts.update(loop_rejects)
    counts["duplicate_file"] = len(duplicate_files)
    loops, grids, frames = [], [], []
    for part in parts:
        kept = [loop.source["path"] not in duplicate_files for loop in part["loops"]]
        loops += [loop for loop, k in zip(part["loops"], kept, strict=True) if k]
        grids += [grid for grid, k in zip(part["grids"], kept, strict=True) if k]
        frames.append(part["metrics"][kept])
    all_metrics = pd.concat(frames)
    gathered = time.perf_counter()

    keep, duplicates = dedupe.exact_duplicates(loops, grids)
    counts["exact_duplicate"] = len(duplicates)
    exact = time.perf_counter()
    clusters = dedupe.near_duplicate_clusters([loops[i].loop_id for i in keep], [grids[i] for i in keep],
                                              [dedupe.loop_bars(loops[i]) for i in keep])
    counts["near_duplicate_loops"] = sum(len(c.loop_ids) for c in clusters)
    near = time.perf_counter()
    metrics = all_metrics.iloc[keep]
    scores = score_frame(metrics)
    done = time.perf_counter()

    worker_seconds = Counter()
    for part in parts:
        worker_seconds.update(part["seconds"])
    report = {
        "workers": WORKERS,
        "chunk_files": CHUNK_FILES,
        "windows_kept_by_filters": len(loops),
        "near_duplicate_clusters": len(clusters),
        "loops": len(keep),
        "counts": dict(sorted(counts.items())),
        "seconds_by_phase": {
            "per_file_parallel_wall": round(per_file - started, 2),
            "gather_drop_duplicate_files": round(gathered - per_file, 2),
            "dedupe_exact": round(exact - gathered, 2),
            "dedupe_near_duplicates": round(near - exact, 2),
            "scores": round(done - near, 3),
        },
        "worker_cpu_seconds": {name: round(value, 2) for name, value in worker_seconds.items()},
        "seconds": round(done - started, 2),
    }
    return report, metrics, scores, clusters


def _single_process(corpus, metadata) -> tuple[dict, pd.DataFrame, stage1.Stage1Result]:
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        result, metrics, scores, phases = _project(corpus, metadata)
        seconds = time.perf_counter() - started
    report = {"loops": len(result.loops), "counts": {k: v for k, v in sorted(result.counts.items()) if v},
              "seconds": round(seconds, 2),
              "seconds_by_phase": {name: round(value, 2) for name, value in phases.items()}}
    return report, metrics, result


def scale_run() -> dict:
    files, metadata = _pack()
    started = time.perf_counter()
    corpus, rows = _scale_corpus(files, metadata)
    generation_s = time.perf_counter() - started

    parallel, metrics, _, clusters = _parallel(corpus, rows)
    reference, reference_metrics, reference_result = _single_process(corpus, rows)
    same_loops = list(metrics.index) == [loop.loop_id for loop in reference_result.loops]
    numeric = [name for name in metrics.columns if name != "rhythm_hash"]
    same_metrics = same_loops and bool(
        np.array_equal(metrics[numeric].to_numpy(np.float64), reference_metrics[numeric].to_numpy(np.float64),
                       equal_nan=True)
        and (metrics["rhythm_hash"].to_numpy() == reference_metrics["rhythm_hash"].to_numpy()).all())
    same_near = [c.loop_ids for c in clusters] == [c.loop_ids for c in reference_result.near_duplicate_clusters]
    same_counts = all(reference_result.counts[name] == value for name, value in parallel["counts"].items())

    return {
        "files": len(corpus),
        "variants": [{"ticks_per_quarter": tpq, "tempo_factor": f, "velocity_offset": v, "delay_bars": d}
                     for tpq, f, v, d in VARIANTS],
        "generation_seconds": round(generation_s, 2),
        "midi_bytes": sum(len(data) for _, data in corpus),
        "seed_corpus_loops": SEED_CORPUS_LOOPS,
        "loops": parallel["loops"],
        "meets_corpus_size": parallel["loops"] >= SEED_CORPUS_LOOPS,
        "parallel": parallel,
        "loops_per_s": round(parallel["loops"] / parallel["seconds"], 1),
        "target_seconds": TARGET_SECONDS,
        "meets_target": parallel["seconds"] <= TARGET_SECONDS,
        "single_process_reference": {**reference, "meets_target": reference["seconds"] <= TARGET_SECONDS},
        "parallel_speedup": round(reference["seconds"] / parallel["seconds"], 2),
        "parallel_matches_run_stage1": {"loops": same_loops, "metrics": same_metrics, "near_duplicates": same_near,
                                        "counts": same_counts},
    }


def run() -> dict:
    return {"cpu_count": os.cpu_count(), "groove_pack": groove_pack(), "scale_run": scale_run()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
