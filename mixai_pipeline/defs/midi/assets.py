"""MIDI loop datasets (seed 002), one pack per partition: registration → Stage 1 (parse, slice, filter,
dedupe) → Stage 2 metrics and scores → labels → similarity pairs → the published dataset. The work is in
``lib/midi/pipeline.py``; these assets configure it and show what happened."""

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.midi.partitions import midi_pack_partitions
from mixai_pipeline.lib.midi import packs, pipeline
from mixai_pipeline.lib.midi.categories import PITCH_MAPS
from mixai_pipeline.lib.midi.metrics import DEFAULT_COLLISION_TOLERANCE_TICKS
from mixai_pipeline.lib.midi.scores import AXES, ScoreConfig
from mixai_pipeline.resources import Database, ObjectStoreResource

GROUP = "midi"
PITCH_MAP_HELP = (f"drum-category table: one of {sorted(PITCH_MAPS)}; roland_td11 is General MIDI plus the "
                  "TD-11 edge pitches (22/26 hi-hat edges, 58 tom rim) the Groove MIDI pack uses")


def _md_table(header: tuple[str, ...], rows: list[tuple]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("none")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"postgres"})
def midi_packs(context: dg.AssetExecutionContext, database: Database,
               object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The pack's files registered in ``midi_files``: path, size, sha256, md5 and the pack metadata row
    (style, bpm, beat type, meter, drummer, split); files that are not MIDI by name are rejected here."""
    store = object_store.get_store()
    listing = packs.list_packs(store).get(context.partition_key)
    if listing is None or not listing.complete:
        raise dg.Failure(f"pack {context.partition_key!r} has no {packs.METADATA_NAME} under "
                         f"{packs.PACKS_PREFIX}{context.partition_key}/ (not imported, or still uploading)")
    try:
        report = packs.register_pack(store, database.get_engine(), listing, actor="dagster:midi_packs",
                                     run_id=context.run.run_id)
    except packs.PackError as err:
        raise dg.Failure(str(err)) from None
    return dg.MaterializeResult(metadata={
        "files": report.files, "bytes": report.bytes, "metadata_rows": report.metadata_rows,
        "rejected": len(report.rejected), "rejects": _md_table(("file", "code", "reason"), report.rejected[:50]),
    })


class Stage1Config(dg.Config):
    bars: list[int] = Field(default=[2, 4], description="loop lengths to cut, in bars (bar-aligned windows)")
    pitch_map: str = Field(default="roland_td11", description=PITCH_MAP_HELP)
    near_duplicate_threshold: float = Field(
        default=0.95, gt=0, le=1, description="cosine similarity of canonical grids reported as near-duplicate")
    max_file_kib: int = Field(default=1000, gt=0, description="larger files are rejected (the seed's 1 MB)")


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"python", "parquet"}, deps=[midi_packs])
def midi_loops(context: dg.AssetExecutionContext, config: Stage1Config, database: Database,
               object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Stage 1: parse (symusic), slice into bar-aligned 2- and 4-bar loops, filter (< 16 notes, no layered
    hits), drop exact duplicates on a tempo-independent 16th grid and cluster near-duplicates (cosine).
    Every rejected file and loop keeps its reason (``midi_files`` and ``stage1_report.json``)."""
    settings = pipeline.Stage1Settings(bars=tuple(config.bars), pitch_map=config.pitch_map,
                                       near_duplicate_threshold=config.near_duplicate_threshold,
                                       max_file_bytes=config.max_file_kib * 1000)
    try:
        result = pipeline.stage1_for_pack(object_store.get_store(), database.get_engine(), context.partition_key,
                                          settings)
    except (packs.PackError, ValueError) as err:
        raise dg.Failure(str(err)) from None
    context.log.info(f"{context.partition_key}: {result.files_in} files → {result.windows_sliced} windows → "
                     f"{result.loops_out} loops")
    return dg.MaterializeResult(metadata={
        "files_in": result.files_in, "files_accepted": result.files_accepted,
        "windows_sliced": result.windows_sliced, "loops_out": result.loops_out,
        "exact_duplicates": len(result.exact_duplicates),
        "near_duplicate_clusters": len(result.near_duplicate_clusters),
        "loops_in_near_duplicate_clusters": result.counts["near_duplicate_loops"],
        "exclusions": dg.MetadataValue.json({k: v for k, v in result.counts.items() if v}),
        "rejected_files": _md_table(("file", "reason", "message"), result.rejected_files[:50]),
        "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in result.seconds.items()}),
    })


class MetricsConfig(dg.Config):
    pitch_map: str = Field(default="roland_td11", description=PITCH_MAP_HELP)
    collision_tolerance_ticks: float = Field(default=DEFAULT_COLLISION_TOLERANCE_TICKS, ge=0,
                                             description="drum collision window at 480 ticks per beat (scaled)")


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"python", "parquet"}, deps=[midi_loops])
def loop_metrics(context: dg.AssetExecutionContext, config: MetricsConfig,
                 object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Stage 2 groove metrics per loop (reference/loop_metrics.md): swing, ghost/accent rates, velocity
    statistics, microtiming (base-step and 16th grids), densities, layering, hats, repetition, collisions,
    role separation, rhythm fingerprint, tempo stability; validated by a pandera schema."""
    metrics = pipeline.metrics_for_pack(object_store.get_store(), context.partition_key, pitch_map=config.pitch_map,
                                        collision_tolerance_ticks=config.collision_tolerance_ticks)
    medians = {name: round(float(metrics[name].median()), 3)
               for name in ("swing_ratio", "microtiming_rms_ms", "microtiming_rms_16th_ms", "ghost_rate",
                            "syncopation_rate", "note_density_per_bar") if name in metrics}
    return dg.MaterializeResult(metadata={"loops": len(metrics), "metrics": len(metrics.columns),
                                          "medians": dg.MetadataValue.json(medians)})


class ScoreSettings(dg.Config):
    weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(AXES, 1.0),
                                      description=f"weight per axis {list(AXES)} (the seed: all equal)")
    pass_threshold: float = Field(default=70.0, ge=0, le=100, description="total (0-100) a loop needs to pass")


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"python", "parquet"}, deps=[loop_metrics])
def loop_scores(context: dg.AssetExecutionContext, config: ScoreSettings,
                object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The five axis scores (timing, velocity, groove/harmony, drum cohesion, structure), the weighted
    total, pass/fail and the weakest axis as the failure reason; weights and threshold kept per row."""
    try:
        score_config = ScoreConfig(weights=config.weights, pass_threshold=config.pass_threshold)
    except ValueError as err:
        raise dg.Failure(f"score configuration: {err}") from None
    scores = pipeline.scores_for_pack(object_store.get_store(), context.partition_key, score_config)
    distributions = pipeline.score_distributions(scores)
    return dg.MaterializeResult(metadata={
        "loops": len(scores), "passed": int(scores["passed"].sum()),
        "pass_rate": round(float(scores["passed"].mean()), 4) if len(scores) else 0.0,
        "weights": dg.MetadataValue.json(dict(score_config.weights)), "threshold": score_config.pass_threshold,
        "distribution": _md_table(("axis", "min", "p50", "p90", "mean", "max"),
                                  [(axis, *d.values()) for axis, d in distributions.items()]),
        "failure_reasons": dg.MetadataValue.json(
            {k: int(v) for k, v in scores["failure_reason"].value_counts().items()}),
    })


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"python", "parquet"}, deps=[loop_metrics])
def loop_labels(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Labels per loop (seed 002 §2): tempo bucket, meter, genre and sub-genre (two-level taxonomy), key
    (Krumhansl-Schmuckler, pitched material only), swing phase, busy/funky/laid-back style tags, and
    valence/arousal from a documented heuristic (``emotion_method`` heuristic-v1, with a confidence)."""
    labels = pipeline.labels_for_pack(object_store.get_store(), context.partition_key)

    def counts(column: str) -> dict[str, int]:
        if column not in labels:
            return {}
        return {str(k): int(v) for k, v in labels[column].value_counts(dropna=False).items()}

    return dg.MaterializeResult(metadata={
        "loops": len(labels),
        "genres": dg.MetadataValue.json(counts("genre")),
        "tempo_buckets": dg.MetadataValue.json(counts("tempo_bucket")),
        "swing_phases": dg.MetadataValue.json(counts("swing_phase")),
        "emotions": dg.MetadataValue.json(counts("emotion")),
    })


class PairsConfig(dg.Config):
    k: int = Field(default=5, ge=1, le=100, description="nearest loops kept per loop")
    threshold: float = Field(default=0.4, ge=-1, le=1, description="minimum cosine similarity")
    genre_transfers: list[str] = Field(default_factory=list,
                                       description='"genre A -> genre B" queries, e.g. "jazz -> rock"')


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"python", "parquet"},
          deps=[loop_metrics, loop_labels])
def loop_pairs(context: dg.AssetExecutionContext, config: PairsConfig,
               object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Similar loops: metrics z-scored per column, rows L2-normalised, cosine similarity; the top-k others
    of each loop at or above the threshold (never itself), plus optional genre A → genre B queries."""
    transfers = []
    for query in config.genre_transfers:
        source, arrow, target = query.partition("->")
        if not arrow or not source.strip() or not target.strip():
            raise dg.Failure(f'genre transfer {query!r}: write it as "genre A -> genre B"')
        transfers.append((source.strip(), target.strip()))
    try:
        tables = pipeline.pairs_for_pack(object_store.get_store(), context.partition_key, k=config.k,
                                         threshold=config.threshold, transfers=transfers)
    except ValueError as err:
        raise dg.Failure(str(err)) from None
    pairs = tables["pairs"]
    return dg.MaterializeResult(metadata={
        "pairs": len(pairs), "loops_with_a_pair": int(pairs["loop_id"].nunique()) if len(pairs) else 0,
        "similarity": dg.MetadataValue.json(pipeline.distribution(pairs["similarity"])),
        **{name: len(table) for name, table in tables.items() if name != "pairs"},
    })


@dg.asset(partitions_def=midi_pack_partitions, group_name=GROUP, kinds={"parquet", "csv"},
          deps=[loop_scores, loop_labels])
def loop_datasets(context: dg.AssetExecutionContext, config: MetricsConfig,
                  object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The published dataset under ``midi/datasets/<pack>/<pipeline version>/<digest>/``:
    canonical_events.parquet, loop_summary.csv + .parquet, metrics_score.jsonl, stage2_summary.json and
    labels.parquet, validated by pandera schemas; an identical dataset is never rewritten."""
    store = object_store.get_store()
    dataset = pipeline.publish_dataset(store, context.partition_key, pitch_map=config.pitch_map,
                                       labels=pipeline.load_labels(store, context.partition_key))
    counts = dataset.summary["counts"]
    return dg.MaterializeResult(metadata={
        "prefix": dataset.prefix,
        "data_digest": dataset.digest, "already_published": dataset.already_published,
        **{k: int(v) for k, v in counts.items()},
        "files": dg.MetadataValue.json(dataset.files),
        "score_distribution": _md_table(("axis", "min", "p50", "p90", "mean", "max"),
                                        [(axis, *d.values()) for axis, d in
                                         dataset.summary["score_distribution"].items()]),
    })
