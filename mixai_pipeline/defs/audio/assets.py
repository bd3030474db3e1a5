"""The audio pipeline, one daily-partitioned asset per stage: each runs its stage over the day's
registered jobs in a worker pool (``lib/pipeline/runner.py``) and shows what happened in the UI.
A job whose input is bad fails that stage with a reason (``jobs.status = 'failed'``); the rest go on."""

import base64
import os
import statistics
from collections import Counter

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
from mixai_pipeline.lib.pipeline import runner
from mixai_pipeline.resources import Database, ObjectStoreResource


class StageConfig(dg.Config):
    max_workers: int = Field(default=max(2, os.cpu_count() or 2), ge=1, le=64,
                             description="jobs processed in parallel")


def run_stage(context: dg.AssetExecutionContext, name: str, config: StageConfig, database: Database,
              object_store: ObjectStoreResource) -> runner.StageOutcome:
    """The stage over the partition's jobs (``lib/pipeline/runner.py``); infrastructure errors fail the run
    after every job had its turn, so a re-run only redoes what is missing."""
    outcome = runner.run_stage_for_day(
        database.get_engine(), object_store.get_store(), context.partition_key, name,
        max_workers=config.max_workers, actor=f"dagster:{name}", run_id=context.run.run_id,
        log=lambda level, message: getattr(context.log, level)(message))
    if outcome.errors:
        raise dg.Failure(f"{len(outcome.errors)} of {outcome.jobs} jobs hit an infrastructure error; "
                         "re-run the partition",
                         metadata={"errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in outcome.errors[:20]))})
    return outcome


def failures_md(failures: list[tuple[str, str]]) -> dg.MetadataValue:
    if not failures:
        return dg.MetadataValue.md("none")
    rows = [f"| {job} | {reason.replace('|', '/')} |" for job, reason in failures]
    return dg.MetadataValue.md("\n".join(["| job | reason |", "|---|---|", *rows]))


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"}, deps=[uploads])
def aligned_stems(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
                  object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Offset (and drift) of each vocal against its instrumental: GCC-PHAT with a peak-to-sidelobe
    confidence, an onset-envelope fallback with a beat-ambiguity guard, banded chroma DTW for drift,
    else "assume a shared start". One ``alignments`` row per job with every statistic."""
    outcome = run_stage(context, "aligned_stems", config, database, object_store)
    results, failures = outcome.results, outcome.failures
    return dg.MaterializeResult(metadata={
        "aligned": len(results), "failed": len(failures), "failures": failures_md(failures),
        "methods": dg.MetadataValue.json(dict(Counter(r.data["method"] for r in results))),
        "confidence": dg.MetadataValue.json(summary([r.data["confidence"] for r in results])),
        "offset_ms": dg.MetadataValue.json(summary([r.data["offset_ms"] for r in results])),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"},
          deps=[aligned_stems])
def mixes(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
          object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The job's preset vocal chain (high-pass, low-pass, de-esser, compressor, EQ bands, reverb) on the
    aligned vocal, summed with the instrumental by the preset's weights: ``derived/<job>/mix.wav``."""
    outcome = run_stage(context, "mixes", config, database, object_store)
    results, failures = outcome.results, outcome.failures
    return dg.MaterializeResult(metadata={
        "mixed": len(results), "failed": len(failures), "failures": failures_md(failures),
        "presets": dg.MetadataValue.json(dict(Counter(r.data["preset"] for r in results))),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"},
          deps=[mixes, dg.AssetKey("master_params")])
def masters(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
            object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The HQ master of each mix: loudness normalize (BS.1770) → compressor → limiter → shelf EQ with the
    parameters [low_shelf_db, high_shelf_db, comp_db, target_lufs] the served model gave (``master_params``),
    else the rules' estimate from the audio; true peak ≤ -1 dBTP. The rules' estimate is kept either way."""
    outcome = run_stage(context, "masters", config, database, object_store)
    results, failures = outcome.results, outcome.failures
    reports = [r.data["report"] for r in results]
    return dg.MaterializeResult(metadata={
        "mastered": len(results), "failed": len(failures), "failures": failures_md(failures),
        "params_source": dg.MetadataValue.json(dict(Counter(r.data["params_source"] for r in results))),
        "lufs_out": dg.MetadataValue.json(summary([rep.get("output_integrated_lufs") for rep in reports])),
        "true_peak_dbtp": dg.MetadataValue.json(summary([rep.get("output_true_peak_dbtp") for rep in reports])),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"}, deps=[mixes])
def previews(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
             object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """For inst, vocal and mix: the most representative 30–60 s as mono AAC 96 kbps, and its waveform
    (PNG and min/max peaks JSON from the PCM), each a ``vault_items`` row with the plan's retention."""
    outcome = run_stage(context, "previews", config, database, object_store)
    results, failures = outcome.results, outcome.failures
    metadata = {"jobs": len(results), "failed": len(failures), "failures": failures_md(failures),
                "objects": sum(len(r.objects) for r in results)}
    if results:  # one example waveform, as an image in the UI
        png = next(o.path for o in results[0].objects if o.path.endswith("mix.waveform.png"))
        data = object_store.get_store().get_bytes(png)
        metadata["example_waveform"] = dg.MetadataValue.md(
            f"![mix waveform](data:image/png;base64,{base64.b64encode(data).decode()})")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"}, deps=[mixes])
def features_store(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
                   object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """One float32 vector per clip kind (inst, vocal, mix) per job in ``features_store``: 64-band log-mel
    mean/std, RMS/ZCR/centroid/rolloff/flux mean/std, loudness/LRA/crest, plus named extras
    (layout ``feature_layouts`` v1, dimension names stored with the data), from one STFT per clip."""
    outcome = run_stage(context, "features_store", config, database, object_store)
    results, failures = outcome.results, outcome.failures
    return dg.MaterializeResult(metadata={
        "jobs": len(results), "vectors": 3 * len(results), "failed": len(failures), "failures": failures_md(failures),
        "feature_version": FEATURE_VERSION, "n_dim": len(DIM_NAMES),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"},
          deps=[features_store, masters, aligned_stems])
def labels(context: dg.AssetExecutionContext, database: Database) -> dg.MaterializeResult:
    """Pseudo-labels per job (quality ``auto``): ``master_reg`` = the master chain's four parameters,
    ``preset_cls`` = a preset by documented rules within the plan, ``align_conf`` = ok/warn/fail."""
    counts = runner.label_day(database.get_engine(), context.partition_key)
    return dg.MaterializeResult(metadata={
        "jobs_labelled": counts["jobs"]["labelled"], "labels": 3 * counts["jobs"]["labelled"],
        "preset_cls": dg.MetadataValue.json(dict(counts["preset_cls"])),
        "align_conf": dg.MetadataValue.json(dict(counts["align_conf"])),
    })
