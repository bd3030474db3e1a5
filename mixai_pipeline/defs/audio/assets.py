"""The audio pipeline, one daily-partitioned asset per stage: each takes the day's registered jobs,
runs the stage's per-job work (``lib/pipeline/stages.py``) in a worker pool and records the results.
A job whose input is bad fails that stage with a reason (``jobs.status = 'failed'``); the rest go on."""

import os
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from pydantic import Field

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.lib.pipeline import records, stages
from mixai_pipeline.resources import Database, ObjectStoreResource


class StageConfig(dg.Config):
    max_workers: int = Field(default=max(2, os.cpu_count() or 2), ge=1, le=64,
                             description="jobs processed in parallel")


def run_stage(context: dg.AssetExecutionContext, name: str, config: StageConfig, database: Database,
              object_store: ObjectStoreResource, work: Callable, record: Callable, needs: str | None = None):
    """Run ``work(store, job)`` for every job of the partition; ``record(conn, result)`` each success."""
    day, store, engine = context.partition_key, object_store.get_store(), database.get_engine()
    with engine.connect() as conn:
        jobs = records.day_jobs(conn, day, needs=needs)
    context.log.info(f"{name} {day}: {len(jobs)} jobs")
    results, failures, errors = [], [], []

    def handle(job):
        try:
            result = work(store, job)
        except stages.StageFailure as failure:
            with engine.begin() as conn:
                records.record_failure(conn, job.job_id, name, str(failure), actor=f"dagster:{name}",
                                       run_id=context.run.run_id)
            return job, None, str(failure)
        with engine.begin() as conn:
            records.mark_processing(conn, job.job_id)
            record(conn, result)
            records.record_objects(conn, job.job_id, result.objects, store)
        return job, result, None

    with ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=name) as pool:
        for done, future in enumerate([pool.submit(handle, job) for job in jobs], start=1):
            try:
                job, result, failure = future.result()
            except Exception as err:  # infrastructure: reported, the run fails after the others finished
                errors.append(f"{type(err).__name__}: {err}")
                context.log.error(f"{name}: {type(err).__name__}: {err}")
                continue
            if failure:
                failures.append((job.job_id, failure))
                context.log.warning(f"{name}: job {job.job_id} failed: {failure}")
            else:
                results.append(result)
            if done % 10 == 0 or done == len(jobs):
                context.log.info(f"{name} {day}: {done}/{len(jobs)} jobs")
    if errors:
        raise dg.Failure(f"{len(errors)} of {len(jobs)} jobs hit an infrastructure error; re-run the partition",
                         metadata={"errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in errors[:20]))})
    return results, failures


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
    results, failures = run_stage(context, "aligned_stems", config, database, object_store, stages.align_stage,
                                  lambda conn, r: records.record_alignment(conn, r.job_id, r.data))
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
    results, failures = run_stage(
        context, "mixes", config, database, object_store, stages.mix_stage,
        lambda conn, r: records.record_mix(conn, r.job_id, r.data, r.objects[0].path), needs="aligned_stems")
    return dg.MaterializeResult(metadata={
        "mixed": len(results), "failed": len(failures), "failures": failures_md(failures),
        "presets": dg.MetadataValue.json(dict(Counter(r.data["preset"] for r in results))),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"}, deps=[mixes])
def masters(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
            object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """The HQ master of each mix: loudness normalize (BS.1770) → compressor → limiter → shelf EQ, with
    the rule-based parameters [low_shelf_db, high_shelf_db, comp_db, target_lufs]; true peak ≤ -1 dBTP."""
    results, failures = run_stage(
        context, "masters", config, database, object_store, stages.master_stage,
        lambda conn, r: records.record_master(conn, r.job_id, r.data, r.objects[0].path), needs="mixes")
    reports = [r.data["report"] for r in results]
    return dg.MaterializeResult(metadata={
        "mastered": len(results), "failed": len(failures), "failures": failures_md(failures),
        "lufs_out": dg.MetadataValue.json(summary([rep.get("output_integrated_lufs") for rep in reports])),
        "true_peak_dbtp": dg.MetadataValue.json(summary([rep.get("output_true_peak_dbtp") for rep in reports])),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"}, deps=[mixes])
def previews(context: dg.AssetExecutionContext, config: StageConfig, database: Database,
             object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """For inst, vocal and mix: the most representative 30–60 s as mono AAC 96 kbps, and its waveform
    (PNG and min/max peaks JSON from the PCM), each a ``vault_items`` row with the plan's retention."""
    results, failures = run_stage(context, "previews", config, database, object_store, stages.preview_stage,
                                  lambda conn, r: None, needs="mixes")
    metadata = {"jobs": len(results), "failed": len(failures), "failures": failures_md(failures),
                "objects": sum(len(r.objects) for r in results)}
    if results:  # one example waveform, as an image in the UI
        png = next(o.path for o in results[0].objects if o.path.endswith("mix.waveform.png"))
        import base64

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
    from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION

    results, failures = run_stage(
        context, "features_store", config, database, object_store, stages.features_stage,
        lambda conn, r: records.record_features(conn, r.job_id, r.data, DIM_NAMES), needs="mixes")
    return dg.MaterializeResult(metadata={
        "jobs": len(results), "vectors": 3 * len(results), "failed": len(failures), "failures": failures_md(failures),
        "feature_version": FEATURE_VERSION, "n_dim": len(DIM_NAMES),
    })


@dg.asset(partitions_def=daily_upload_partitions, group_name="audio", kinds={"python", "postgres"},
          deps=[features_store, masters, aligned_stems])
def labels(context: dg.AssetExecutionContext, database: Database) -> dg.MaterializeResult:
    """Pseudo-labels per job (quality ``auto``): ``master_reg`` = the master chain's four parameters,
    ``preset_cls`` = a preset by documented rules within the plan, ``align_conf`` = ok/warn/fail."""
    from mixai_pipeline.lib.features.extract import FEATURE_VERSION
    from mixai_pipeline.lib.pipeline.labels import align_conf_label, preset_label

    counts: dict[str, dict[str, int]] = {"preset_cls": {}, "align_conf": {}}
    with database.get_engine().begin() as conn:
        inputs = records.day_label_inputs(conn, context.partition_key, FEATURE_VERSION)
        for row in inputs:
            records.record_label(conn, row["job_id"], "master_reg", y_reg=list(row["master_params"]),
                                 details={"source": "rule-based master chain"})
            preset, why = preset_label(row["plan"], row["inst_vec"], row["vocal_vec"], row["bpm"])
            records.record_label(conn, row["job_id"], "preset_cls", y_cls=preset, details=why)
            conf = align_conf_label(row)
            records.record_label(conn, row["job_id"], "align_conf", y_cls=conf,
                                 details={"confidence": row["confidence"], "method": row["method"]})
            records.mark_done(conn, row["job_id"])
            counts["preset_cls"][preset] = counts["preset_cls"].get(preset, 0) + 1
            counts["align_conf"][conf] = counts["align_conf"].get(conf, 0) + 1
    return dg.MaterializeResult(metadata={
        "jobs_labelled": len(inputs), "labels": 3 * len(inputs),
        "preset_cls": dg.MetadataValue.json(counts["preset_cls"]),
        "align_conf": dg.MetadataValue.json(counts["align_conf"]),
    })
