"""One audio stage over one day's jobs, in a worker pool: everything an audio asset does except
Dagster's part (config, logging, metadata). The benchmark runs the same functions without Dagster to
measure what the orchestration costs.

A job whose input is bad fails that stage with a reason (``jobs.status = 'failed'``) and the others go
on: a StageFailure, or a ValueError/ArithmeticError the science raises on that job's data. Anything else
(database, store, a bug) is collected and reported after the other jobs finished, and fails the run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
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


# In the assets' order: masters comes last, after master_params (lib/serving) decided each job's parameters
# from the features.
STAGES: dict[str, Stage] = {
    "aligned_stems": Stage(stages.align_stage, lambda conn, r: records.record_alignment(conn, r.job_id, r.data)),
    "mixes": Stage(stages.mix_stage, lambda conn, r: records.record_mix(conn, r.job_id, r.data, r.objects[0].path),
                   needs="aligned_stems"),
    "previews": Stage(stages.preview_stage, lambda conn, r: None, needs="mixes"),
    "features_store": Stage(stages.features_stage,
                            lambda conn, r: records.record_features(conn, r.job_id, r.data, DIM_NAMES), needs="mixes"),
    "masters": Stage(stages.master_stage,
                     lambda conn, r: records.record_master(conn, r.job_id, r.data, r.objects[0].path), needs="mixes"),
}


@dataclass
class StageOutcome:
    jobs: int = 0
    results: list[stages.StageResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job_id, reason): bad input
    errors: list[str] = field(default_factory=list)  # infrastructure errors


# The stage work is numpy, scipy and ffmpeg with enough pure Python between them that threads scale
# poorly (1.5x on 2 cores, measured); worker processes scale fully. They fork from a forkserver that has
# the science imported and warmed up (``warm.py``), and one pool serves every stage run of this process
# (a pool per stage cost ~12 % of the throughput). It is shut down by a multiprocessing finalizer, not an
# atexit hook: a Dagster step process is itself a multiprocessing child, whose exit joins its children
# before atexit hooks would run, and runs these finalizers first.
_PRELOAD = ["mixai_pipeline.lib.pipeline.stages", "mixai_pipeline.lib.pipeline.warm"]
_pools: dict[int, ProcessPoolExecutor] = {}


def _process_pool(max_workers: int) -> ProcessPoolExecutor:
    pool = _pools.get(max_workers)
    if pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        pool = _pools[max_workers] = ProcessPoolExecutor(max_workers=max_workers, mp_context=context,
                                                         initializer=_one_thread_per_worker)
        if len(_pools) == 1:
            multiprocessing.util.Finalize(None, _shutdown_pools, exitpriority=100)
    return pool


def _shutdown_pools() -> None:
    while _pools:
        _pools.popitem()[1].shutdown(cancel_futures=True)


def _one_thread_per_worker() -> None:
    """Each worker is one job on one core: BLAS/OpenMP threads on top only oversubscribe the machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _attempt(work: Callable, store, job: stages.JobInput) -> tuple[str, object]:
    """Run in a worker: ("ok", result), ("failed", reason) for this job's data, ("error", text) otherwise.
    Outcomes travel back as values, so no exception has to survive pickling."""
    try:
        return "ok", work(store, job)
    except stages.StageFailure as failure:
        return "failed", str(failure)
    except (ValueError, ArithmeticError) as err:  # the science refused this job's data: fail the job only
        return "failed", f"could not be processed ({type(err).__name__}: {err})"
    except Exception as err:  # database, store, a bug: the run fails once the other jobs had their turn
        return "error", f"{type(err).__name__}: {err}"


def run_stage_for_day(engine: Engine, store, day: str, name: str, *, max_workers: int, actor: str,
                      run_id: str | None = None, log: Callable[[str, str], None] | None = None) -> StageOutcome:
    """Run stage ``name`` for every job of ``day`` that is ready for it (in worker processes when
    ``max_workers`` > 1) and record each outcome; ``log(level, message)`` reports progress every 10 jobs,
    failures and errors."""
    stage = STAGES[name]
    log = log or (lambda level, message: None)
    with engine.connect() as conn:
        jobs = records.day_jobs(conn, day, needs=stage.needs)
    outcome = StageOutcome(jobs=len(jobs))
    log("info", f"{name} {day}: {len(jobs)} jobs")
    if max_workers > 1 and len(jobs) > 1:
        pool = _process_pool(max_workers)
        pending = {pool.submit(_attempt, stage.work, store, job): job for job in jobs}
        attempts = ((pending[future], future) for future in as_completed(pending))
    else:
        attempts = ((job, _done(_attempt(stage.work, store, job))) for job in jobs)
    for done, (job, future) in enumerate(attempts, start=1):
        try:
            status, payload = future.result()
            if status == "ok":
                with engine.begin() as conn:
                    records.mark_processing(conn, job.job_id)
                    stage.record(conn, payload)
                    records.record_objects(conn, job.job_id, payload.objects, store)
                outcome.results.append(payload)
            elif status == "failed":
                with engine.begin() as conn:
                    records.record_failure(conn, job.job_id, name, payload, actor=actor, run_id=run_id)
                outcome.failures.append((job.job_id, payload))
                log("warning", f"{name}: job {job.job_id} failed: {payload}")
            else:
                raise RuntimeError(payload)
        except Exception as err:  # infrastructure (or a worker that died): reported once the others finished
            outcome.errors.append(f"job {job.job_id}: {err}")
            log("error", f"{name}: job {job.job_id}: {type(err).__name__}: {err}")
        if done % 10 == 0 or done == len(jobs):
            log("info", f"{name} {day}: {done}/{len(jobs)} jobs")
    if any("BrokenProcessPool" in e or "terminated abruptly" in e for e in outcome.errors):
        _pools.pop(max_workers, None)  # a worker died (out of memory?): the next stage gets a fresh pool
    return outcome


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


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
    every stage (with the served models' master parameters decided before the masters), then the labels.
    Returns per-stage counts and wall seconds (the benchmark's baseline)."""
    from mixai_pipeline.lib.serving.master_params import decide_day
    from mixai_pipeline.lib.training.serving import ServingClient

    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(step: str):
        start = time.perf_counter()
        yield
        seconds[step] = round(time.perf_counter() - start, 3)

    with timed("uploads"):
        report = register_day(store, engine, uploads, day, actor=actor, max_workers=max_workers)
    summary: dict = {"registered": len(report.accepted), "rejected": len(report.rejected)}
    for name in STAGES:
        if name == "masters":
            with ServingClient(engine, store) as client, timed("master_params"):
                summary["master_params"] = decide_day(engine, client, day.isoformat()).jobs
        with timed(name):
            outcome = run_stage_for_day(engine, store, day.isoformat(), name, max_workers=max_workers, actor=actor)
        summary[name] = {"ok": len(outcome.results), "failed": len(outcome.failures), "errors": len(outcome.errors)}
    with timed("labels"):
        summary["labels"] = label_day(engine, day.isoformat())["jobs"]["labelled"]
    summary["seconds"] = seconds
    return summary
