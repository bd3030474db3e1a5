"""One audio stage over one day's jobs, in a worker pool: everything an audio asset does except
Dagster's part (config, logging, metadata). The benchmark runs the same functions without Dagster to
measure what the orchestration costs.

A job whose input is bad fails that stage with a reason (``jobs.status = 'failed'``) and the others go
on: a StageFailure, or a ValueError/ArithmeticError the science raises on that job's data. Anything else
(database, store, a bug) is collected and reported after the other jobs finished, and fails the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
from mixai_pipeline.lib.ingestion.registration import register_day
from mixai_pipeline.lib.pipeline import records, stages
from mixai_pipeline.lib.pipeline.labels import align_conf_label, preset_label


@dataclass(frozen=True)
class Stage:
    work: Callable[[object, stages.JobInput], stages.StageResult]
    record: Callable[[Connection, stages.StageResult], None]
    needs: str | None = None  # the stage whose row a job must have


STAGES: dict[str, Stage] = {
    "aligned_stems": Stage(stages.align_stage, lambda conn, r: records.record_alignment(conn, r.job_id, r.data)),
    "mixes": Stage(stages.mix_stage, lambda conn, r: records.record_mix(conn, r.job_id, r.data, r.objects[0].path),
                   needs="aligned_stems"),
    "masters": Stage(stages.master_stage,
                     lambda conn, r: records.record_master(conn, r.job_id, r.data, r.objects[0].path), needs="mixes"),
    "previews": Stage(stages.preview_stage, lambda conn, r: None, needs="mixes"),
    "features_store": Stage(stages.features_stage,
                            lambda conn, r: records.record_features(conn, r.job_id, r.data, DIM_NAMES), needs="mixes"),
}


@dataclass
class StageOutcome:
    jobs: int = 0
    results: list[stages.StageResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job_id, reason): bad input
    errors: list[str] = field(default_factory=list)  # infrastructure errors


def run_stage_for_day(engine: Engine, store, day: str, name: str, *, max_workers: int, actor: str,
                      run_id: str | None = None, log: Callable[[str, str], None] | None = None) -> StageOutcome:
    """Run stage ``name`` for every job of ``day`` that is ready for it; ``log(level, message)`` reports
    progress every 10 jobs, failures and errors."""
    stage = STAGES[name]
    log = log or (lambda level, message: None)
    with engine.connect() as conn:
        jobs = records.day_jobs(conn, day, needs=stage.needs)
    outcome = StageOutcome(jobs=len(jobs))
    log("info", f"{name} {day}: {len(jobs)} jobs")

    def handle(job: stages.JobInput):
        try:
            result = stage.work(store, job)
        except stages.StageFailure as failure:
            reason = str(failure)
        except (ValueError, ArithmeticError) as err:  # the science refused this job's data: fail the job only
            reason = f"could not be processed ({type(err).__name__}: {err})"
        else:
            reason = None
        if reason is not None:
            with engine.begin() as conn:
                records.record_failure(conn, job.job_id, name, reason, actor=actor, run_id=run_id)
            return job, None, reason
        with engine.begin() as conn:
            records.mark_processing(conn, job.job_id)
            stage.record(conn, result)
            records.record_objects(conn, job.job_id, result.objects, store)
        return job, result, None

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name) as pool:
        for done, future in enumerate([pool.submit(handle, job) for job in jobs], start=1):
            try:
                job, result, failure = future.result()
            except Exception as err:  # infrastructure: reported once the others finished
                outcome.errors.append(f"{type(err).__name__}: {err}")
                log("error", f"{name}: {type(err).__name__}: {err}")
                continue
            if failure:
                outcome.failures.append((job.job_id, failure))
                log("warning", f"{name}: job {job.job_id} failed: {failure}")
            else:
                outcome.results.append(result)
            if done % 10 == 0 or done == len(jobs):
                log("info", f"{name} {day}: {done}/{len(jobs)} jobs")
    return outcome


def label_day(engine: Engine, day: str) -> dict[str, Counter]:
    """Pseudo-labels (quality ``auto``) for every job of the day with features, master and alignment:
    ``master_reg`` = the master chain's parameters, ``preset_cls`` by the documented rules,
    ``align_conf`` from the alignment statistics; the job is then done. Returns counts per class."""
    counts = {"jobs": Counter(), "preset_cls": Counter(), "align_conf": Counter()}
    with engine.begin() as conn:
        for row in records.day_label_inputs(conn, day, FEATURE_VERSION):
            records.record_label(conn, row["job_id"], "master_reg", y_reg=list(row["master_params"]),
                                 details={"source": "rule-based master chain"})
            preset, why = preset_label(row["plan"], row["inst_vec"], row["vocal_vec"], row["bpm"])
            records.record_label(conn, row["job_id"], "preset_cls", y_cls=preset, details=why)
            confidence = align_conf_label(row)
            records.record_label(conn, row["job_id"], "align_conf", y_cls=confidence,
                                 details={"confidence": row["confidence"], "method": row["method"]})
            records.mark_done(conn, row["job_id"])
            counts["jobs"]["labelled"] += 1
            counts["preset_cls"][preset] += 1
            counts["align_conf"][confidence] += 1
    return counts


def run_day(engine: Engine, store, uploads, day, *, max_workers: int, actor: str) -> dict:
    """The whole chain for one day without Dagster, in the assets' order: register the uploads, then
    every stage, then the labels. Returns per-stage counts (the benchmark's baseline)."""
    report = register_day(store, engine, uploads, day, actor=actor, max_workers=max_workers)
    summary = {"registered": len(report.accepted), "rejected": len(report.rejected)}
    for name in STAGES:
        outcome = run_stage_for_day(engine, store, day.isoformat(), name, max_workers=max_workers, actor=actor)
        summary[name] = {"ok": len(outcome.results), "failed": len(outcome.failures), "errors": len(outcome.errors)}
    summary["labels"] = label_day(engine, day.isoformat())["jobs"]["labelled"]
    return summary
