"""The MIDI stages over one pack, reading and writing the object store: what each MIDI asset does, minus
Dagster. Working tables live under ``midi/derived/<pack>/`` (overwritten by a re-run: idempotent);
the published dataset goes to ``midi/datasets/<pack>/<PIPELINE_VERSION>/<digest>/`` and is never
rewritten in place, so a consumer holding a prefix always reads the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from mixai_pipeline.lib.midi import frames, packs
from mixai_pipeline.lib.midi.labels import labels_frame
from mixai_pipeline.lib.midi.loop import Loop
from mixai_pipeline.lib.midi.metrics import (
    CANONICAL_EVENTS_SCHEMA,
    LOOP_METRICS_SCHEMA,
    canonical_events_frame,
    metrics_frame,
)
from mixai_pipeline.lib.midi.pairs import genre_transfer_pairs, similarity_pairs
from mixai_pipeline.lib.midi.scores import AXES, ScoreConfig, score_frame
from mixai_pipeline.lib.midi.stage1 import Stage1Result, run_stage1
from mixai_pipeline.lib.storage.object_store import ObjectStore

PIPELINE_VERSION = "midi-v1"
DERIVED_PREFIX = "midi/derived/"
DATASETS_PREFIX = "midi/datasets/"


def derived_key(pack_id: str, name: str) -> str:
    return f"{DERIVED_PREFIX}{packs.check_pack_id(pack_id)}/{name}"


def _put_frame(store: ObjectStore, key: str, frame: pd.DataFrame) -> None:
    store.put_bytes(key, frames.to_parquet_bytes(frame), "application/vnd.apache.parquet")


def _get_frame(store: ObjectStore, key: str) -> pd.DataFrame:
    return frames.from_parquet_bytes(store.get_bytes(key))


# ------------------------------------------------------------------------------------------------ stage 1

@dataclass(frozen=True)
class Stage1Settings:
    bars: tuple[int, ...] = (2, 4)
    pitch_map: str = "roland_td11"
    near_duplicate_threshold: float = 0.95
    max_file_bytes: int = 1_000_000


def stage1_for_pack(store: ObjectStore, engine: Engine, pack_id: str, settings: Stage1Settings) -> Stage1Result:
    """Stage 1 over the pack's registered files; the kept loops go to ``loops.parquet`` + ``notes.parquet``,
    every decision to ``stage1_report.json``, each file's verdict to ``midi_files``."""
    listing = packs.list_packs(store).get(pack_id)
    if listing is None:
        raise packs.PackError(f"pack {pack_id!r} is not in the object store")
    metadata, _ = packs.read_metadata(store, listing)
    with engine.connect() as conn:
        paths = packs.registered_files(conn, pack_id)
    prefix = packs.pack_prefix(pack_id)
    result = run_stage1(((path, store.get_bytes(prefix + path)) for path in paths), metadata,
                        bars=settings.bars, pitch_map=settings.pitch_map, max_bytes=settings.max_file_bytes,
                        near_duplicate_threshold=settings.near_duplicate_threshold)
    loop_table, notes = frames.loops_to_frames(result.loops)
    cluster_of = {loop_id: c.cluster_id for c in result.near_duplicate_clusters for loop_id in c.loop_ids}
    loop_table["near_duplicate_cluster"] = [cluster_of.get(i) for i in loop_table["loop_id"]]
    _put_frame(store, derived_key(pack_id, "loops.parquet"), loop_table)
    _put_frame(store, derived_key(pack_id, "notes.parquet"), notes)
    report = {
        "pack_id": pack_id, "settings": settings.__dict__ | {"bars": list(settings.bars)},
        "files_in": result.files_in, "files_accepted": result.files_accepted,
        "windows_sliced": result.windows_sliced, "loops_out": result.loops_out, "counts": dict(result.counts),
        "rejected_files": [list(r) for r in result.rejected_files],
        "rejected_loops": [list(r) for r in result.rejected_loops],
        "exact_duplicates": [list(d) for d in result.exact_duplicates],
        "near_duplicate_clusters": [{"cluster_id": c.cluster_id, "loop_ids": list(c.loop_ids)}
                                    for c in result.near_duplicate_clusters],
        "seconds": result.seconds,
    }
    store.put_bytes(derived_key(pack_id, "stage1_report.json"), json.dumps(report, default=str).encode(),
                    "application/json")
    loops_per_file = Counter(loop.source.get("path", "") for loop in result.loops)
    with engine.begin() as conn:
        packs.record_stage1_verdicts(conn, pack_id, result.rejected_files, loops_per_file)
    return result


def load_loops(store: ObjectStore, pack_id: str) -> tuple[list[Loop], pd.DataFrame]:
    """The pack's kept loops (and their table, with the near-duplicate cluster of each)."""
    loop_table = _get_frame(store, derived_key(pack_id, "loops.parquet"))
    return frames.frames_to_loops(loop_table, _get_frame(store, derived_key(pack_id, "notes.parquet"))), loop_table


# ------------------------------------------------------------------------------------------------ stage 2

def metrics_for_pack(store: ObjectStore, pack_id: str, *, pitch_map: str,
                     collision_tolerance_ticks: float) -> pd.DataFrame:
    """Every Stage 2 metric per loop, validated, to ``metrics.parquet`` (index loop_id)."""
    loops, _ = load_loops(store, pack_id)
    metrics = LOOP_METRICS_SCHEMA.validate(metrics_frame(loops, pitch_map=pitch_map,
                                                         collision_tolerance_ticks=collision_tolerance_ticks))
    _put_frame(store, derived_key(pack_id, "metrics.parquet"), metrics.reset_index())
    return metrics


def load_metrics(store: ObjectStore, pack_id: str) -> pd.DataFrame:
    return _get_frame(store, derived_key(pack_id, "metrics.parquet")).set_index("loop_id")


def scores_for_pack(store: ObjectStore, pack_id: str, config: ScoreConfig) -> pd.DataFrame:
    """The five axes, total, pass/fail and failure reason per loop, with the weights and threshold used,
    to ``scores.parquet``."""
    scores = score_frame(load_metrics(store, pack_id), config)
    scores["pipeline_version"] = PIPELINE_VERSION
    _put_frame(store, derived_key(pack_id, "scores.parquet"), scores.reset_index())
    return scores


def load_scores(store: ObjectStore, pack_id: str) -> pd.DataFrame:
    return _get_frame(store, derived_key(pack_id, "scores.parquet")).set_index("loop_id")


def distribution(values: pd.Series) -> dict[str, float | None]:
    """min, p50, p90, mean, max (None when there is nothing to summarise)."""
    finite = values.astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    if finite.empty:
        return dict.fromkeys(("min", "p50", "p90", "mean", "max"))
    return {"min": round(float(finite.min()), 3), "p50": round(float(finite.quantile(0.5)), 3),
            "p90": round(float(finite.quantile(0.9)), 3), "mean": round(float(finite.mean()), 3),
            "max": round(float(finite.max()), 3)}


def score_distributions(scores: pd.DataFrame) -> dict[str, dict]:
    return {column: distribution(scores[column]) for column in (*AXES, "total")}


# --------------------------------------------------------------------------------------- labels and pairs

def labels_for_pack(store: ObjectStore, pack_id: str) -> pd.DataFrame:
    """Tempo bucket, meter, genre/sub-genre, key, swing phase, style tags and the heuristic emotion per
    loop, to ``labels.parquet``."""
    loops, _ = load_loops(store, pack_id)
    labels = labels_frame(loops, load_metrics(store, pack_id))
    _put_frame(store, derived_key(pack_id, "labels.parquet"), labels.reset_index())
    return labels


def load_labels(store: ObjectStore, pack_id: str) -> pd.DataFrame:
    return _get_frame(store, derived_key(pack_id, "labels.parquet")).set_index("loop_id")


def pairs_for_pack(store: ObjectStore, pack_id: str, *, k: int, threshold: float,
                   transfers: list[tuple[str, str]] = ()) -> dict[str, pd.DataFrame]:
    """Top-k similar loops per loop (z-scored metrics, cosine) to ``pairs.parquet``, and for each
    (genre A, genre B) in ``transfers`` the nearest B loops of every A loop to
    ``pairs_<A>_to_<B>.parquet``."""
    metrics = load_metrics(store, pack_id)
    out = {"pairs": similarity_pairs(metrics, k=k, threshold=threshold)}
    if transfers:
        labels = load_labels(store, pack_id)
        for source, target in transfers:
            out[f"pairs_{source}_to_{target}"] = genre_transfer_pairs(metrics, labels, source, target, k=k,
                                                                      threshold=threshold)
    for name, table in out.items():
        _put_frame(store, derived_key(pack_id, f"{name}.parquet"), table)
    return out


def load_pairs(store: ObjectStore, pack_id: str) -> pd.DataFrame:
    return _get_frame(store, derived_key(pack_id, "pairs.parquet"))


# ------------------------------------------------------------------------------------------------ dataset

def data_digest(loop_ids: pd.Index | list[str], *tables: pd.DataFrame) -> str:
    """sha256 over the sorted loop ids and the content of the tables (so any changed value changes it)."""
    digest = hashlib.sha256()
    for loop_id in sorted(loop_ids):
        digest.update(loop_id.encode() + b"\n")
    for table in tables:
        digest.update(pd.util.hash_pandas_object(table.sort_index(axis=1), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def loop_summary(loop_table: pd.DataFrame, metrics: pd.DataFrame, scores: pd.DataFrame,
                 labels: pd.DataFrame | None, digest: str) -> pd.DataFrame:
    """One row per loop: ids, source, genre, bpm, meter, bars, tpb, ``metrics.<name>``, the axes, total,
    passed, failure_reason, pipeline version and data digest (reference/loop_metrics.md, Outputs)."""
    source = pd.DataFrame([json.loads(s) for s in loop_table["source"]], index=loop_table["loop_id"])
    summary = pd.DataFrame(index=pd.Index(loop_table["loop_id"], name="loop_id"))
    summary["file_digest"] = source.get("file_digest")
    summary["source_path"] = source.get("path")
    summary["start_bar"] = source.get("start_bar")
    summary["style"] = source.get("style")
    if labels is not None:
        for column in ("genre", "sub_genre", "tempo_bucket"):
            if column in labels:
                summary[column] = labels[column]
    summary["bpm"] = [t[0] if len(t) else None for t in loop_table["tempos_bpm"]]
    summary["time_signature"] = (loop_table["ts_numerator"].astype(str) + "/"
                                 + loop_table["ts_denominator"].astype(str)).to_numpy()
    tpb = loop_table["ticks_per_beat"].to_numpy()
    ticks_per_bar = tpb * 4 * loop_table["ts_numerator"].to_numpy() // loop_table["ts_denominator"].to_numpy()
    summary["bar_count"] = (loop_table["length_ticks"].to_numpy() // ticks_per_bar)
    summary["ticks_per_beat"] = tpb
    summary["near_duplicate_cluster"] = loop_table["near_duplicate_cluster"].to_numpy()
    summary = summary.join(metrics.add_prefix("metrics."))
    summary = summary.join(scores[[*AXES, "total", "passed", "failure_reason"]])
    summary["pipeline_version"] = PIPELINE_VERSION
    summary["data_digest"] = digest
    return summary


@dataclass(frozen=True)
class PublishedDataset:
    prefix: str
    digest: str
    files: dict[str, int]  # name → bytes
    summary: dict
    already_published: bool = False


def publish_dataset(store: ObjectStore, pack_id: str, *, pitch_map: str,
                    labels: pd.DataFrame | None = None) -> PublishedDataset:
    """canonical_events.parquet, loop_summary.csv/.parquet, metrics_score.jsonl, stage2_summary.json
    (and labels.parquet when given) under a prefix named by the pipeline version and the data digest."""
    loops, loop_table = load_loops(store, pack_id)
    metrics, scores = load_metrics(store, pack_id), load_scores(store, pack_id)
    report = json.loads(store.get_bytes(derived_key(pack_id, "stage1_report.json")))
    tables = [metrics.reset_index(), scores.reset_index()] + ([] if labels is None else [labels.reset_index()])
    digest = data_digest(list(metrics.index), *tables)
    prefix = f"{DATASETS_PREFIX}{packs.check_pack_id(pack_id)}/{PIPELINE_VERSION}/{digest[:16]}/"
    if store.exists(prefix + "stage2_summary.json"):  # published before: same data, same bytes
        files = {info.key[len(prefix):]: info.size for info in store.list(prefix)}
        return PublishedDataset(prefix, digest, files, json.loads(store.get_bytes(prefix + "stage2_summary.json")),
                                already_published=True)
    events = CANONICAL_EVENTS_SCHEMA.validate(canonical_events_frame(loops, metrics, pitch_map=pitch_map))
    summary_table = loop_summary(loop_table, metrics, scores, labels, digest)
    created_at = datetime.now(timezone.utc).isoformat()
    weights = json.loads(scores["weights"].iloc[0]) if len(scores) else None
    threshold = float(scores["threshold"].iloc[0]) if len(scores) else None
    jsonl = "".join(json.dumps({"loop_id": loop_id, "score": round(float(row.total), 4),
                                "axes": {axis: round(float(getattr(row, axis)), 4) for axis in AXES},
                                "threshold": threshold, "weights": weights, "created_at": created_at}) + "\n"
                    for loop_id, row in zip(scores.index, scores.itertuples(index=False), strict=True))
    stage2_summary = {
        "pack_id": pack_id, "pipeline_version": PIPELINE_VERSION, "data_digest": digest, "created_at": created_at,
        "counts": {"files_in": report["files_in"], "files_accepted": report["files_accepted"],
                   "windows_sliced": report["windows_sliced"], "loops_in_stage2": int(len(scores)),
                   "passed": int(scores["passed"].sum()), "failed": int((~scores["passed"]).sum())},
        "exclusions": report["counts"],
        "failure_reasons": {k: int(v) for k, v in scores["failure_reason"].value_counts().items()},
        "weights": weights, "threshold": threshold,
        "score_distribution": score_distributions(scores),
    }
    outputs = {
        "canonical_events.parquet": frames.to_parquet_bytes(events),
        "loop_summary.parquet": frames.to_parquet_bytes(summary_table.reset_index()),
        "loop_summary.csv": summary_table.reset_index().to_csv(index=False).encode(),
        "metrics_score.jsonl": jsonl.encode(),
        "stage2_summary.json": json.dumps(stage2_summary, indent=2).encode(),
    }
    if labels is not None:
        outputs["labels.parquet"] = frames.to_parquet_bytes(labels.reset_index())
    for name, data in sorted(outputs.items(), key=lambda item: item[0] == "stage2_summary.json"):
        store.put_bytes(prefix + name, data)  # the summary last: its presence means the dataset is whole
    return PublishedDataset(prefix, digest, {name: len(data) for name, data in outputs.items()}, stage2_summary)
